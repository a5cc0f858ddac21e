"""Outcome and after-care advice from what the runbook did."""

from __future__ import annotations

from typing import Any

from services.executor.hardware import Escalation
from services.executor.outcome import (
    CHANGE_SHARED,
    HARDWARE,
    NEW_CREDENTIALS,
    REVIEW,
    VERIFY_ACCESS,
    decide_outcome,
    recommendations,
)
from services.executor.runbooks.engine import ActionRecord, RunResult, StepOutcome


def run(*results: Any) -> RunResult:
    return RunResult(facts={}, steps=tuple(
        StepOutcome(index=i, name=f"s{i}", result=r, reason="why" if r == "failed" else None,
                    action=ActionRecord(step=f"Step {i}", command="c", exit_status=0,
                                        duration_ms=1, result=r), facts={})
        for i, r in enumerate(results)))


DISK = Escalation(component="disk", device="sda", severity="critical", evidence=("x",))
WARN = Escalation(component="memory", device="DIMM0", severity="warning", evidence=("y",))


def test_everything_done_is_resolved() -> None:
    assert decide_outcome(run("ok", "changed", "no_change_needed", "skipped"), [],
                          dry_run=False).outcome == "resolved"


def test_change_then_failure_is_partially_resolved_with_the_failing_step_named() -> None:
    verdict = decide_outcome(run("changed", "failed"), [], dry_run=False)
    assert verdict.outcome == "partially_resolved"
    assert verdict.reason == "step 'Step 1' failed: why"


def test_failure_without_change_is_unresolved() -> None:
    assert decide_outcome(run("ok", "failed"), [], dry_run=False).outcome == "unresolved"
    assert decide_outcome(run("rolled_back"), [], dry_run=False).outcome == "unresolved"


def test_critical_hardware_fault_makes_diagnostics_partially_resolved() -> None:
    verdict = decide_outcome(run("ok", "ok"), [DISK, WARN], dry_run=False)
    assert verdict.outcome == "partially_resolved"
    assert verdict.reason == "Hardware fault found and escalated: disk sda."
    assert decide_outcome(run("ok"), [WARN], dry_run=False).outcome == "resolved"


def test_dry_run_with_planned_changes_is_unresolved_and_says_so() -> None:
    verdict = decide_outcome(run("ok", "planned", "planned"), [], dry_run=True)
    assert verdict.outcome == "unresolved"
    assert verdict.reason == "Dry run: 2 change(s) planned, none made."


def test_after_care_follows_the_procedure() -> None:
    advice = recommendations(credentials_shared=True, new_credentials=True, hardware=True,
                             dry_run=False, findings=["Filesystem / uses 95% of its space."])
    assert advice[0] == VERIFY_ACCESS
    assert advice[-1] == REVIEW
    assert {NEW_CREDENTIALS, CHANGE_SHARED, HARDWARE} <= set(advice)
    assert "Filesystem / uses 95% of its space." in advice
