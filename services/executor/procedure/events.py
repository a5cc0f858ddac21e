"""The events of the procedure: what the interpreter observed, as plain values.

Each is the result of one command (:mod:`services.executor.procedure.commands`);
:func:`services.executor.procedure.transition.transition` turns it into the next stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from schemas.events import AuthorizationVerified
from services.executor.access import AccessDecision, Probe
from services.executor.runbooks.results import Handover, RunResult


@dataclass(frozen=True, kw_only=True)
class Acquired:
    """The claim as stored when this run acquired it (its journal stays in the store)."""

    claim_id: str
    revision: int
    attempt: int
    failed_attempts: int
    completion_staged: bool = False
    parked: Mapping[str, Any] | None = None  # the hand-over record of a parked claim
    decision: AccessDecision | None = None
    review_passed: bool = False
    steps_journalled: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerdictChecked:
    verdict: AuthorizationVerified
    # Why the verdict may no longer lead to an action on a server (its age limit, checked
    # on every run as at first acceptance); None while it may.
    stale: str | None = None


@dataclass(frozen=True)
class ClaimTampered:
    """The claim as stored was not written by the executor, or does not follow from its
    verdict (:mod:`services.executor.claim_integrity`): what does not hold."""

    findings: tuple[str, ...]


@dataclass(frozen=True)
class VerdictRefused:
    reason: str


@dataclass(frozen=True)
class CredentialsOpened:
    """The credentials are open in the interpreter's memory (never in the state)."""


@dataclass(frozen=True)
class CredentialsRefused:
    reason: str


@dataclass(frozen=True, kw_only=True)
class ProbeFinished:
    probe: Probe
    session: bool  # the probe's SSH session stays open for the runbook


@dataclass(frozen=True)
class DecisionRecorded:
    decision: AccessDecision  # the stored one: a resumed run keeps the first


@dataclass(frozen=True)
class Announced:
    """InterventionStarted is staged and published."""


@dataclass(frozen=True)
class Connected:
    pass


@dataclass(frozen=True)
class ConnectFailed:
    reason: str


@dataclass(frozen=True)
class RunFinished:
    run: RunResult


@dataclass(frozen=True, kw_only=True)
class RunHandedOver:
    run: RunResult
    handover: Handover


@dataclass(frozen=True)
class EngineerAsked:
    record: Mapping[str, Any]  # the parking record (what was asked, its deadline)


@dataclass(frozen=True)
class StillWaiting:
    """Re-opened before the step has a result (a stray offer): park again."""


@dataclass(frozen=True, kw_only=True)
class EngineerReported:
    status: Literal["done", "failed"]
    report: Mapping[str, Any]
    before: RunResult  # what the automation did before handing over (from the journal)
    elapsed_ms: int


@dataclass(frozen=True, kw_only=True)
class DeadlinePassed:
    deadline: str  # ISO text, "?" when the wait record is gone
    before: RunResult
    elapsed_ms: int


@dataclass(frozen=True)
class Published:
    """Everything staged in the claim's outbox is published."""


@dataclass(frozen=True)
class LeaseLost:
    """Another executor took the claim over; this one must not act again."""


Event = (Acquired | VerdictChecked | VerdictRefused | ClaimTampered | CredentialsOpened
         | CredentialsRefused
         | ProbeFinished | DecisionRecorded | Announced | Connected | ConnectFailed
         | RunFinished | RunHandedOver | EngineerAsked | StillWaiting | EngineerReported
         | DeadlinePassed | Published | LeaseLost)


