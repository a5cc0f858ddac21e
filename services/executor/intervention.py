"""Run one claimed ticket revision: probe, choose access, run the runbook, report.

The procedure, in order: re-check the verdict (the claim store is not trusted more than the
bus), open the customer's credentials for the duration of the run only, probe SSH, choose
the access method (:mod:`services.executor.access`), announce it (InterventionStarted),
then run the runbook through the engine — over SSH, or from the provider's rescue system
(:mod:`services.executor.rescue.flow`) — or hand the work to an engineer
(ManualStepRequested) and wait for the report (:mod:`services.executor.manual`), escalate
hardware evidence (HardwareEscalated) and close with exactly one InterventionCompleted.

A manual step parks the claim: nothing waits in memory. The engineer's report or the
step's deadline re-opens it and the run continues here, in :meth:`Interventions._resume_manual`
— after a review, with the automation; otherwise with the completion.

Every event goes through the claim's outbox (see :mod:`services.executor.claims`): staged
with a deterministic id, then published, so a run resumed after a crash republishes the
same events byte for byte and never a second, different outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import Status, StatusCode

from schemas.envelope import EventEnvelope
from schemas.events import (
    Action,
    AuthorizationVerified,
    Backup,
    ClarificationRequested,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
    ManualStepRequested,
    Outcome,
)
from schemas.registry import parse_event
from services.executor import hardware
from services.executor.access import (
    AccessDecision,
    Probe,
    ServerFacts,
    needs_probe,
    select_access,
)
from services.executor.claims import Claim, ClaimJournal, ClaimStore, Owner
from services.executor.console_steps import console_instructions
from services.executor.manual import ManualSteps, ManualWait, deadline_after, wait_id
from services.executor.outcome import backups_advice, decide_outcome, recommendations
from services.executor.rescue.flow import (
    RescuePorts,
    RescueRun,
    RescueTiming,
    journal_outcomes,
)
from services.executor.rescue.provider import RescueProvider
from services.executor.rescue.runbooks import INCIDENTAL_STEPS, RESCUE_RUNBOOKS, rescue_params
from services.executor.runbooks import RUNBOOKS
from services.executor.runbooks.diagnostics import evidence, findings
from services.executor.runbooks.engine import (
    ActionRecord,
    CredentialIssuer,
    Engine,
    Handover,
    LeaseLost,
    RunResult,
    StepOutcome,
)
from services.executor.runbooks.model import (
    BackupNote,
    CommandResult,
    ParameterError,
    Phase,
    RunOptions,
    StepResult,
)
from services.executor.settings import ExecutorSettings
from services.executor.ssh import (
    Credential,
    HostKeyMismatch,
    HostKeyPins,
    SshConnector,
    SshError,
    SshSession,
    SshTarget,
)
from services.executor.vault import CustomerCredentialVault, DepositTarget, VaultIssuer
from services.runtime.crypto import (
    CryptoError,
    PrivateSealingKey,
    VerifyKey,
    open_text,
    seal_text,
)
from services.runtime.service import ServiceRuntime
from services.runtime.telemetry import TICKET_ID_ATTRIBUTE, client_span, current_ticket
from services.runtime.verdicts import SignatureError, verify_verdict

log = logging.getLogger(__name__)

# Namespace of the executor's derived event ids: uuid5(ns, "<claim id>:<outbox key>").
_EVENT_NS = uuid.UUID("0c8b5d7e-5f0a-4f4e-8a7d-2f6f3c9e1b42")
OUTPUT_AUDIT_CHARS = 64 * 1024


def derived_event_id(claim_id: str, key: str) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NS, f"{claim_id}:{key}")


@dataclass(frozen=True, kw_only=True)
class Dependencies:
    runtime: ServiceRuntime
    claims: ClaimStore
    connector: SshConnector
    vault: CustomerCredentialVault
    sealing_keys: Mapping[str, PrivateSealingKey]
    verify_keys: Mapping[str, VerifyKey]
    settings: ExecutorSettings
    owner: Owner
    manual: ManualSteps
    pins: HostKeyPins
    rescue: RescueProvider | None = None


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
                  "stdout": result.stdout[-OUTPUT_AUDIT_CHARS:],
                  "stderr": result.stderr[-OUTPUT_AUDIT_CHARS:], "dry_run": self._dry_run,
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


class Interventions:
    def __init__(self, deps: Dependencies) -> None:
        self._deps = deps
        self._tracer = deps.runtime.telemetry.tracer()
        # Claims running in this process. The store's compare-and-set accepts the current
        # owner re-acquiring (that is how a restarted worker of the same process resumes),
        # so two callers in one process must be kept apart here.
        self._running: set[str] = set()
        # The worker's offer, wired after construction (the worker runs this class).
        self.offer: Callable[[str], bool] = lambda claim_id: False

    async def run(self, claim_id: str) -> None:
        """Run ``claim_id`` if this executor can take it; return when it is closed, handed
        over, or no longer ours."""
        if claim_id in self._running:
            return
        self._running.add(claim_id)
        try:
            await self._acquire_and_run(claim_id)
        finally:
            self._running.discard(claim_id)

    async def _acquire_and_run(self, claim_id: str) -> None:
        deps = self._deps
        claim = await deps.claims.acquire(claim_id, deps.owner,
                                          lease_s=deps.settings.executor_lease_s)
        if claim is None:
            return
        token = current_ticket.set(claim.ticket_id)
        task = asyncio.current_task()
        beat = asyncio.create_task(self._heartbeat(claim_id, task))
        try:
            await self._run(claim)
        except LeaseLost:
            log.warning("claim %s was taken over by another executor; stopped", claim_id)
        except asyncio.CancelledError:
            if beat.done() and not beat.cancelled() and isinstance(beat.exception(), LeaseLost):
                log.warning("lease on claim %s lost; stopped", claim_id)
                return
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await beat
            current_ticket.reset(token)

    async def _heartbeat(self, claim_id: str, task: asyncio.Task[Any] | None) -> None:
        lease = self._deps.settings.executor_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await self._deps.claims.renew(claim_id, self._deps.owner, lease_s=lease)
            except LeaseLost:
                if task is not None:
                    task.cancel()
                raise
            except Exception:  # noqa: BLE001 - a store hiccup: the next beat retries well within the lease
                log.warning("lease renewal of claim %s failed; retrying", claim_id)

    # --- the procedure -------------------------------------------------------------------

    async def _run(self, claim: Claim) -> None:
        deps = self._deps
        parent = propagate.extract(claim.trace_carrier)
        with self._tracer.start_as_current_span(
            "executor intervention", context=parent,
            attributes={TICKET_ID_ATTRIBUTE: claim.ticket_id, "ticket.revision": claim.revision,
                        "claim.attempt": claim.attempt},
        ) as span:
            try:
                verdict = parse_event(claim.verdict_json, AuthorizationVerified)
                verify_verdict(verdict, deps.verify_keys)
            except (SignatureError, ValueError) as exc:
                # The claim store was edited: refuse, say why, publish nothing for a
                # verdict that cannot be trusted.
                await self._audit(claim, f"claim-refused:{claim.id}", "claim_refused",
                                  {"reason": str(exc)[:500]})
                await deps.claims.close(claim.id, deps.owner, "refused", outcome="refused")
                span.set_status(Status(StatusCode.ERROR, "stored verdict does not verify"))
                return
            if claim.attempt > 1:
                await self._audit(claim, f"resume:{claim.id}:{claim.attempt}", "claim_resumed",
                                  {"attempt": claim.attempt,
                                   "steps_journalled": sorted(claim.steps)})
            if "z_completed" in claim.outbox:
                await self._publish_outbox(claim)
                await deps.claims.close(claim.id, deps.owner, "finished",
                                        outcome=self._staged_outcome(claim))
                await self._consume_manual(claim)
                return
            if claim.handover and claim.handover.get("step_id"):
                await self._resume_manual(claim, verdict)
                return
            if claim.failed_attempts > deps.settings.executor_max_attempts:
                await self._hand_over(claim, verdict, self._decision_of(claim) or _retry_decision(
                    verdict), kind="retries", handover=Handover(
                    index=-1, step="automation", title="Finish the intervention by hand",
                    reason=f"the automated run was interrupted {claim.attempt - 1} times",
                    instructions=("Review the audit trail of this ticket: every command run so "
                                  "far is recorded there.",
                                  "Finish or undo the intervention by hand and report.")))
                return
            await self._proceed(claim, verdict)

    async def _proceed(self, claim: Claim, verdict: AuthorizationVerified) -> None:
        deps = self._deps
        try:
            credential = self._open_credentials(verdict)
        except CryptoError as exc:
            await self._complete(claim, verdict, outcome="refused", access_method=None,
                                 reason=f"the credentials could not be opened: {exc}")
            return
        session: SshSession | None = None
        try:
            decision = self._decision_of(claim)
            if decision is None:
                decision, session = await self._decide(claim, verdict, credential)
                stored = await deps.claims.set_decision(claim.id, deps.owner, asdict(decision))
                decision = AccessDecision(**stored)
                claim.decision = stored
                await self._audit(claim, f"access:{claim.id}", "access_decision", stored)
            await self._act(claim, verdict, decision, credential, session)
        finally:
            if session is not None:
                await session.aclose()

    async def _decide(self, claim: Claim, verdict: AuthorizationVerified,
                      credential: Credential) -> tuple[AccessDecision, SshSession | None]:
        server = verdict.server
        facts = ServerFacts(type=server.type, os_family=server.os_family, ipkvm=server.ipkvm,
                            rescue=server.rescue,
                            rescue_automated=self._deps.rescue is not None)
        category = verdict.ticket.category
        if verdict.review_required and not claim.review_passed:
            return AccessDecision(
                method="ssh" if server.os_family == "linux" else "windows_openssh",
                mode="engineer", disposition="hand_over", runbook=f"review.{category}",
                reason=f"auth asked for a review before any automation: "
                       f"{verdict.review_reason}"), None
        session: SshSession | None = None
        probe = Probe(outcome="not_attempted")
        if needs_probe(category):
            probe, session = await self._probe(claim, verdict, credential)
        decision = select_access(facts, category, probe)
        if decision.disposition == "run":
            try:
                if decision.method == "rescue":
                    runbook = RESCUE_RUNBOOKS[decision.runbook]
                    runbook.steps(runbook.parse_params(rescue_params(verdict)), "linux")
                else:
                    runbook = RUNBOOKS[decision.runbook]
                    runbook.steps(runbook.parse_params(verdict.ticket.parameters),
                                  server.os_family)
            except ParameterError as exc:
                decision = AccessDecision(
                    method=decision.method, mode="automated", disposition="clarify",
                    runbook=decision.runbook, reason=str(exc),
                    question=f"We could not use the details of your request: {exc}. Please "
                             "correct them on this ticket.")
        return decision, session

    async def _probe(self, claim: Claim, verdict: AuthorizationVerified,
                     credential: Credential) -> tuple[Probe, SshSession | None]:
        try:
            session = await self._connect(claim, verdict, credential)
        except HostKeyMismatch as exc:
            return Probe(outcome="host_key_mismatch", detail=str(exc)), None
        except SshError as exc:
            return Probe(outcome=exc.outcome, detail=str(exc)), None
        return Probe(outcome="ok", privileged=session.privileged), session

    async def _connect(self, claim: Claim, verdict: AuthorizationVerified,
                       credential: Credential) -> SshSession:
        deps = self._deps
        server = verdict.server
        target = SshTarget(host=str(server.ip), port=server.ssh_port,
                           service_id=server.service_id, inventory_key=server.ssh_host_key)
        where = {"host": target.host, "port": target.port, "service_id": target.service_id}
        with client_span(self._tracer, "ssh connect", host=target.host, port=target.port):
            try:
                session = await deps.connector.open(target, credential,
                                                    platform=server.os_family,
                                                    ticket_id=claim.ticket_id)
            except HostKeyMismatch as exc:
                await self._audit(claim, f"hostkey-mismatch:{claim.id}:{claim.attempt}",
                                  "host_key_mismatch",
                                  {**where, "expected": exc.expected, "offered": exc.offered,
                                   "pinned_by": exc.source, "refused": True})
                raise
            except SshError as exc:
                await self._audit(claim, f"ssh-failed:{claim.id}:{claim.attempt}",
                                  "ssh_connect_failed",
                                  {**where, "outcome": exc.outcome, "detail": str(exc)})
                raise
        key = session.host_key
        await self._audit(claim, f"hostkey:{claim.id}:{claim.attempt}", "host_key", {
            **where, "fingerprint": key.fingerprint, "source": key.source,
            "trusted_on_first_use": key.newly_pinned, "user": credential.username,
            "privilege": session.privilege})
        return session

    def _open_credentials(self, verdict: AuthorizationVerified) -> Credential:
        sealed = verdict.ticket.credentials
        # open_text teaches the plaintext to the process redactor before returning it.
        secret = open_text(sealed.sealed, self._deps.sealing_keys)
        if sealed.kind == "password":
            return Credential(username=sealed.username, password=secret)
        return Credential(username=sealed.username, private_key=secret)

    async def _act(self, claim: Claim, verdict: AuthorizationVerified, decision: AccessDecision,
                   credential: Credential, session: SshSession | None) -> None:
        deps = self._deps
        if decision.disposition == "refuse":
            await self._complete(claim, verdict, outcome="refused", reason=decision.reason,
                                 access_method=decision.method)
            return
        if decision.disposition == "clarify":
            await self._stage(claim, "b_clarification", ClarificationRequested.caused_by(
                verdict, producer="executor",
                event_id=derived_event_id(claim.id, "b_clarification"),
                question=decision.question or decision.reason, field="credentials"))
            await self._complete(claim, verdict, outcome="unresolved", reason=decision.reason,
                                 access_method=decision.method)
            return
        dry_run = deps.settings.executor_dry_run
        # After an engineer's review the automated run is announced on its own.
        started = "a_started_after_review" if claim.review_passed else "a_started"
        await self._stage(claim, started, InterventionStarted.caused_by(
            verdict, event_id=derived_event_id(claim.id, started),
            access_method=decision.method, reason=decision.reason[:2000],
            runbook=decision.runbook, mode=decision.mode, timeline=decision.timeline,
            dry_run=dry_run))
        await self._publish_outbox(claim)
        if decision.disposition == "hand_over":
            await self._hand_over(claim, verdict, decision, kind=decision.runbook.split(".")[0])
            return
        if decision.method == "rescue":
            await self._run_rescue(claim, verdict, decision, credential, dry_run=dry_run)
            return

        if session is None:
            try:
                session = await self._connect(claim, verdict, credential)
            except SshError as exc:
                await self._hand_over(claim, verdict, decision, kind="reconnect",
                                      handover=Handover(
                                          index=-1, step="reconnect", title="Reconnect",
                                          reason=f"the executor could not reconnect after a "
                                                 f"restart: {exc}",
                                          instructions=(
                                              "Review the audit trail of this ticket for the "
                                              "steps already done.",
                                              "Reach the server and finish the runbook by "
                                              "hand.")))
                return
        runbook = RUNBOOKS[decision.runbook]
        params = runbook.parse_params(verdict.ticket.parameters)
        engine = self._engine(claim, session, self._issuer(claim, verdict), dry_run=dry_run)
        result = await engine.run(runbook, params)
        if result.handover is not None:
            await self._hand_over(claim, verdict, decision, kind="resume",
                                  handover=result.handover, run=result)
            return
        await self._finish_run(claim, verdict, decision, result, dry_run=dry_run)

    def _issuer(self, claim: Claim, verdict: AuthorizationVerified) -> VaultIssuer:
        return VaultIssuer(vault=self._deps.vault, claim_id=claim.id, attempt=claim.attempt,
                           target=DepositTarget(account_id=verdict.account_id,
                                                ticket_id=verdict.ticket_id,
                                                revision=verdict.revision,
                                                service_id=verdict.server.service_id))

    def _engine(self, claim: Claim, session: SshSession, issuer: CredentialIssuer, *,
                dry_run: bool) -> Engine:
        deps = self._deps
        log = AuditCommandLog(deps.runtime, claim=claim, actor=f"executor:{deps.owner.id}",
                              host=f"{session.target.host}:{session.target.port}",
                              user=session.username, dry_run=dry_run)
        return Engine(
            host=session, journal=ClaimJournal(store=deps.claims, claim=claim, owner=deps.owner),
            log=log, backups=log, issuer=issuer, secrets_sink=deps.runtime.redactor,
            tracer=self._tracer,
            options=RunOptions(dry_run=dry_run,
                               service_settle_s=deps.settings.executor_service_settle_s))

    # --- rescue mode -----------------------------------------------------------------------

    async def _run_rescue(self, claim: Claim, verdict: AuthorizationVerified,
                          decision: AccessDecision, credential: Credential, *,
                          dry_run: bool) -> None:
        deps = self._deps
        if deps.rescue is None:  # configuration removed while the claim was open
            await self._complete(claim, verdict, outcome="unresolved",
                                 access_method=decision.method,
                                 reason="rescue mode is no longer configured in this executor; "
                                        "support follows up")
            return
        runbook = RESCUE_RUNBOOKS[decision.runbook]
        if dry_run:
            # Rescue mode reboots the server: a dry run plans it without touching anything.
            steps = runbook.steps(runbook.parse_params(rescue_params(verdict)), "linux")
            plan = RunResult(facts={}, steps=tuple(
                StepOutcome(index=n, name=step.name, result="planned",
                            reason="dry run: rescue mode not entered",
                            action=ActionRecord(step=step.title, command="(not run: dry run)",
                                                exit_status=None, duration_ms=0,
                                                result="planned"), facts={})
                for n, step in enumerate(steps)))
            await self._finish_run(claim, verdict, decision, plan, dry_run=True)
            return
        public = next(iter(deps.sealing_keys.values())).public
        settings = deps.settings
        ports = RescuePorts(
            provider=deps.rescue, claims=deps.claims, owner=deps.owner, connector=deps.connector,
            pins=deps.pins, audit=self._audit, tracer=self._tracer,
            engine=lambda session, issuer: self._engine(claim, session, issuer, dry_run=False),
            seal=lambda secret: seal_text(secret, public),
            unseal=lambda sealed: open_text(sealed, deps.sealing_keys),
            timing=RescueTiming(boot_timeout_s=settings.executor_rescue_boot_timeout_s,
                                poll_s=settings.executor_rescue_poll_s,
                                ssh_wait_s=settings.executor_rescue_ssh_wait_s))
        result = await RescueRun(ports, claim, verdict, credential,
                                 self._issuer(claim, verdict)).run()
        if result.handover is not None:
            await self._hand_over(claim, verdict, decision, kind="rescue",
                                  handover=result.handover, run=result.run)
            return
        await self._finish_run(claim, verdict, decision, result.run, dry_run=False)

    async def _finish_run(self, claim: Claim, verdict: AuthorizationVerified,
                          decision: AccessDecision, result: RunResult, *, dry_run: bool) -> None:
        redact = self._deps.runtime.redactor.redact_text
        found = hardware.escalations(evidence(result.facts))
        for n, escalation in enumerate(found):
            key = f"c_escalation_{n:02d}"
            await self._stage(claim, key, HardwareEscalated.caused_by(
                verdict, event_id=derived_event_id(claim.id, key),
                component=escalation.component,
                device=_one_line(redact(escalation.device))[:500] if escalation.device else None,
                evidence=tuple(redact(e)[:2000] for e in escalation.evidence),
                severity=escalation.severity))
        verdict_ = decide_outcome(result, found, dry_run=dry_run,
                                  incidental=INCIDENTAL_STEPS if decision.method == "rescue"
                                  else ())
        advice = recommendations(
            credentials_shared=True, new_credentials=result.new_credentials_issued,
            hardware=bool(found), dry_run=dry_run,
            findings=[*findings(result.facts), *backups_advice(result.backups)])
        await self._complete(claim, verdict, outcome=verdict_.outcome, reason=verdict_.reason,
                             access_method=decision.method, run=result, advice=advice,
                             dry_run=dry_run)

    # --- closing -------------------------------------------------------------------------

    async def _complete(self, claim: Claim, verdict: AuthorizationVerified, *, outcome: Any,
                        reason: str | None, access_method: Any, run: RunResult | None = None,
                        advice: tuple[str, ...] | None = None, dry_run: bool = False) -> None:
        redact = self._deps.runtime.redactor.redact_text
        actions = tuple(
            Action(step=_one_line(a.step)[:500], command=redact(a.command)[:2000] or "-",
                   exit_status=a.exit_status if a.exit_status is None
                   or -255 <= a.exit_status <= 255 else None,
                   duration_ms=a.duration_ms, result=a.result)
            for a in (run.actions if run else ()))[:500]
        if advice is None:
            advice = recommendations(credentials_shared=True, new_credentials=False,
                                     hardware=False, dry_run=False)
        backups = tuple(dict.fromkeys(
            Backup(location=redact(b.location)[:2000], description=redact(b.description)[:2000])
            for b in (run.backups if run else ())))[:100]
        await self._stage(claim, "z_completed", InterventionCompleted.caused_by(
            verdict, event_id=derived_event_id(claim.id, "z_completed"), outcome=outcome,
            access_method=access_method, actions=actions, backups=backups,
            new_credentials_issued=bool(run and run.new_credentials_issued),
            recommendations=advice, reason=redact(reason)[:2000] if reason else None,
            dry_run=dry_run))
        await self._publish_outbox(claim)
        await self._deps.claims.close(claim.id, self._deps.owner, "finished", outcome=outcome)
        await self._consume_manual(claim)

    async def _hand_over(self, claim: Claim, verdict: AuthorizationVerified,
                         decision: AccessDecision, *, kind: str,
                         handover: Handover | None = None, run: RunResult | None = None) -> None:
        """Ask an engineer (ManualStepRequested), then park the claim until the report or
        the step's deadline re-opens it (:meth:`_resume_manual`)."""
        deps = self._deps
        if handover is not None:
            step = handover
        elif kind == "review":
            step = _review_handover(verdict, decision)
        else:
            step = _console_handover(verdict, decision)
        step_id = f"r{claim.revision}-{kind}"[:64]
        key = f"d_manual_{kind}"[:60]
        await self._stage(claim, key, ManualStepRequested.caused_by(
            verdict, event_id=derived_event_id(claim.id, key), step_id=step_id,
            method=decision.method, instructions=step.instructions,
            verification=step.verification, reason=step.reason[:2000],
            deadline=deadline_after(self._step_timeout(decision))))
        # The staged event is the truth: a resumed run keeps the first deadline.
        requested = parse_event(str(claim.outbox[key]["event"]), ManualStepRequested)
        deadline = requested.deadline or deadline_after(self._step_timeout(decision))
        record: dict[str, Any] = {"kind": kind, "method": decision.method,
                                  "runbook": decision.runbook, "reason": step.reason,
                                  "ticket_id": claim.ticket_id, "revision": claim.revision,
                                  "step_id": step_id, "step": step.step, "title": step.title,
                                  "deadline": deadline.isoformat()}
        if run is not None:
            record["steps_done"] = [s.name for s in run.steps]
        wait = await deps.manual.open(
            claim_id=claim.id, ticket_id=claim.ticket_id, revision=claim.revision,
            step_id=step_id, kind=kind, method=decision.method, title=step.title,
            deadline=deadline)
        await self._audit(claim, f"manual-requested:{wait.id}", "manual_step_requested",
                          {"step_id": step_id, "kind": kind, "method": decision.method,
                           "deadline": deadline.isoformat()})
        # The wait exists before any engineer can see the request and answer it.
        await self._publish_outbox(claim)
        await deps.claims.close(claim.id, deps.owner, "handed_over", handover=record)
        # A report may have landed between opening the wait and parking the claim, when
        # re-opening could not find it parked: look once more.
        latest = await deps.manual.get(wait.id)
        if latest is not None and (latest.status != "waiting"
                                   or latest.overdue(datetime.now(UTC))):
            await deps.claims.reopen(claim.id)

    def _step_timeout(self, decision: AccessDecision) -> float:
        settings = self._deps.settings
        if decision.timeline == "datacenter":
            return settings.executor_datacenter_step_timeout_s
        return settings.executor_manual_step_timeout_s

    async def _resume_manual(self, claim: Claim, verdict: AuthorizationVerified) -> None:
        """Back from parking: the engineer reported, or the deadline passed."""
        deps = self._deps
        record = claim.handover or {}
        key = wait_id(claim.id, str(record["step_id"]))
        wait = await deps.manual.get(key)
        if wait is not None and wait.overdue(datetime.now(UTC)):
            wait = await deps.manual.expire(key)
        if wait is not None and wait.status == "waiting":
            # Re-opened early (a stray offer): park again with the same record.
            await deps.claims.close(claim.id, deps.owner, "handed_over", handover=record)
            return
        kind = str(record.get("kind"))
        if kind == "review" and wait is not None and wait.status == "done":
            await self._audit(claim, f"review-passed:{claim.id}", "review_passed",
                              {"step_id": wait.step_id, "engineer": (wait.report or {})
                               .get("engineer_id")})
            await deps.claims.pass_review(claim.id, deps.owner)
            claim.review_passed, claim.decision, claim.handover = True, None, None
            await deps.manual.consumed(key)
            await self._proceed(claim, verdict)
            return
        await self._complete_manual(claim, verdict, record, wait)

    async def _complete_manual(self, claim: Claim, verdict: AuthorizationVerified,
                               record: Mapping[str, Any], wait: ManualWait | None) -> None:
        method = record.get("method")
        title = str(record.get("title") or record.get("step") or "manual step")
        # What the automation did before handing over (and the rescue boots it made).
        before = journal_outcomes(claim, with_rescue=True)
        changed = any(s.result == "changed" for s in before.steps)
        report = (wait.report if wait is not None else None) or {}
        result: StepResult
        outcome: Outcome
        if wait is None or wait.status == "timed_out":
            deadline = wait.deadline.isoformat() if wait is not None else "?"
            result, outcome = "failed", "partially_resolved" if changed else "unresolved"
            command = f"no engineer reported by the deadline {deadline}"
            reason = (f"No engineer reported on manual step {record.get('step_id')} ({title}) "
                      f"by its deadline {deadline}; the ticket is back with the support team, "
                      "who follow up with you.")
        elif wait.status == "done":
            result, outcome, reason = "changed", "resolved", None
            command = _engineer_line(report, str(method))
        else:
            result, outcome = "failed", "partially_resolved" if changed else "unresolved"
            command = _engineer_line(report, str(method))
            reason = (f"The engineer reported manual step {wait.step_id} ({title}) as failed"
                      + (f": {report.get('notes')}" if report.get("notes") else "."))
        elapsed = 0
        if wait is not None:
            end = report.get("at") if wait.status in ("done", "failed") else wait.deadline
            if isinstance(end, datetime):
                end = end if end.tzinfo else end.replace(tzinfo=UTC)
                elapsed = max(0, int((end - wait.requested_at).total_seconds() * 1000))
        manual = StepOutcome(index=-1, name="manual", result=result, reason=reason, facts={},
                             action=ActionRecord(step=f"{title} (engineer, {method})",
                                                 command=command, exit_status=None,
                                                 duration_ms=elapsed, result=result))
        run = RunResult(steps=(*before.steps, manual), facts=before.facts)
        advice = recommendations(credentials_shared=True,
                                 new_credentials=run.new_credentials_issued, hardware=False,
                                 dry_run=False,
                                 findings=[*findings(run.facts), *backups_advice(run.backups)])
        await self._complete(claim, verdict, outcome=outcome, reason=reason,
                             access_method=method, run=run, advice=advice)

    async def _consume_manual(self, claim: Claim) -> None:
        step_id = (claim.handover or {}).get("step_id")
        if step_id:
            await self._deps.manual.consumed(wait_id(claim.id, str(step_id)))

    # --- outbox and audit ----------------------------------------------------------------

    async def _stage(self, claim: Claim, key: str, event: EventEnvelope) -> None:
        stored = await self._deps.claims.stage(claim.id, self._deps.owner, key,
                                               event.model_dump_json())
        claim.outbox.setdefault(key, {"event": stored, "published": False})

    async def _publish_outbox(self, claim: Claim) -> None:
        for key in sorted(claim.outbox):
            entry = claim.outbox[key]
            if entry.get("published"):
                continue
            await self._deps.runtime.publish(parse_event(str(entry["event"])))
            await self._deps.claims.mark_published(claim.id, self._deps.owner, key)
            entry["published"] = True

    def _staged_outcome(self, claim: Claim) -> str | None:
        staged = parse_event(str(claim.outbox["z_completed"]["event"]), InterventionCompleted)
        return staged.outcome

    def _decision_of(self, claim: Claim) -> AccessDecision | None:
        return AccessDecision(**claim.decision) if claim.decision else None

    async def _audit(self, claim: Claim, record_id: str, kind: str,
                     data: Mapping[str, Any]) -> None:
        await self._deps.runtime.audit.append(
            claim.ticket_id, record_id=record_id, kind=kind,
            actor=f"executor:{self._deps.owner.id}",
            data={"revision": claim.revision, **data})


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def _engineer_line(report: Mapping[str, Any], method: str) -> str:
    who = report.get("display_name") or report.get("engineer_id") or "an engineer"
    notes = _one_line(str(report.get("notes") or "")) if report.get("notes") else ""
    line = f"reported {report.get('status')} by {who} via {report.get('channel')} ({method})"
    return f"{line}: {notes}" if notes else line


