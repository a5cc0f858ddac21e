"""Handing a step to an engineer, parking the claim, and reading the step when it returns.

A manual step parks the claim: nothing waits in memory. The engineer's report or the step's
deadline re-opens it (:mod:`services.executor.manual`), and the resumed run reads here what
became of the step.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from schemas.events import AuthorizationVerified, ManualStepRequested
from schemas.registry import parse_event
from services.executor import procedure as proc
from services.executor.access import AccessDecision
from services.executor.claims import Claim, ClaimStore, Owner
from services.executor.manual import ManualSteps, ManualWait, deadline_after, wait_id
from services.executor.outbox import ClaimRecords, derived_event_id
from services.executor.procedure import commands as cmd
from services.executor.rescue.phases import journal_outcomes
from services.executor.settings import ExecutorSettings


class Engineers:
    def __init__(self, *, claims: ClaimStore, owner: Owner, manual: ManualSteps,
                 settings: ExecutorSettings, records: ClaimRecords) -> None:
        self._claims = claims
        self._owner = owner
        self._manual = manual
        self._settings = settings
        self._records = records

    async def ask(self, claim: Claim, verdict: AuthorizationVerified,
                  command: cmd.HandToEngineer) -> proc.EngineerAsked:
        """Stage ManualStepRequested and open the wait before anyone can see the request."""
        decision, step, key = command.decision, command.handover, command.key
        await self._records.stage(claim, key, ManualStepRequested.caused_by(
            verdict, event_id=derived_event_id(claim.id, key), step_id=command.step_id,
            method=decision.method, instructions=step.instructions,
            verification=step.verification, reason=step.reason[:2000],
            deadline=deadline_after(self._step_timeout(decision))))
        # The staged event is the truth: a resumed run keeps the first deadline.
        requested = parse_event(str(claim.outbox[key]["event"]), ManualStepRequested)
        deadline = requested.deadline or deadline_after(self._step_timeout(decision))
        record: dict[str, Any] = {"kind": command.kind, "method": decision.method,
                                  "runbook": decision.runbook, "reason": step.reason,
                                  "ticket_id": claim.ticket_id, "revision": claim.revision,
                                  "step_id": command.step_id, "step": step.step,
                                  "title": step.title, "deadline": deadline.isoformat()}
        if command.steps_done is not None:
            record["steps_done"] = list(command.steps_done)
        wait = await self._manual.open(
            claim_id=claim.id, ticket_id=claim.ticket_id, revision=claim.revision,
            step_id=command.step_id, kind=command.kind, method=decision.method,
            title=step.title, deadline=deadline)
        await self._records.audit(claim, f"manual-requested:{wait.id}", "manual_step_requested",
                                  {"step_id": command.step_id, "kind": command.kind,
                                   "method": decision.method,
                                   "deadline": deadline.isoformat()})
        await self._records.publish(claim)
        return proc.EngineerAsked(record)

    async def park(self, claim: Claim, record: Mapping[str, Any]) -> None:
        await self._claims.close(claim.id, self._owner, "handed_over", handover=record)
        # A report may have landed between opening the wait and parking the claim, when
        # re-opening could not find it parked: look once more.
        latest = await self._manual.get(wait_id(claim.id, str(record["step_id"])))
        if latest is not None and (latest.status != "waiting"
                                   or latest.overdue(datetime.now(UTC))):
            await self._claims.reopen(claim.id)

    async def check(self, claim: Claim, record: Mapping[str, Any],
                    ) -> (proc.StillWaiting | proc.EngineerReported | proc.DeadlinePassed
                          | proc.ClaimTampered):
        """Back from parking: the engineer reported, or the deadline passed."""
        key = wait_id(claim.id, str(record["step_id"]))
        wait = await self._manual.get(key)
        if wait is not None and wait.overdue(datetime.now(UTC)):
            wait = await self._manual.expire(key)
        if wait is not None and wait.status == "waiting":
            return proc.StillWaiting()
        if wait is not None and (problem := await self._manual.decision_problem(
                key, wait.status)) is not None:
            # A decision the executor did not record (a document written into the store):
            # never an engineer's word.
            return proc.ClaimTampered((f"manual decision {key}: {problem}",))
        # What the automation did before handing over (and the rescue boots it made).
        before = journal_outcomes(claim, with_rescue=True)
        if wait is None or wait.status == "timed_out":
            return proc.DeadlinePassed(
                deadline=wait.deadline.isoformat() if wait is not None else "?",
                before=before, elapsed_ms=_elapsed_ms(wait))
        return proc.EngineerReported(status="done" if wait.status == "done" else "failed",
                                     report=wait.report or {},
                                     before=before, elapsed_ms=_elapsed_ms(wait))

    async def consumed(self, key: str) -> None:
        await self._manual.consumed(key)

    def _step_timeout(self, decision: AccessDecision) -> float:
        if decision.timeline == "datacenter":
            return self._settings.executor_datacenter_step_timeout_s
        return self._settings.executor_manual_step_timeout_s


def _elapsed_ms(wait: ManualWait | None) -> int:
    """From the request to the report (or to the deadline, for a step nobody reported)."""
    if wait is None:
        return 0
    report = wait.report or {}
    end = report.get("at") if wait.status in ("done", "failed") else wait.deadline
    if not isinstance(end, datetime):
        return 0
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    return max(0, int((end - wait.requested_at).total_seconds() * 1000))
