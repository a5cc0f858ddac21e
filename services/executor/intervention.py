"""Run one claimed ticket revision: hold its lease and interpret the procedure's commands.

The procedure itself — every stage and edge — is :mod:`services.executor.procedure`, a pure
transition function. This module is its one interpreter: it acquires the claim, keeps the
lease alive, then loops ``transition(state, event) -> (state, commands)``, carrying out each
command and feeding back the event it produced, until a run ends (closed, refused, parked
for an engineer, or stopped because the lease was lost).

Crash safety is written once, here and in what it calls: every command is idempotent under
its key (:mod:`services.executor.commands`) — the claim's outbox for events
(:mod:`services.executor.outbox`), the step journal for runbook steps, the audit record id,
the wait id for engineers' steps — so a run resumed after a crash, by any executor, redoes
nothing twice.

Audit records of things already done (``cmd.Audit``, the host key, the access decision, the
commands of a runbook over SSH) are gathered per run and written together in one insert at
the run's fenced points (:mod:`services.executor.outbox`): before every claim write that
reaches the store (a staged event, a journal write, parking, passing a review, closing),
before every publish, and when the run ends however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import Status, StatusCode

from schemas.events import AuthorizationVerified
from schemas.registry import parse_event
from services.executor import procedure as proc
from services.executor.access import AccessDecision
from services.executor.claim_integrity import ClaimSealer, Limits, staleness, tampering
from services.executor.claims import Claim, ClaimStore, Owner
from services.executor.engineers import Engineers
from services.executor.manual import ManualSteps
from services.executor.outbox import ClaimRecords
from services.executor.procedure import commands as cmd
from services.executor.rescue.provider import RescueProvider
from services.executor.runbooks.engine import LeaseLost, RunResult
from services.executor.runs import Runs
from services.executor.server_access import ServerAccess, open_credentials
from services.executor.settings import ExecutorSettings
from services.executor.ssh import Credential, HostKeyPins, SshConnector, SshError, SshSession
from services.executor.vault import CustomerCredentialVault
from services.runtime.crypto import CryptoError, PrivateSealingKey, VerifyKey
from services.runtime.service import ServiceRuntime
from services.runtime.telemetry import TICKET_ID_ATTRIBUTE, current_ticket
from services.runtime.verdicts import SignatureError, verify_verdict

log = logging.getLogger(__name__)

# The outbox keys staged right after an access decision (procedure.transition): once one is
# staged, the decision's audit record is durable (written before that claim write).
_ANNOUNCING = frozenset({"a_started", "a_started_after_review", "b_clarification",
                         "z_completed"})


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
    sealer: ClaimSealer
    rescue: RescueProvider | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass(kw_only=True)
class Run:
    """One run of a claim in this process: what the commands act on, and what never leaves
    memory (the opened credentials, the SSH session)."""

    claim: Claim
    verdict: AuthorizationVerified | None = None
    credential: Credential | None = None
    session: SshSession | None = None

    def checked(self) -> AuthorizationVerified:
        assert self.verdict is not None, "the procedure checks the verdict first"
        return self.verdict

    def opened(self) -> Credential:
        assert self.credential is not None, "the procedure opens the credentials first"
        return self.credential


def acquired(claim: Claim) -> proc.Acquired:
    """The procedure's view of a claim as stored."""
    return proc.Acquired(
        claim_id=claim.id, revision=claim.revision, attempt=claim.attempt,
        failed_attempts=claim.failed_attempts, completion_staged="z_completed" in claim.outbox,
        parked=claim.handover, review_passed=claim.review_passed,
        decision=AccessDecision(**claim.decision) if claim.decision else None,
        steps_journalled=tuple(sorted(claim.steps)))


