"""Running a runbook for a claim: over SSH through the engine, or from the rescue system.

Both journal every step in the claim (the engine's :class:`~services.executor.claims.
ClaimJournal`, the rescue flow's ``rescue.*`` phases), audit every command as it returns
and record backups, so a resumed run continues where the last one stopped.

Over SSH a command's record is gathered with the run's other records
(:meth:`~services.executor.outbox.ClaimRecords.audit_later`) and written before the next
journal write that reaches the store (:class:`AuditedJournal`): a step journalled ``done``
waits in the store for that write too (:meth:`~services.executor.claims.ClaimStore.
record_step`), so a crash before it loses the step's records only with the step, which the
resumed run does again; and nothing changes on the server before the records of what was
run before it are durable (a change is preceded by its ``changing`` journal write). The
read-only diagnostics then cost one audit insert for all their commands. A rescue run
writes each record at once: its phases are journalled by the rescue flow, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import trace

from schemas.events import AuthorizationVerified
from services.executor.claims import Claim, ClaimJournal, ClaimStore, Owner
from services.executor.outbox import ClaimRecords
from services.executor.rescue.flow import RescuePorts, RescueResult, RescueRun, RescueTiming
from services.executor.rescue.provider import RescueProvider
from services.executor.rescue.runbooks import RESCUE_RUNBOOKS, rescue_params
from services.executor.runbooks import RUNBOOKS
from services.executor.runbooks.engine import (
    ActionRecord,
    CredentialIssuer,
    Engine,
    JournalEntry,
    RunResult,
    StepOutcome,
)
from services.executor.runbooks.model import BackupNote, CommandResult, Phase, RunOptions
from services.executor.settings import ExecutorSettings
from services.executor.ssh import Credential, HostKeyPins, SshConnector, SshSession
from services.executor.vault import CustomerCredentialVault, DepositTarget, VaultIssuer
from services.runtime.crypto import PrivateSealingKey, open_text, seal_text
from services.runtime.service import ServiceRuntime

OUTPUT_AUDIT_CHARS = 64 * 1024


class AuditCommandLog:
    """Each command of a run, audited as it returns: gathered for the run's next flush
    (``deferred``, module doc) or written at once."""

    def __init__(self, runtime: ServiceRuntime, records: ClaimRecords, *, claim: Claim,
                 host: str, user: str, dry_run: bool, deferred: bool) -> None:
        self._runtime = runtime
        self._records = records
        self._claim = claim
        self._host = host
        self._user = user
        self._dry_run = dry_run
        self._deferred = deferred

    async def command(self, *, index: int, step: str, phase: Phase, n: int, display: str,
                      root: bool, result: CommandResult) -> None:
        claim = self._claim
        await self._audit(
            f"cmd:{claim.id}:{claim.attempt}:{index:03d}:{phase}:{n}", "command",
            # The audit log redacts by value (the customer's and every generated password
            # are known to the redactor) before hashing and storing.
            {"revision": claim.revision, "step": step, "step_index": index,
             "phase": phase, "command": display, "as_administrator": root,
             "host": self._host, "user": self._user, "exit_status": result.exit_status,
             "duration_ms": result.duration_ms, "error": result.error,
             # Redacted before the cut: a secret across it is masked whole.
             "stdout": self._runtime.redactor.redact_tail(
                 result.stdout, OUTPUT_AUDIT_CHARS, cut_note=False),
             "stderr": self._runtime.redactor.redact_tail(
                 result.stderr, OUTPUT_AUDIT_CHARS, cut_note=False),
             "dry_run": self._dry_run,
             "attempt": claim.attempt})

    async def backup(self, *, index: int, step: str, notes: Sequence[BackupNote]) -> None:
        claim = self._claim
        for n, note in enumerate(notes):
            await self._audit(
                f"backup:{claim.id}:{index:03d}:{n}", "backup",
                {"step": step, "step_index": index, "host": self._host,
                 "location": note.location, "description": note.description})

    async def _audit(self, record_id: str, kind: str, data: Mapping[str, object]) -> None:
        if self._deferred:
            self._records.audit_later(self._claim, record_id, kind, data)
        else:
            await self._records.audit(self._claim, record_id, kind, data)


@dataclass
class AuditedJournal:
    """The claim's step journal, writing the run's gathered audit records before each
    journal write the store makes at once (every state but ``done``, which the store
    defers to its next write: module doc)."""

    journal: ClaimJournal
    records: ClaimRecords

    def entry(self, index: int) -> JournalEntry | None:
        return self.journal.entry(index)

    async def record(self, index: int, entry: JournalEntry) -> None:
        if entry.state != "done":
            await self.records.flush(self.journal.claim)
        await self.journal.record(index, entry)


class Runs:
    def __init__(self, *, runtime: ServiceRuntime, claims: ClaimStore, owner: Owner,
                 settings: ExecutorSettings, vault: CustomerCredentialVault,
                 connector: SshConnector, pins: HostKeyPins,
                 sealing_keys: Mapping[str, PrivateSealingKey], rescue: RescueProvider | None,
                 records: ClaimRecords, tracer: trace.Tracer) -> None:
        self._runtime = runtime
        self._claims = claims
        self._owner = owner
        self._settings = settings
        self._vault = vault
        self._connector = connector
        self._pins = pins
        self._sealing_keys = sealing_keys
        self._rescue = rescue
        self._records = records
        self._tracer = tracer

    async def runbook(self, claim: Claim, verdict: AuthorizationVerified, session: SshSession,
                      name: str, *, dry_run: bool) -> RunResult:
        runbook = RUNBOOKS[name]
        params = runbook.parse_params(verdict.ticket.parameters)
        engine = self._engine(claim, session, self._issuer(claim, verdict), dry_run=dry_run)
        return await engine.run(runbook, params)

    async def rescue(self, claim: Claim, verdict: AuthorizationVerified,
                     credential: Credential) -> RescueResult:
        assert self._rescue is not None, "the procedure checks that rescue is configured"
        public = next(iter(self._sealing_keys.values())).public
        settings = self._settings
        ports = RescuePorts(
            provider=self._rescue, claims=self._claims, owner=self._owner,
            connector=self._connector, pins=self._pins, audit=self._records.audit,
            tracer=self._tracer,
            engine=lambda session, issuer: self._engine(claim, session, issuer, dry_run=False,
                                                        deferred=False),
            seal=lambda secret: seal_text(secret, public),
            unseal=lambda sealed: open_text(sealed, self._sealing_keys),
            timing=RescueTiming(boot_timeout_s=settings.executor_rescue_boot_timeout_s,
                                poll_s=settings.executor_rescue_poll_s,
                                ssh_wait_s=settings.executor_rescue_ssh_wait_s),
            management_sources=settings.rescue_management_sources,
            redactor=self._runtime.redactor)
        return await RescueRun(ports, claim, verdict, credential,
                               self._issuer(claim, verdict)).run()

    @staticmethod
    def rescue_plan(verdict: AuthorizationVerified, name: str) -> RunResult:
        """Rescue mode reboots the server: a dry run plans it without touching anything."""
        runbook = RESCUE_RUNBOOKS[name]
        steps = runbook.steps(runbook.parse_params(rescue_params(verdict, ())), "linux")
        return RunResult(facts={}, steps=tuple(
            StepOutcome(index=n, name=step.name, result="planned",
                        reason="dry run: rescue mode not entered",
                        action=ActionRecord(step=step.title, command="(not run: dry run)",
                                            exit_status=None, duration_ms=0,
                                            result="planned"), facts={})
            for n, step in enumerate(steps)))

    def _issuer(self, claim: Claim, verdict: AuthorizationVerified) -> VaultIssuer:
        async def refused(reason: str) -> None:
            await self._records.audit(claim, f"vault-key-refused:{claim.id}:{claim.attempt}",
                                      "vault_key_refused", {"account_id": verdict.account_id,
                                                            "reason": reason})

        return VaultIssuer(vault=self._vault, claim_id=claim.id, attempt=claim.attempt,
                           target=DepositTarget(account_id=verdict.account_id,
                                                ticket_id=verdict.ticket_id,
                                                revision=verdict.revision,
                                                service_id=verdict.server.service_id,
                                                verified_at=verdict.occurred_at),
                           on_refused=refused)

    def _engine(self, claim: Claim, session: SshSession, issuer: CredentialIssuer, *,
                dry_run: bool, deferred: bool = True) -> Engine:
        log = AuditCommandLog(self._runtime, self._records, claim=claim,
                              host=f"{session.target.host}:{session.target.port}",
                              user=session.username, dry_run=dry_run, deferred=deferred)
        journal = ClaimJournal(store=self._claims, claim=claim, owner=self._owner)
        return Engine(
            host=session, journal=AuditedJournal(journal, self._records) if deferred
            else journal,
            log=log, backups=log, issuer=issuer, secrets_sink=self._runtime.redactor,
            tracer=self._tracer,
            options=RunOptions(dry_run=dry_run,
                               service_settle_s=self._settings.executor_service_settle_s))
