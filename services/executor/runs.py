"""Running a runbook for a claim: over SSH through the engine, or from the rescue system.

Both journal every step in the claim (the engine's :class:`~services.executor.claims.
ClaimJournal`, the rescue flow's ``rescue.*`` phases), audit every command as it returns
and record backups, so a resumed run continues where the last one stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    """Each command of a run, appended to the ticket's audit chain as it returns."""

    def __init__(self, runtime: ServiceRuntime, *, claim: Claim, actor: str, host: str,
                 user: str, dry_run: bool) -> None:
        self._runtime = runtime
        self._claim = claim
        self._actor = actor
        self._host = host
        self._user = user
        self._dry_run = dry_run

    async def command(self, *, index: int, step: str, phase: Phase, n: int, display: str,
                      root: bool, result: CommandResult) -> None:
        claim = self._claim
        await self._runtime.audit.append(
            claim.ticket_id,
            record_id=f"cmd:{claim.id}:{claim.attempt}:{index:03d}:{phase}:{n}",
            kind="command", actor=self._actor,
            # The audit log redacts by value (the customer's and every generated password
            # are known to the redactor) before hashing and storing.
            data={"revision": claim.revision, "step": step, "step_index": index,
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
            await self._runtime.audit.append(
                claim.ticket_id, record_id=f"backup:{claim.id}:{index:03d}:{n}", kind="backup",
                actor=self._actor,
                data={"revision": claim.revision, "step": step, "step_index": index,
                      "host": self._host, "location": note.location,
                      "description": note.description})


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
            engine=lambda session, issuer: self._engine(claim, session, issuer, dry_run=False),
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
                dry_run: bool) -> Engine:
        log = AuditCommandLog(self._runtime, claim=claim, actor=self._records.actor,
                              host=f"{session.target.host}:{session.target.port}",
                              user=session.username, dry_run=dry_run)
        return Engine(
            host=session, journal=ClaimJournal(store=self._claims, claim=claim,
                                               owner=self._owner),
            log=log, backups=log, issuer=issuer, secrets_sink=self._runtime.redactor,
            tracer=self._tracer,
            options=RunOptions(dry_run=dry_run,
                               service_settle_s=self._settings.executor_service_settle_s))