class Interventions:
    def __init__(self, deps: Dependencies) -> None:
        self._deps = deps
        self._tracer = deps.runtime.telemetry.tracer()
        # Claims running in this process. The store's compare-and-set accepts the current
        # owner re-acquiring (that is how a restarted worker of the same process resumes),
        # so two callers in one process must be kept apart here.
        self._running: set[str] = set()
        self._config = proc.Config(max_attempts=deps.settings.executor_max_attempts,
                                   dry_run=deps.settings.executor_dry_run,
                                   rescue_configured=deps.rescue is not None)
        self._limits = Limits(
            max_age=timedelta(seconds=deps.settings.executor_verdict_max_age_s),
            clock_skew=timedelta(seconds=deps.settings.executor_clock_skew_s),
            rescue_configured=deps.rescue is not None)
        self._records = ClaimRecords(runtime=deps.runtime, claims=deps.claims, owner=deps.owner)
        self._access = ServerAccess(connector=deps.connector, records=self._records,
                                    tracer=self._tracer)
        self._runs = Runs(runtime=deps.runtime, claims=deps.claims, owner=deps.owner,
                          settings=deps.settings, vault=deps.vault, connector=deps.connector,
                          pins=deps.pins, sealing_keys=deps.sealing_keys, rescue=deps.rescue,
                          records=self._records, tracer=self._tracer)
        self._engineers = Engineers(claims=deps.claims, owner=deps.owner, manual=deps.manual,
                                    settings=deps.settings, records=self._records)
        self._handlers: dict[type[Any], Callable[[Run, Any], Awaitable[proc.Event | None]]] = {
            cmd.CheckVerdict: self._check_verdict, cmd.Audit: self._audit,
            cmd.CloseClaim: self._close, cmd.OpenCredentials: self._open_credentials,
            cmd.ProbeSsh: self._probe, cmd.RecordDecision: self._record_decision,
            cmd.Announce: self._announce, cmd.StageClarification: self._stage_clarification,
            cmd.StageEscalation: self._stage_escalation,
            cmd.StageCompletion: self._stage_completion, cmd.PublishOutbox: self._publish,
            cmd.ConnectSsh: self._connect, cmd.RunRunbook: self._run_runbook,
            cmd.RunRescue: self._run_rescue, cmd.PlanRescue: self._plan_rescue,
            cmd.HandToEngineer: self._hand_to_engineer, cmd.Park: self._park,
            cmd.CheckWait: self._check_wait, cmd.PassReview: self._pass_review,
            cmd.ConsumeWait: self._consume_wait,
        }

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

    async def _run(self, claim: Claim) -> None:
        parent = propagate.extract(claim.trace_carrier)
        # The run's secrets stay masked for as long as it runs (a bounded redactor would
        # otherwise drop them under other tickets' secrets during a long run).
        with self._deps.runtime.redactor.holding(claim.id), self._tracer.start_as_current_span(
            "executor intervention", context=parent,
            attributes={TICKET_ID_ATTRIBUTE: claim.ticket_id, "ticket.revision": claim.revision,
                        "claim.attempt": claim.attempt},
        ) as span:
            state = await self._drive(Run(claim=claim), proc.State.start(self._config),
                                      acquired(claim))
            if state.stage == "refused":
                span.set_status(Status(StatusCode.ERROR, "stored verdict does not verify"))

    async def _finish_run(self, claim: Claim, verdict: AuthorizationVerified,
                          decision: AccessDecision, result: RunResult, *, dry_run: bool) -> None:
        """Enter the procedure at a finished runbook run (the integration tests stage one
        whose facts cannot be produced on this machine, such as a failing RAID)."""
        state = proc.State(stage="running", config=replace(self._config, dry_run=dry_run),
                           claim=acquired(claim), verdict=verdict, decision=decision)
        await self._drive(Run(claim=claim, verdict=verdict), state, proc.RunFinished(result))

    async def _drive(self, run: Run, state: proc.State, event: proc.Event) -> proc.State:
        """Feed events through the procedure until a run ends; always closes the session."""
        try:
            while True:
                produced: proc.Event | None = None
                try:
                    state, commands = proc.transition(state, event)
                    for command in commands:
                        # A span per step of the procedure: a trace shows where a run's
                        # time went (the store, the server, the bus).
                        with self._tracer.start_as_current_span(
                                f"procedure {type(command).__name__}"):
                            produced = (await self._handlers[type(command)](run, command)
                                        or produced)
                except LeaseLost:
                    log.warning("claim %s was taken over by another executor; stopped",
                                run.claim.id)
                    state, _ = proc.transition(state, proc.LeaseLost())
                    return state
                if produced is None:
                    return state
                event = produced
        finally:
            try:
                # What this attempt did is audited even when it stopped (a lost lease, an
                # error): the records are true whoever owns the claim now.
                await self._records.flush(run.claim)
            except Exception:  # the run's own error, if any, is the one to raise
                log.exception("audit records of claim %s not written", run.claim.id)
            if run.session is not None:
                await run.session.aclose()

    # --- the commands ----------------------------------------------------------------------

    async def _check_verdict(self, run: Run, command: cmd.CheckVerdict,
                             ) -> proc.VerdictChecked | proc.VerdictRefused | proc.ClaimTampered:
        try:
            verdict = parse_event(run.claim.verdict_json, AuthorizationVerified)
            verify_verdict(verdict, self._deps.verify_keys)
        except (SignatureError, ValueError) as exc:
            # The claim store was edited: refuse, say why, publish nothing for a verdict
            # that cannot be trusted.
            return proc.VerdictRefused(str(exc))
        # Every run, not only the first: the claim store is as writable as the verdict.
        findings = tampering(run.claim, verdict, self._deps.sealer, self._limits)
        if findings:
            log.warning("claim %s refused, not written by this executor: %s", run.claim.id,
                        "; ".join(findings))
            return proc.ClaimTampered(tuple(findings))
        run.verdict = verdict
        return proc.VerdictChecked(verdict, stale=staleness(verdict, self._deps.clock(),
                                                            self._limits))

    async def _audit(self, run: Run, command: cmd.Audit) -> None:
        # Each is followed by a fenced point (closing, passing the review, publishing, or
        # the next claim write of a resumed run), which writes it.
        self._records.audit_later(run.claim, command.record_id, command.kind, command.data)

    async def _close(self, run: Run, command: cmd.CloseClaim) -> None:
        await self._records.flush(run.claim)
        outcome = command.outcome
        if outcome is None and "z_completed" in run.claim.outbox:
            outcome = self._records.staged_outcome(run.claim)
        await self._deps.claims.close(run.claim.id, self._deps.owner, command.status,
                                      outcome=outcome)

    async def _open_credentials(self, run: Run, command: cmd.OpenCredentials,
                                ) -> proc.CredentialsOpened | proc.CredentialsRefused:
        try:
            run.credential = open_credentials(run.checked(), self._deps.sealing_keys)
        except CryptoError as exc:
            return proc.CredentialsRefused(str(exc))
        return proc.CredentialsOpened()

    async def _probe(self, run: Run, command: cmd.ProbeSsh) -> proc.ProbeFinished:
        probe, run.session = await self._access.probe(run.claim, run.checked(), run.opened())
        return proc.ProbeFinished(probe=probe, session=run.session is not None)

    async def _record_decision(self, run: Run, command: cmd.RecordDecision,
                               ) -> proc.DecisionRecorded:
        claim = run.claim
        if claim.decision:  # a resumed run keeps the first decision
            if not claim.outbox.keys() & _ANNOUNCING:
                # Its record went with the first outbox write after it: with none staged,
                # the attempt that decided may have stopped before writing it.
                self._records.audit_later(claim, f"access:{claim.id}:{claim.attempt}",
                                          "access_decision", {**claim.decision, "kept": True})
            return proc.DecisionRecorded(AccessDecision(**claim.decision))
        stored = await self._deps.claims.set_decision(claim.id, self._deps.owner,
                                                      asdict(command.decision))
        claim.decision = stored
        # Per attempt: the decision made again after an engineer approved the automation
        # is recorded, not swallowed as a repeat of the review decision's record.
        self._records.audit_later(claim, f"access:{claim.id}:{claim.attempt}",
                                  "access_decision", stored)
        return proc.DecisionRecorded(AccessDecision(**stored))

    async def _announce(self, run: Run, command: cmd.Announce) -> proc.Announced:
        await self._records.stage(run.claim, command.key,
                                  self._records.started(run.claim, run.checked(), command))
        await self._records.publish(run.claim)
        return proc.Announced()

    async def _stage_clarification(self, run: Run, command: cmd.StageClarification) -> None:
        await self._records.stage(run.claim, command.key, self._records.clarification(
            run.claim, run.checked(), command))

    async def _stage_escalation(self, run: Run, command: cmd.StageEscalation) -> None:
        await self._records.stage(run.claim, command.key, self._records.escalation(
            run.claim, run.checked(), command))

    async def _stage_completion(self, run: Run, command: cmd.StageCompletion) -> None:
        await self._records.stage(run.claim, command.key, self._records.completion(
            run.claim, run.checked(), command))

    async def _publish(self, run: Run, command: cmd.PublishOutbox) -> proc.Published:
        await self._records.publish(run.claim)
        return proc.Published()

    async def _connect(self, run: Run, command: cmd.ConnectSsh,
                       ) -> proc.Connected | proc.ConnectFailed:
        try:
            run.session = await self._access.connect(run.claim, run.checked(), run.opened())
        except SshError as exc:
            return proc.ConnectFailed(str(exc))
        return proc.Connected()

    async def _run_runbook(self, run: Run, command: cmd.RunRunbook,
                           ) -> proc.RunFinished | proc.RunHandedOver:
        assert run.session is not None, "the procedure connects before it runs a runbook"
        result = await self._runs.runbook(run.claim, run.checked(), run.session,
                                          command.runbook, dry_run=command.dry_run)
        if result.handover is not None:
            return proc.RunHandedOver(run=result, handover=result.handover)
        return proc.RunFinished(result)

    async def _run_rescue(self, run: Run, command: cmd.RunRescue,
                          ) -> proc.RunFinished | proc.RunHandedOver:
        result = await self._runs.rescue(run.claim, run.checked(), run.opened())
        if result.handover is not None:
            return proc.RunHandedOver(run=result.run, handover=result.handover)
        return proc.RunFinished(result.run)

    async def _plan_rescue(self, run: Run, command: cmd.PlanRescue) -> proc.RunFinished:
        return proc.RunFinished(self._runs.rescue_plan(run.checked(), command.runbook))

    async def _hand_to_engineer(self, run: Run, command: cmd.HandToEngineer,
                                ) -> proc.EngineerAsked:
        return await self._engineers.ask(run.claim, run.checked(), command)

    async def _park(self, run: Run, command: cmd.Park) -> None:
        await self._records.flush(run.claim)
        await self._engineers.park(run.claim, command.record)

    async def _check_wait(self, run: Run, command: cmd.CheckWait,
                          ) -> (proc.StillWaiting | proc.EngineerReported | proc.DeadlinePassed
                                | proc.ClaimTampered):
        return await self._engineers.check(run.claim, command.record)

    async def _pass_review(self, run: Run, command: cmd.PassReview) -> None:
        claim = run.claim
        await self._records.flush(claim)
        await self._deps.claims.pass_review(claim.id, self._deps.owner)
        claim.review_passed, claim.decision, claim.handover = True, None, None

    async def _consume_wait(self, run: Run, command: cmd.ConsumeWait) -> None:
        await self._engineers.consumed(command.wait_id)
