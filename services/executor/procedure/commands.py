"""What the procedure asks the interpreter to do: plain values, one class per command.

Each command names its idempotency key (``key``): the record, outbox entry, journal or wait
that makes doing it twice — after a crash, by a resumed run — the same as doing it once.
The interpreter (:mod:`services.executor.intervention`) is the only code that carries them
out, so crash safety is written there once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.events import AccessMethod, Outcome
from services.executor.access import AccessDecision
from services.executor.hardware import Escalation
from services.executor.runbooks.results import Handover, RunResult


@dataclass(frozen=True)
class CheckVerdict:
    """Parse and verify the stored verdict. Reads only."""

    key: str = "read-only"


@dataclass(frozen=True, kw_only=True)
class Audit:
    """Append one audit record; the audit log keeps the first record under ``record_id``."""

    record_id: str
    kind: str
    data: Mapping[str, Any]

    @property
    def key(self) -> str:
        return self.record_id


@dataclass(frozen=True, kw_only=True)
class CloseClaim:
    """Finish or refuse the claim (fenced by the lease; closing twice changes nothing).
    ``outcome`` None: the staged InterventionCompleted's."""

    status: Literal["finished", "refused"]
    outcome: str | None = None

    @property
    def key(self) -> str:
        return f"status:{self.status}"


@dataclass(frozen=True)
class OpenCredentials:
    """Open the customer's sealed credentials into the interpreter's memory for this run."""

    key: str = "in-memory"


@dataclass(frozen=True)
class ProbeSsh:
    """Connect to the server; the host key and the outcome are audited per attempt."""

    key: str = "hostkey:<claim>:<attempt>"


@dataclass(frozen=True, kw_only=True)
class RecordDecision:
    """Store the access decision unless one is stored (then that one is returned)."""

    decision: AccessDecision
    key: str = "decision"


@dataclass(frozen=True, kw_only=True)
class Announce:
    """Stage InterventionStarted under ``key`` in the outbox and publish the outbox."""

    key: str
    decision: AccessDecision
    dry_run: bool


@dataclass(frozen=True, kw_only=True)
class StageClarification:
    question: str
    key: str = "b_clarification"


@dataclass(frozen=True, kw_only=True)
class StageEscalation:
    n: int
    escalation: Escalation

    @property
    def key(self) -> str:
        return f"c_escalation_{self.n:02d}"


@dataclass(frozen=True, kw_only=True)
class StageCompletion:
    """Stage the revision's one InterventionCompleted (the first staged is kept)."""

    outcome: Outcome
    reason: str | None
    access_method: AccessMethod | None
    run: RunResult | None
    advice: tuple[str, ...]
    dry_run: bool
    key: str = "z_completed"


@dataclass(frozen=True)
class PublishOutbox:
    """Publish every staged event not yet marked published, in key order."""

    key: str = "outbox"


@dataclass(frozen=True)
class ConnectSsh:
    """Reconnect for a resumed run (the probe's session is gone)."""

    key: str = "hostkey:<claim>:<attempt>"


@dataclass(frozen=True, kw_only=True)
class RunRunbook:
    """Run the runbook over SSH through the engine; the step journal skips finished steps."""

    runbook: str
    dry_run: bool
    key: str = "steps"


@dataclass(frozen=True, kw_only=True)
class RunRescue:
    """Boot into rescue, repair, boot back, verify; each phase journalled in ``rescue``."""

    runbook: str
    key: str = "rescue"


@dataclass(frozen=True, kw_only=True)
class PlanRescue:
    """A dry run of a rescue repair: list the steps, touch nothing."""

    runbook: str
    key: str = "none"


@dataclass(frozen=True, kw_only=True)
class HandToEngineer:
    """Stage ManualStepRequested, open the wait, audit and publish."""

    kind: str
    decision: AccessDecision
    handover: Handover
    step_id: str
    key: str  # the outbox key; the wait is ``<claim>:<step_id>``
    steps_done: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Park:
    """Park the claim (``handed_over``) with ``record`` until a report or the deadline."""

    record: Mapping[str, Any] = field(default_factory=dict)
    key: str = "status:handed_over"


@dataclass(frozen=True, kw_only=True)
class CheckWait:
    """Look at the parked step: time it out when overdue, else report what it is."""

    record: Mapping[str, Any]
    key: str = "wait"


@dataclass(frozen=True)
class PassReview:
    """The engineer approved: the claim forgets its decision and hand-over."""

    key: str = "review_passed"


@dataclass(frozen=True, kw_only=True)
class ConsumeWait:
    """The step's result is used: drop its marker from the sweep."""

    wait_id: str

    @property
    def key(self) -> str:
        return self.wait_id


Command = (CheckVerdict | Audit | CloseClaim | OpenCredentials | ProbeSsh | RecordDecision
           | Announce | StageClarification | StageEscalation | StageCompletion | PublishOutbox
           | ConnectSsh | RunRunbook | RunRescue | PlanRescue | HandToEngineer | Park
           | CheckWait | PassReview | ConsumeWait)
