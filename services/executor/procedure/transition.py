"""The OS intervention procedure, top to bottom: one pure transition per edge.

``transition(state, event) -> (state, commands)`` never touches Kafka, MongoDB, SSH or the
clock; the interpreter (:mod:`services.executor.intervention`) carries out the commands and
feeds back the event the last of them produced. The handlers below follow an intervention
in the order it happens; each names its edge in :data:`~services.executor.procedure.
states.EDGES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from schemas.events import AccessMethod, AuthorizationVerified, Outcome
from services.executor.access import (
    AccessDecision,
    Probe,
    ServerFacts,
    needs_probe,
    select_access,
)
from services.executor.handover_notes import (
    console_handover,
    reconnect_handover,
    retries_handover,
    retry_decision,
    review_decision,
    review_handover,
)
from services.executor.outcome import default_advice, finish_run, manual_completion
from services.executor.procedure import commands as cmd
from services.executor.procedure import events as ev
from services.executor.procedure.states import Edge, Stage, State
from services.executor.procedure.states import edge as _edge
from services.executor.rescue.runbooks import RESCUE_RUNBOOKS, rescue_params
from services.executor.runbooks import RUNBOOKS
from services.executor.runbooks.model import ParameterError
from services.executor.runbooks.results import Handover, RunResult

Step = tuple[State, tuple[cmd.Command, ...]]


def _go(state: State, edge: Edge, *commands: cmd.Command, **changes: Any) -> Step:
    return replace(state, stage=edge.target, via=edge, **changes), commands


class IllegalTransition(Exception):
    """An event the procedure has no edge for in the current stage (an interpreter bug)."""


# --- the procedure -----------------------------------------------------------------------

def transition(state: State, event: ev.Event) -> Step:
    """The next state and the commands that carry it out. Pure: same input, same output."""
    if isinstance(event, ev.LeaseLost) and state.stage != "stopped":
        return _go(state, _edge(state.stage, ev.LeaseLost, "lease lost"))
    handler = _HANDLERS.get((state.stage, type(event)))
    if handler is None:
        raise IllegalTransition(f"no edge from {state.stage} on {type(event).__name__}")
    return handler(state, event)


def _acquired(state: State, event: ev.Acquired) -> Step:
    return _go(state, _edge("claimed", ev.Acquired), cmd.CheckVerdict(), claim=event,
               decision=event.decision)


def _verdict_refused(state: State, event: ev.VerdictRefused) -> Step:
    claim = _claim(state)
    return _go(state, _edge("claimed", ev.VerdictRefused, "stored verdict does not verify"),
               cmd.Audit(record_id=f"claim-refused:{claim.claim_id}", kind="claim_refused",
                         data={"reason": event.reason[:500]}),
               cmd.CloseClaim(status="refused", outcome="refused"))


def _claim_tampered(state: State, event: ev.ClaimTampered) -> Step:
    """Someone wrote the claim (or an engineer's decision on it) who is not the executor:
    nothing more happens on the server; the audit trail says what was found."""
    claim = _claim(state)
    guard = ("claim record not signed or not the verdict's" if state.stage == "claimed"
             else "step decision not signed")
    return _go(state, _edge(state.stage, ev.ClaimTampered, guard),
               cmd.Audit(record_id=f"claim-tampered:{claim.claim_id}:{claim.attempt}",
                         kind="claim_tampered",
                         data={"findings": [f[:300] for f in event.findings[:20]]}),
               cmd.CloseClaim(status="refused", outcome="refused"))


def _refuse_stale(state: State, event: type[Any], guard: str) -> Step:
    claim = _claim(state)
    return _go(state, _edge(state.stage, event, guard),
               cmd.Audit(record_id=f"claim-refused:{claim.claim_id}", kind="claim_refused",
                         data={"reason": f"verdict_stale: {state.stale}"[:500]}),
               cmd.CloseClaim(status="refused", outcome="refused"))


def _verdict_checked(state: State, event: ev.VerdictChecked) -> Step:
    claim = _claim(state)
    state = replace(state, verdict=event.verdict, stale=event.stale)
    resumed: tuple[cmd.Command, ...] = ()
    if claim.attempt > 1:
        resumed = (cmd.Audit(record_id=f"resume:{claim.claim_id}:{claim.attempt}",
                             kind="claim_resumed",
                             data={"attempt": claim.attempt,
                                   "steps_journalled": list(claim.steps_journalled)}),)
    if claim.completion_staged:
        return _go(state, _edge("claimed", ev.VerdictChecked, "completion already staged"),
                   *resumed, cmd.PublishOutbox())
    if claim.parked and claim.parked.get("step_id"):
        return _go(state, _edge("claimed", ev.VerdictChecked, "parked on an engineer's step"),
                   *resumed, cmd.CheckWait(record=claim.parked))
    if state.stale is not None:
        # A replayed or long-stuck verdict leads to nothing more on the server.
        return _refuse_stale(state, ev.VerdictChecked, "verdict too old to act on")
    if claim.failed_attempts > state.config.max_attempts:
        decision = state.decision or retry_decision(event.verdict)
        return _go(state, _edge("claimed", ev.VerdictChecked, "interrupted too often"),
                   *resumed, _hand_to_engineer(state, decision, "retries",
                                               retries_handover(claim.attempt - 1)),
                   decision=decision)
    return _go(state, _edge("claimed", ev.VerdictChecked), *resumed, cmd.OpenCredentials())


def _credentials_refused(state: State, event: ev.CredentialsRefused) -> Step:
    return _go(state, _edge("verified", ev.CredentialsRefused, "credentials refused"),
               *_complete(state, outcome="refused", access_method=None,
                          reason=f"the credentials could not be opened: {event.reason}"))


def _credentials_opened(state: State, event: ev.CredentialsOpened) -> Step:
    verdict = _verdict(state)
    if state.decision is not None:
        return _go(state, _edge("verified", ev.CredentialsOpened, "decision already stored"),
                   cmd.RecordDecision(decision=state.decision))
    if verdict.review_required and not _claim(state).review_passed:
        return _go(state, _edge("verified", ev.CredentialsOpened, "review required"),
                   cmd.RecordDecision(decision=review_decision(verdict)))
    if needs_probe(verdict.ticket.category):
        return _go(state, _edge("verified", ev.CredentialsOpened, "live system"), cmd.ProbeSsh())
    return _go(state, _edge("verified", ev.CredentialsOpened, "offline repair"),
               cmd.RecordDecision(decision=decide_access(state, Probe(outcome="not_attempted"))))


_PROBE_GUARDS: Mapping[str, str] = {"ok": "logged in", "host_key_mismatch": "host key refused",
                                    "auth_failed": "credentials refused"}


def _probe_finished(state: State, event: ev.ProbeFinished) -> Step:
    guard = _PROBE_GUARDS.get(event.probe.outcome, "unreachable")
    return _go(state, _edge("probing", ev.ProbeFinished, guard),
               cmd.RecordDecision(decision=decide_access(state, event.probe)),
               session=event.session)


def decide_access(state: State, probe: Probe) -> AccessDecision:
    """The access method for this ticket, with the runbook's parameters checked: a request
    whose details the runbook cannot use goes back to the customer as a question."""
    verdict = _verdict(state)
    server = verdict.server
    facts = ServerFacts(type=server.type, os_family=server.os_family, ipkvm=server.ipkvm,
                        rescue=server.rescue, rescue_automated=state.config.rescue_configured)
    decision = select_access(facts, verdict.ticket.category, probe)
    if decision.disposition != "run":
        return decision
    try:
        if decision.method == "rescue":
            runbook = RESCUE_RUNBOOKS[decision.runbook]
            runbook.steps(runbook.parse_params(rescue_params(verdict)), "linux")
        else:
            runbook = RUNBOOKS[decision.runbook]
            runbook.steps(runbook.parse_params(verdict.ticket.parameters), server.os_family)
    except ParameterError as exc:
        return AccessDecision(
            method=decision.method, mode="automated", disposition="clarify",
            runbook=decision.runbook, reason=str(exc),
            question=f"We could not use the details of your request: {exc}. Please correct "
                     "them on this ticket.")
    return decision


def _decision_recorded(state: State, event: ev.DecisionRecorded) -> Step:
    decision = event.decision
    state = replace(state, decision=decision)
    if decision.disposition == "refuse":
        return _go(state, _edge("deciding", ev.DecisionRecorded, "refuse"),
                   *_complete(state, outcome="refused", reason=decision.reason,
                              access_method=decision.method))
    if decision.disposition == "clarify":
        return _go(state, _edge("deciding", ev.DecisionRecorded, "ask the customer"),
                   cmd.StageClarification(question=decision.question or decision.reason),
                   *_complete(state, outcome="unresolved", reason=decision.reason,
                              access_method=decision.method))
    # After an engineer's review the automated run is announced on its own.
    key = "a_started_after_review" if _claim(state).review_passed else "a_started"
    return _go(state, _edge("deciding", ev.DecisionRecorded, "run or hand over"),
               cmd.Announce(key=key, decision=decision, dry_run=state.config.dry_run))


def _announced(state: State, event: ev.Announced) -> Step:
    decision = _decision(state)
    if decision.disposition == "hand_over":
        return _go(state, _edge("access_decided", ev.Announced, "engineer's work"),
                   _hand_to_engineer(state, decision, decision.runbook.split(".")[0]))
    if decision.method == "rescue":
        if not state.config.rescue_configured:  # removed while the claim was open
            return _go(state, _edge("access_decided", ev.Announced, "rescue not configured"),
                       *_complete(state, outcome="unresolved", access_method=decision.method,
                                  reason="rescue mode is no longer configured in this "
                                         "executor; support follows up"))
        if state.config.dry_run:
            return _go(state, _edge("access_decided", ev.Announced, "rescue, dry run"),
                       cmd.PlanRescue(runbook=decision.runbook))
        return _go(state, _edge("access_decided", ev.Announced, "rescue"),
                   cmd.RunRescue(runbook=decision.runbook))
    if state.session:
        return _go(state, _edge("access_decided", ev.Announced, "ssh, probe session open"),
                   cmd.RunRunbook(runbook=decision.runbook, dry_run=state.config.dry_run))
    return _go(state, _edge("access_decided", ev.Announced, "ssh, resumed"), cmd.ConnectSsh())


def _connected(state: State, event: ev.Connected) -> Step:
    return _go(state, _edge("connecting", ev.Connected),
               cmd.RunRunbook(runbook=_decision(state).runbook, dry_run=state.config.dry_run),
               session=True)


def _connect_failed(state: State, event: ev.ConnectFailed) -> Step:
    return _go(state, _edge("connecting", ev.ConnectFailed, "host key or login refused, "
                                                         "unreachable"),
               _hand_to_engineer(state, _decision(state), "reconnect",
                                 reconnect_handover(event.reason)))


def _run_finished(state: State, event: ev.RunFinished) -> Step:
    decision = _decision(state)
    found, verdict, advice = finish_run(event.run, dry_run=state.config.dry_run,
                                        rescue=decision.method == "rescue")
    escalations = tuple(cmd.StageEscalation(n=n, escalation=e) for n, e in enumerate(found))
    guard = "hardware found" if found else ""
    return _go(state, _edge(state.stage, ev.RunFinished, guard), *escalations,
               *_complete(state, outcome=verdict.outcome, reason=verdict.reason,
                          access_method=decision.method, run=event.run, advice=advice,
                          dry_run=state.config.dry_run))


def _run_handed_over(state: State, event: ev.RunHandedOver) -> Step:
    rescue = state.stage == "rescue"
    guard = "left in the rescue system" if rescue else "step not safe to repeat"
    return _go(state, _edge(state.stage, ev.RunHandedOver, guard),
               _hand_to_engineer(state, _decision(state), "rescue" if rescue else "resume",
                                 event.handover, event.run))


def _engineer_asked(state: State, event: ev.EngineerAsked) -> Step:
    return _go(state, _edge("handing_over", ev.EngineerAsked),
               cmd.Park(record=event.record))


def _still_waiting(state: State, event: ev.StillWaiting) -> Step:
    return _go(state, _edge("waiting_for_engineer", ev.StillWaiting),
               cmd.Park(record=_claim(state).parked or {}))


def _engineer_reported(state: State, event: ev.EngineerReported) -> Step:
    claim = _claim(state)
    record = claim.parked or {}
    if record.get("kind") == "review" and event.status == "done" and state.stale is not None:
        return _refuse_stale(state, ev.EngineerReported,
                             "review approved, verdict too old to act on")
    if record.get("kind") == "review" and event.status == "done":
        # Approved: decide the access anew, this time without the review.
        wait = f"{claim.claim_id}:{record['step_id']}"
        return _go(state, _edge("waiting_for_engineer", ev.EngineerReported, "review approved"),
                   cmd.Audit(record_id=f"review-passed:{claim.claim_id}", kind="review_passed",
                             data={"step_id": record["step_id"],
                                   "engineer": event.report.get("engineer_id")}),
                   cmd.PassReview(), cmd.ConsumeWait(wait_id=wait), cmd.OpenCredentials(),
                   claim=replace(claim, review_passed=True, decision=None, parked=None),
                   decision=None)
    completion = manual_completion(record, status=event.status, report=event.report,
                                   before=event.before, elapsed_ms=event.elapsed_ms)
    return _go(state, _edge("waiting_for_engineer", ev.EngineerReported, event.status),
               *_complete(state, **vars(completion)))


def _deadline_passed(state: State, event: ev.DeadlinePassed) -> Step:
    completion = manual_completion(_claim(state).parked or {}, status="timed_out", report={},
                                   before=event.before, elapsed_ms=event.elapsed_ms,
                                   deadline=event.deadline)
    return _go(state, _edge("waiting_for_engineer", ev.DeadlinePassed, "deadline passed"),
               *_complete(state, **vars(completion)))


def _published(state: State, event: ev.Published) -> Step:
    parked = _claim(state).parked
    consume: tuple[cmd.Command, ...] = ()
    if parked and parked.get("step_id"):
        consume = (cmd.ConsumeWait(wait_id=f"{_claim(state).claim_id}:{parked['step_id']}"),)
    return _go(state, _edge("completing", ev.Published),
               cmd.CloseClaim(status="finished"), *consume)


# --- shared pieces -----------------------------------------------------------------------

def _complete(state: State, *, outcome: Outcome, reason: str | None,
              access_method: AccessMethod | None, run: RunResult | None = None,
              advice: tuple[str, ...] | None = None,
              dry_run: bool = False) -> tuple[cmd.Command, ...]:
    """Stage the one InterventionCompleted, then publish the outbox."""
    return (cmd.StageCompletion(outcome=outcome, reason=reason, access_method=access_method,
                                run=run, dry_run=dry_run,
                                advice=advice if advice is not None else default_advice()),
            cmd.PublishOutbox())


def _hand_to_engineer(state: State, decision: AccessDecision, kind: str,
                      handover: Handover | None = None,
                      run: RunResult | None = None) -> cmd.HandToEngineer:
    verdict = _verdict(state)
    if handover is None:
        handover = (review_handover(verdict, decision) if kind == "review"
                    else console_handover(verdict, decision))
    return cmd.HandToEngineer(
        kind=kind, decision=decision, handover=handover,
        step_id=f"r{_claim(state).revision}-{kind}"[:64], key=f"d_manual_{kind}"[:60],
        steps_done=tuple(s.name for s in run.steps) if run is not None else None)


def _claim(state: State) -> ev.Acquired:
    assert state.claim is not None, "the claim is known from the first event on"
    return state.claim


def _verdict(state: State) -> AuthorizationVerified:
    assert state.verdict is not None, "the verdict is known once it was checked"
    return state.verdict


def _decision(state: State) -> AccessDecision:
    assert state.decision is not None, "the access decision is known once recorded"
    return state.decision


_HANDLERS: dict[tuple[Stage, type[Any]], Callable[[State, Any], Step]] = {
    ("claimed", ev.Acquired): _acquired,
    ("claimed", ev.VerdictRefused): _verdict_refused,
    ("claimed", ev.ClaimTampered): _claim_tampered,
    ("waiting_for_engineer", ev.ClaimTampered): _claim_tampered,
    ("claimed", ev.VerdictChecked): _verdict_checked,
    ("verified", ev.CredentialsRefused): _credentials_refused,
    ("verified", ev.CredentialsOpened): _credentials_opened,
    ("probing", ev.ProbeFinished): _probe_finished,
    ("deciding", ev.DecisionRecorded): _decision_recorded,
    ("access_decided", ev.Announced): _announced,
    ("connecting", ev.Connected): _connected,
    ("connecting", ev.ConnectFailed): _connect_failed,
    ("running", ev.RunFinished): _run_finished,
    ("running", ev.RunHandedOver): _run_handed_over,
    ("rescue", ev.RunFinished): _run_finished,
    ("rescue", ev.RunHandedOver): _run_handed_over,
    ("handing_over", ev.EngineerAsked): _engineer_asked,
    ("waiting_for_engineer", ev.StillWaiting): _still_waiting,
    ("waiting_for_engineer", ev.EngineerReported): _engineer_reported,
    ("waiting_for_engineer", ev.DeadlinePassed): _deadline_passed,
    ("completing", ev.Published): _published,
}


