"""Every edge of the executor's procedure, driven with plain values: no Kafka, store or SSH.

One case per edge of :data:`services.executor.procedure.EDGES`: the state and event that
take it, and what the commands must say. A new edge without a case fails
``test_every_edge_has_a_case``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from executor_verdicts import resolved_server, verdict

from schemas.events import AuthorizationVerified
from services.executor import hardware
from services.executor.access import AccessDecision, Probe
from services.executor.procedure import (
    EDGES,
    Acquired,
    Announced,
    ClaimTampered,
    Config,
    Connected,
    ConnectFailed,
    CredentialsOpened,
    CredentialsRefused,
    DeadlinePassed,
    DecisionRecorded,
    Edge,
    EngineerAsked,
    EngineerReported,
    Event,
    IllegalTransition,
    LeaseLost,
    ProbeFinished,
    Published,
    RunFinished,
    RunHandedOver,
    Stage,
    State,
    StillWaiting,
    VerdictChecked,
    VerdictRefused,
    transition,
)
from services.executor.procedure import commands as cmd
from services.executor.runbooks.engine import ActionRecord, Handover, RunResult, StepOutcome
from services.runtime.crypto import PrivateSealingKey

KEY = PrivateSealingKey.generate()
CONFIG = Config(max_attempts=3, dry_run=False, rescue_configured=True)
MDSTAT_DEGRADED = (Path(__file__).resolve().parents[2] / "fixtures" / "hardware"
                   / "mdstat_degraded.txt").read_text()

SSH_RUN = AccessDecision(method="ssh", mode="automated", disposition="run",
                         runbook="diagnostics", reason="SSH login works")
RESCUE_RUN = AccessDecision(method="rescue", mode="automated", disposition="run",
                            runbook="rescue.root_password_reset", reason="locked out",
                            timeline="complex")
CONSOLE = AccessDecision(method="ipkvm", mode="engineer", disposition="hand_over",
                         runbook="console.boot_repair", reason="no rescue", timeline="complex")
REFUSE = AccessDecision(method="ssh", mode="engineer", disposition="refuse", runbook="none",
                        reason="paid service")
CLARIFY = AccessDecision(method="ssh", mode="automated", disposition="clarify",
                         runbook="service_restart", reason="no admin rights",
                         question="Please give an administrator account.")
HANDOVER = Handover(index=2, step="restart", title="Restart", reason="cannot repeat",
                    instructions=("Check the service.",))
PARKED = {"kind": "console", "method": "ipkvm", "step_id": "r1-console",
          "title": "boot repair via ipkvm", "deadline": "2026-01-01T00:00:00+00:00"}
REVIEW_PARKED = {**PARKED, "kind": "review", "step_id": "r1-review"}


def a_verdict(category: str = "diagnostics", **kw: Any) -> AuthorizationVerified:
    return verdict(signing_key=None, sealing_key=KEY.public, username="admin", password="pw",
                   ticket_id="HD-1", category=category, **kw)


def claim(**kw: Any) -> Acquired:
    return Acquired(**{"claim_id": "HD-1:1", "revision": 1, "attempt": 1,
                       "failed_attempts": 1, **kw})


def at(stage: Stage, *, config: Config = CONFIG, **kw: Any) -> State:
    fields: dict[str, Any] = {"claim": claim(), "verdict": a_verdict(), **kw}
    return State(stage=stage, config=config, **fields)


def step(name: str, result: Any = "ok", facts: dict[str, Any] | None = None) -> StepOutcome:
    return StepOutcome(index=0, name=name, result=result, reason=None, facts=facts or {},
                       action=ActionRecord(step=name, command="true", exit_status=0,
                                           duration_ms=1, result=result))


def run_of(*steps: StepOutcome) -> RunResult:
    facts: dict[str, Any] = {}
    for s in steps:
        facts.update(s.facts)
    return RunResult(steps=steps, facts=facts)


HEALTHY = run_of(step("uptime"))
RAID = run_of(step("raid", facts={"evidence_raid": [
    hardware.evidence_to_dict(e) for e in hardware.parse_mdstat(MDSTAT_DEGRADED)]}))


def kinds(commands: tuple[cmd.Command, ...]) -> list[str]:
    return [type(c).__name__ for c in commands]


def only(commands: tuple[cmd.Command, ...], kind: type[Any]) -> Any:
    [found] = [c for c in commands if isinstance(c, kind)]
    return found


@dataclass(frozen=True)
class Case:
    state: State
    event: Event
    check: Callable[[tuple[cmd.Command, ...]], None]


def _completion(outcome: str, *, before: list[str] | None = None,
                reason: str | None = "") -> Callable[[tuple[cmd.Command, ...]], None]:
    def check(commands: tuple[cmd.Command, ...]) -> None:
        assert kinds(commands)[-2:] == ["StageCompletion", "PublishOutbox"]
        assert kinds(commands)[:-2] == (before or [])
        completion = only(commands, cmd.StageCompletion)
        assert completion.outcome == outcome
        if reason:
            assert reason in (completion.reason or "")
    return check


def _kinds(*expected: str) -> Callable[[tuple[cmd.Command, ...]], None]:
    def check(commands: tuple[cmd.Command, ...]) -> None:
        assert kinds(commands) == list(expected)
    return check


def _engineer(kind: str, step_id: str) -> Callable[[tuple[cmd.Command, ...]], None]:
    def check(commands: tuple[cmd.Command, ...]) -> None:
        assert kinds(commands)[-1] == "HandToEngineer"
        asked = only(commands, cmd.HandToEngineer)
        assert (asked.kind, asked.step_id, asked.key) == (kind, step_id, f"d_manual_{kind}")
    return check


def _decision(method: str, disposition: str) -> Callable[[tuple[cmd.Command, ...]], None]:
    def check(commands: tuple[cmd.Command, ...]) -> None:
        recorded = only(commands, cmd.RecordDecision)
        assert (recorded.decision.method, recorded.decision.disposition) == (method,
                                                                              disposition)
    return check


def _refused(kind: str, says: str) -> Callable[[tuple[cmd.Command, ...]], None]:
    """The claim ends refused, audited as ``kind`` saying ``says``; nothing else is done."""
    def check(commands: tuple[cmd.Command, ...]) -> None:
        assert kinds(commands) == ["Audit", "CloseClaim"]
        assert only(commands, cmd.CloseClaim).status == "refused"
        audit = only(commands, cmd.Audit)
        assert audit.kind == kind
        assert says in str(audit.data)
    return check


STALE = "the verdict was issued 90000 s ago, more than the 86400 s a verdict stays valid"


def _reported(status: Any) -> EngineerReported:
    return EngineerReported(status=status, report={"status": status, "engineer_id": "eng-1",
                                                   "channel": "matrix", "notes": "fixed"},
                            before=run_of(), elapsed_ms=1000)


OFFLINE = a_verdict("boot_repair")
WINDOWS = resolved_server(os_family="windows", rescue=False)

CASES: dict[str, Callable[[], Case]] = {
    "claimed/Acquired/": lambda: Case(
        State.start(CONFIG), claim(), _kinds("CheckVerdict")),
    "claimed/VerdictRefused/stored verdict does not verify": lambda: Case(
        at("claimed", verdict=None), VerdictRefused("signature does not verify"),
        lambda c: (kinds(c) == ["Audit", "CloseClaim"]
                   and only(c, cmd.CloseClaim).status == "refused"
                   and only(c, cmd.Audit).kind == "claim_refused") or pytest.fail(str(c))),
    "claimed/ClaimTampered/claim record not signed or not the verdict's": lambda: Case(
        at("claimed", verdict=None), ClaimTampered(("review_passed: not signed by the executor",)),
        _refused("claim_tampered", "review_passed")),
    "claimed/VerdictChecked/verdict too old to act on": lambda: Case(
        at("claimed", claim=claim(attempt=2)), VerdictChecked(a_verdict(), stale=STALE),
        _refused("claim_refused", "verdict_stale")),
    "claimed/VerdictChecked/completion already staged": lambda: Case(
        at("claimed", claim=claim(attempt=2, completion_staged=True)),
        VerdictChecked(a_verdict()), _kinds("Audit", "PublishOutbox")),
    "claimed/VerdictChecked/parked on an engineer's step": lambda: Case(
        at("claimed", claim=claim(parked=PARKED)), VerdictChecked(a_verdict()),
        _kinds("CheckWait")),
    "claimed/VerdictChecked/interrupted too often": lambda: Case(
        at("claimed", claim=claim(attempt=5, failed_attempts=5)), VerdictChecked(a_verdict()),
        _engineer("retries", "r1-retries")),
    "claimed/VerdictChecked/": lambda: Case(
        at("claimed"), VerdictChecked(a_verdict()), _kinds("OpenCredentials")),
    "verified/CredentialsRefused/credentials refused": lambda: Case(
        at("verified"), CredentialsRefused("no key for key id x"),
        _completion("refused", reason="could not be opened")),
    "verified/CredentialsOpened/decision already stored": lambda: Case(
        at("verified", decision=SSH_RUN), CredentialsOpened(), _decision("ssh", "run")),
    "verified/CredentialsOpened/review required": lambda: Case(
        at("verified", verdict=a_verdict(review_required=True, review_reason="4 in 30 days")),
        CredentialsOpened(), _decision("ssh", "hand_over")),
    "verified/CredentialsOpened/live system": lambda: Case(
        at("verified"), CredentialsOpened(), _kinds("ProbeSsh")),
    "verified/CredentialsOpened/offline repair": lambda: Case(
        at("verified", verdict=OFFLINE), CredentialsOpened(), _decision("rescue", "run")),
    "probing/ProbeFinished/logged in": lambda: Case(
        at("probing"), ProbeFinished(probe=Probe(outcome="ok", privileged=True), session=True),
        _decision("ssh", "run")),
    "probing/ProbeFinished/host key refused": lambda: Case(
        at("probing"), ProbeFinished(probe=Probe(outcome="host_key_mismatch"), session=False),
        _decision("ssh", "refuse")),
    "probing/ProbeFinished/credentials refused": lambda: Case(
        at("probing"), ProbeFinished(probe=Probe(outcome="auth_failed"), session=False),
        _decision("ssh", "clarify")),
    "probing/ProbeFinished/unreachable": lambda: Case(
        at("probing", verdict=a_verdict("diagnostics", server=WINDOWS)),
        ProbeFinished(probe=Probe(outcome="unreachable"), session=False),
        _decision("ipkvm", "hand_over")),
    "deciding/DecisionRecorded/refuse": lambda: Case(
        at("deciding"), DecisionRecorded(REFUSE), _completion("refused")),
    "deciding/DecisionRecorded/ask the customer": lambda: Case(
        at("deciding"), DecisionRecorded(CLARIFY),
        _completion("unresolved", before=["StageClarification"])),
    "deciding/DecisionRecorded/run or hand over": lambda: Case(
        at("deciding"), DecisionRecorded(SSH_RUN),
        lambda c: (kinds(c) == ["Announce"] and only(c, cmd.Announce).key == "a_started")
        or pytest.fail(str(c))),
    "access_decided/Announced/engineer's work": lambda: Case(
        at("access_decided", decision=CONSOLE), Announced(), _engineer("console", "r1-console")),
    "access_decided/Announced/rescue not configured": lambda: Case(
        at("access_decided", decision=RESCUE_RUN,
           config=replace(CONFIG, rescue_configured=False)), Announced(),
        _completion("unresolved", reason="no longer configured")),
    "access_decided/Announced/rescue": lambda: Case(
        at("access_decided", decision=RESCUE_RUN), Announced(), _kinds("RunRescue")),
    "access_decided/Announced/rescue, dry run": lambda: Case(
        at("access_decided", decision=RESCUE_RUN, config=replace(CONFIG, dry_run=True)),
        Announced(), _kinds("PlanRescue")),
    "access_decided/Announced/ssh, probe session open": lambda: Case(
        at("access_decided", decision=SSH_RUN, session=True), Announced(),
        _kinds("RunRunbook")),
    "access_decided/Announced/ssh, resumed": lambda: Case(
        at("access_decided", decision=SSH_RUN), Announced(), _kinds("ConnectSsh")),
    "connecting/Connected/": lambda: Case(
        at("connecting", decision=SSH_RUN), Connected(), _kinds("RunRunbook")),
    "connecting/ConnectFailed/host key or login refused, unreachable": lambda: Case(
        at("connecting", decision=SSH_RUN), ConnectFailed("host key mismatch"),
        _engineer("reconnect", "r1-reconnect")),
    "running/RunFinished/hardware found": lambda: Case(
        at("running", decision=SSH_RUN), RunFinished(RAID),
        _completion("partially_resolved", before=["StageEscalation", "StageEscalation"],
                    reason="Hardware fault")),
    "running/RunFinished/": lambda: Case(
        at("running", decision=SSH_RUN), RunFinished(HEALTHY), _completion("resolved")),
    "running/RunHandedOver/step not safe to repeat": lambda: Case(
        at("running", decision=SSH_RUN), RunHandedOver(run=HEALTHY, handover=HANDOVER),
        _engineer("resume", "r1-resume")),
    "rescue/RunFinished/hardware found": lambda: Case(
        at("rescue", decision=RESCUE_RUN), RunFinished(RAID),
        _completion("partially_resolved", before=["StageEscalation", "StageEscalation"])),
    "rescue/RunFinished/": lambda: Case(
        at("rescue", decision=RESCUE_RUN),
        RunFinished(run_of(step("rescue_boot_rescue", "changed"), step("reset", "failed"))),
        # getting into the rescue system repairs nothing: not "partially resolved"
        _completion("unresolved")),
    "rescue/RunHandedOver/left in the rescue system": lambda: Case(
        at("rescue", decision=RESCUE_RUN), RunHandedOver(run=HEALTHY, handover=HANDOVER),
        _engineer("rescue", "r1-rescue")),
    "handing_over/EngineerAsked/": lambda: Case(
        at("handing_over", decision=CONSOLE), EngineerAsked(PARKED), _kinds("Park")),
    "waiting_for_engineer/StillWaiting/": lambda: Case(
        at("waiting_for_engineer", claim=claim(parked=PARKED)), StillWaiting(),
        lambda c: (kinds(c) == ["Park"] and only(c, cmd.Park).record == PARKED)
        or pytest.fail(str(c))),
    "waiting_for_engineer/EngineerReported/review approved": lambda: Case(
        at("waiting_for_engineer", claim=claim(parked=REVIEW_PARKED)), _reported("done"),
        _kinds("Audit", "PassReview", "ConsumeWait", "OpenCredentials")),
    "waiting_for_engineer/EngineerReported/review approved, verdict too old to act on": (
        lambda: Case(at("waiting_for_engineer", claim=claim(parked=REVIEW_PARKED), stale=STALE),
                     _reported("done"), _refused("claim_refused", "verdict_stale"))),
    "waiting_for_engineer/ClaimTampered/step decision not signed": lambda: Case(
        at("waiting_for_engineer", claim=claim(parked=REVIEW_PARKED)),
        ClaimTampered(("manual decision HD-1:1:r1-review: manual_decision: bad signature",)),
        _refused("claim_tampered", "manual decision")),
    "waiting_for_engineer/EngineerReported/done": lambda: Case(
        at("waiting_for_engineer", claim=claim(parked=PARKED)), _reported("done"),
        _completion("resolved")),
    "waiting_for_engineer/EngineerReported/failed": lambda: Case(
        at("waiting_for_engineer", claim=claim(parked=PARKED)), _reported("failed"),
        _completion("unresolved", reason="as failed: fixed")),
    "waiting_for_engineer/DeadlinePassed/deadline passed": lambda: Case(
        at("waiting_for_engineer", claim=claim(parked=PARKED)),
        DeadlinePassed(deadline="2026-01-01T00:00:00+00:00", before=run_of(
            step("backup", "changed")), elapsed_ms=5),
        _completion("partially_resolved", reason="by its deadline 2026-01-01")),
    "completing/Published/": lambda: Case(
        at("completing", claim=claim(parked=PARKED)), Published(),
        lambda c: (kinds(c) == ["CloseClaim", "ConsumeWait"]
                   and only(c, cmd.ConsumeWait).wait_id == "HD-1:1:r1-console")
        or pytest.fail(str(c))),
    **{f"{stage}/LeaseLost/lease lost": (lambda stage=stage: Case(
        at(stage), LeaseLost(), _kinds())) for stage in
       ("claimed", "verified", "probing", "deciding", "access_decided", "connecting",
        "running", "rescue", "handing_over", "waiting_for_engineer", "completing", "closed",
        "refused")},
}


def edge_id(edge: Edge) -> str:
    return f"{edge.source}/{edge.event.__name__}/{edge.guard}"


def test_every_edge_has_a_case_and_every_case_an_edge() -> None:
    assert {edge_id(e) for e in EDGES} == set(CASES)


@pytest.mark.parametrize("edge", EDGES, ids=edge_id)
def test_edge(edge: Edge) -> None:
    case = CASES[edge_id(edge)]()
    state, commands = transition(case.state, case.event)
    assert state.via is edge
    assert state.stage == edge.target
    case.check(commands)


def test_an_event_without_an_edge_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        transition(at("running", decision=SSH_RUN), CredentialsOpened())
    with pytest.raises(IllegalTransition):
        transition(at("stopped"), LeaseLost())


def test_a_resumed_run_audits_its_resumption_with_the_journalled_steps() -> None:
    resumed = claim(attempt=2, steps_journalled=("000", "001"))
    _, commands = transition(at("claimed", claim=resumed), VerdictChecked(a_verdict()))
    audit = only(commands, cmd.Audit)
    assert (audit.record_id, audit.kind) == ("resume:HD-1:1:2", "claim_resumed")
    assert audit.data == {"attempt": 2, "steps_journalled": ["000", "001"]}


def test_after_an_approved_review_the_run_is_announced_under_its_own_key() -> None:
    approved, _ = transition(at("waiting_for_engineer", claim=claim(parked=REVIEW_PARKED)),
                             _reported("done"))
    assert approved.claim is not None
    assert approved.claim.review_passed
    decided, _ = transition(approved, CredentialsOpened())
    assert decided.stage == "probing"  # decided anew, without the review
    _, commands = transition(replace(decided, stage="deciding"), DecisionRecorded(SSH_RUN))
    assert only(commands, cmd.Announce).key == "a_started_after_review"


def test_parameters_the_runbook_cannot_use_become_a_question() -> None:
    state = at("probing", verdict=a_verdict("service_restart",
                                            parameters={"unit": "bad unit; rm -rf /"}))
    _, commands = transition(state, ProbeFinished(probe=Probe(outcome="ok", privileged=True),
                                                  session=True))
    decision = only(commands, cmd.RecordDecision).decision
    assert decision.disposition == "clarify"
    assert "could not use the details" in (decision.question or "")


def test_a_dry_run_completion_says_so_but_an_engineers_does_not() -> None:
    dry = replace(CONFIG, dry_run=True)
    _, commands = transition(at("running", decision=SSH_RUN, config=dry),
                             RunFinished(run_of(step("restart", "planned"))))
    assert only(commands, cmd.StageCompletion).dry_run
    _, commands = transition(at("waiting_for_engineer", config=dry,
                                claim=claim(parked=PARKED)), _reported("done"))
    assert not only(commands, cmd.StageCompletion).dry_run


def test_the_whole_happy_path_reads_as_the_procedure() -> None:
    """A fake interpreter answering each command: verified → … → closed in one pass."""
    answers: dict[type[Any], Event] = {
        cmd.CheckVerdict: VerdictChecked(a_verdict()), cmd.OpenCredentials: CredentialsOpened(),
        cmd.ProbeSsh: ProbeFinished(probe=Probe(outcome="ok", privileged=True), session=True),
        cmd.RecordDecision: DecisionRecorded(SSH_RUN), cmd.Announce: Announced(),
        cmd.RunRunbook: RunFinished(HEALTHY), cmd.PublishOutbox: Published()}
    state, event = State.start(CONFIG), claim()
    stages = []
    while True:
        state, commands = transition(state, event)
        stages.append(state.stage)
        produced = [answers[type(c)] for c in commands if type(c) in answers]
        if not produced:
            break
        event = produced[-1]
    assert stages == ["claimed", "verified", "probing", "deciding", "access_decided",
                      "running", "completing", "closed"]
