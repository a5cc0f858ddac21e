"""Step k of a runbook: pre-check → change → verify, as a table of edges and pure decisions.

The engine (:mod:`services.executor.runbooks.engine`) runs the operations, journals and
audits; every choice of what comes next is one of the functions below, and each returns
an edge declared in :data:`STEP_EDGES` — so the step's branching reads here, top to bottom,
and its unit tests need no host. The journal makes a step resumable: ``done`` is replayed,
``changed`` is only verified again, ``changing`` (the change may or may not have happened)
re-runs the pre-check when the step is declared safe to repeat and goes to an engineer
otherwise; the engine never repeats a change it cannot prove safe to repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from services.executor.runbooks.model import StepResult
from services.executor.runbooks.results import JournalState

StepPhase = Literal["entry", "precheck", "simulate", "credential", "change", "verify",
                    "rollback", "done", "handed_over"]


@dataclass(frozen=True)
class StepEdge:
    source: StepPhase
    target: StepPhase
    guard: str
    result: StepResult | None = None  # the step's result, for edges that end it ("done")

    @property
    def label(self) -> str:
        result = f" ({self.result})" if self.result else ""
        return f"{self.guard}{result}".strip()


def _edges(*rows: tuple[StepPhase, StepPhase, str, StepResult | None]) -> dict[str, StepEdge]:
    return {f"{s}/{g}": StepEdge(s, t, g, r) for s, t, g, r in rows}


_STEP = _edges(
    ("entry", "done", "journalled done (replayed)", None),
    ("entry", "handed_over", "interrupted while changing, not safe to repeat", None),
    ("entry", "done", "requirement missing on this server", "skipped"),
    ("entry", "precheck", "run or re-check", None),
    ("precheck", "done", "pre-check failed", "failed"),
    ("precheck", "done", "the step refuses", "failed"),
    ("precheck", "done", "check-only step", "ok"),
    ("precheck", "verify", "journalled changed", None),
    ("precheck", "verify", "interrupted change had applied", None),
    ("precheck", "done", "no change needed", "no_change_needed"),
    ("precheck", "simulate", "change needed", None),
    ("simulate", "done", "simulation failed", "failed"),
    ("simulate", "done", "dry run", "planned"),
    ("simulate", "credential", "issues a credential", None),
    ("simulate", "change", "no credential to issue", None),
    ("credential", "done", "no credential vault", "failed"),
    ("credential", "change", "deposited", None),
    ("change", "rollback", "change failed", None),
    ("change", "verify", "journalled changed", None),
    ("verify", "done", "verified", "changed"),
    ("verify", "done", "credential unverified, kept", "failed"),
    ("verify", "rollback", "verification failed", None),
    ("rollback", "done", "no rollback", "failed"),
    ("rollback", "done", "rollback failed", "failed"),
    ("rollback", "done", "rolled back", "rolled_back"),
)
STEP_EDGES: tuple[StepEdge, ...] = tuple(_STEP.values())


def _edge(source: StepPhase, guard: str) -> StepEdge:
    return _STEP[f"{source}/{guard}"]


def on_entry(*, journalled: JournalState | None, rerunnable: Callable[[], bool],
             missing: Callable[[], bool]) -> StepEdge:
    """Where step k starts: from its journal entry, if a previous attempt left one."""
    if journalled == "done":
        return _edge("entry", "journalled done (replayed)")
    if journalled == "changing" and not rerunnable():
        return _edge("entry", "interrupted while changing, not safe to repeat")
    if missing():
        return _edge("entry", "requirement missing on this server")
    return _edge("entry", "run or re-check")


def after_precheck(*, failed: bool, refused: bool, has_change: bool,
                   journalled: JournalState | None, redo_credential: bool,
                   needed: Callable[[], bool]) -> StepEdge:
    """The pre-check always runs, also when resuming, because it decides."""
    if failed:
        return _edge("precheck", "pre-check failed")
    if refused:
        return _edge("precheck", "the step refuses")
    if not has_change:
        return _edge("precheck", "check-only step")
    if journalled == "changed" and not redo_credential:
        return _edge("precheck", "journalled changed")
    if not redo_credential and not needed():
        if journalled == "changing":
            return _edge("precheck", "interrupted change had applied")
        return _edge("precheck", "no change needed")
    return _edge("precheck", "change needed")


def after_simulate(*, failed: bool, dry_run: bool, issues_credential: bool) -> StepEdge:
    if failed:
        return _edge("simulate", "simulation failed")
    if dry_run:
        return _edge("simulate", "dry run")
    if issues_credential:
        return _edge("simulate", "issues a credential")
    return _edge("simulate", "no credential to issue")


def after_credential(*, deposited: bool) -> StepEdge:
    return _edge("credential", "deposited" if deposited else "no credential vault")


def after_change(*, failed: bool) -> StepEdge:
    """A change is journalled ``changing`` before it runs and ``changed`` after it worked."""
    return _edge("change", "change failed" if failed else "journalled changed")


def after_verify(*, verified: bool, issues_credential: bool) -> StepEdge:
    if verified:
        return _edge("verify", "verified")
    if issues_credential:
        # A password cannot be rolled back (the old one is unknown); the deposit stays
        # active because the server has the new one.
        return _edge("verify", "credential unverified, kept")
    return _edge("verify", "verification failed")


def after_rollback(*, has_rollback: bool, failed: bool) -> StepEdge:
    if not has_rollback:
        return _edge("rollback", "no rollback")
    return _edge("rollback", "rollback failed" if failed else "rolled back")
