"""Every edge of step k (pre-check → change → verify), decided by plain values.

One case per edge of :data:`services.executor.procedure.step.STEP_EDGES`; the engine's own
tests (test_engine.py) and the runbook integration tests run the same decisions on hosts.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.executor.procedure import step as steps
from services.executor.procedure.step import STEP_EDGES, StepEdge


def _never() -> bool:
    raise AssertionError("not asked: the decision is made before it")


def yes() -> bool:
    return True


def no() -> bool:
    return False


def precheck(**kw: object) -> StepEdge:
    args: dict[str, object] = {"failed": False, "refused": False, "has_change": True,
                               "journalled": None, "redo_credential": False, "needed": yes}
    args.update(kw)
    return steps.after_precheck(**args)  # type: ignore[arg-type]


CASES: dict[str, Callable[[], StepEdge]] = {
    "entry/journalled done (replayed)": lambda: steps.on_entry(
        journalled="done", rerunnable=_never, missing=_never),
    "entry/interrupted while changing, not safe to repeat": lambda: steps.on_entry(
        journalled="changing", rerunnable=no, missing=_never),
    "entry/requirement missing on this server": lambda: steps.on_entry(
        journalled=None, rerunnable=_never, missing=yes),
    "entry/run or re-check": lambda: steps.on_entry(
        journalled="changing", rerunnable=yes, missing=no),
    "precheck/pre-check failed": lambda: precheck(failed=True, refused=True),
    "precheck/the step refuses": lambda: precheck(refused=True),
    "precheck/check-only step": lambda: precheck(has_change=False, needed=_never),
    "precheck/journalled changed": lambda: precheck(journalled="changed", needed=_never),
    "precheck/interrupted change had applied": lambda: precheck(journalled="changing",
                                                                needed=no),
    "precheck/no change needed": lambda: precheck(needed=no),
    "precheck/change needed": lambda: precheck(journalled="changed", redo_credential=True,
                                               needed=_never),
    "simulate/simulation failed": lambda: steps.after_simulate(
        failed=True, dry_run=True, issues_credential=True),
    "simulate/dry run": lambda: steps.after_simulate(
        failed=False, dry_run=True, issues_credential=True),
    "simulate/issues a credential": lambda: steps.after_simulate(
        failed=False, dry_run=False, issues_credential=True),
    "simulate/no credential to issue": lambda: steps.after_simulate(failed=False, dry_run=False,
                                              issues_credential=False),
    "credential/no credential vault": lambda: steps.after_credential(deposited=False),
    "credential/deposited": lambda: steps.after_credential(deposited=True),
    "change/change failed": lambda: steps.after_change(failed=True),
    "change/journalled changed": lambda: steps.after_change(failed=False),
    "verify/verified": lambda: steps.after_verify(verified=True, issues_credential=True),
    "verify/credential unverified, kept": lambda: steps.after_verify(
        verified=False, issues_credential=True),
    "verify/verification failed": lambda: steps.after_verify(verified=False,
                                                             issues_credential=False),
    "rollback/no rollback": lambda: steps.after_rollback(has_rollback=False, failed=True),
    "rollback/rollback failed": lambda: steps.after_rollback(has_rollback=True, failed=True),
    "rollback/rolled back": lambda: steps.after_rollback(has_rollback=True, failed=False),
}


def edge_id(edge: StepEdge) -> str:
    return f"{edge.source}/{edge.guard}"


def test_every_step_edge_has_a_case_and_every_case_an_edge() -> None:
    assert {edge_id(e) for e in STEP_EDGES} == set(CASES)


@pytest.mark.parametrize("edge", STEP_EDGES, ids=edge_id)
def test_step_edge(edge: StepEdge) -> None:
    assert CASES[edge_id(edge)]() is edge


def test_a_step_never_repeats_a_change_it_cannot_prove_safe_to_repeat() -> None:
    assert steps.on_entry(journalled="changing", rerunnable=no, missing=no).target == \
        "handed_over"
    # ...but a re-runnable one re-checks, and an applied change is only verified.
    assert steps.on_entry(journalled="changing", rerunnable=yes, missing=no).target == \
        "precheck"
    assert precheck(journalled="changing", needed=no).target == "verify"
    assert precheck(journalled="changing", needed=yes).target == "simulate"