def _retry_decision(verdict: AuthorizationVerified) -> AccessDecision:
    return AccessDecision(method="ssh" if verdict.server.os_family == "linux"
                          else "windows_openssh", mode="engineer", disposition="hand_over",
                          runbook=f"engineer.{verdict.ticket.category}",
                          reason="the automated run could not complete")


def _review_handover(verdict: AuthorizationVerified, decision: AccessDecision) -> Handover:
    server = verdict.server
    return Handover(
        index=-1, step=decision.runbook, title="Review before automation",
        reason=decision.reason,
        instructions=(
            f"Auth flagged this ticket for review: {verdict.review_reason}.",
            f"Check the recent interventions on server {server.service_name} "
            f"({server.service_id}) and whether this request should go ahead.",
            "Report this step done to let the intervention proceed, or failed to stop it.",
        ),
        verification=("The customer's request and written authorization match this server.",),
    )


def _console_handover(verdict: AuthorizationVerified, decision: AccessDecision) -> Handover:
    server = verdict.server
    category = verdict.ticket.category
    instructions, verification = console_instructions(server, category, decision.method)
    return Handover(index=-1, step=decision.runbook,
                    title=f"{category.replace('_', ' ')} via {decision.method}",
                    reason=decision.reason, instructions=instructions,
                    verification=verification)
