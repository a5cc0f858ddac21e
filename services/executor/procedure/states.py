"""The stages of an intervention, the state a run carries, and the table of every edge.

:data:`EDGES` is the procedure's map: :func:`~services.executor.procedure.transition.
transition` can take no edge that is not declared here, the unit tests drive each one, and
:func:`mermaid` renders the table as the state diagram in ``docs/architecture.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.events import AuthorizationVerified
from services.executor.access import AccessDecision
from services.executor.procedure import events as ev
from services.executor.procedure.step import STEP_EDGES

Stage = Literal[
    "claimed", "verified", "probing", "deciding", "access_decided", "connecting", "running",
    "rescue", "handing_over", "waiting_for_engineer", "completing",
    # terminal: the run ends here
    "closed", "refused", "stopped",
]
TERMINAL: frozenset[Stage] = frozenset({"closed", "refused", "stopped"})
STAGES: tuple[Stage, ...] = (
    "claimed", "verified", "probing", "deciding", "access_decided", "connecting", "running",
    "rescue", "handing_over", "waiting_for_engineer", "completing", "closed", "refused",
    "stopped")


# --- state -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Config:
    max_attempts: int
    dry_run: bool
    rescue_configured: bool


@dataclass(frozen=True, kw_only=True)
class State:
    stage: Stage
    config: Config
    claim: ev.Acquired | None = None
    verdict: AuthorizationVerified | None = None
    decision: AccessDecision | None = None
    stale: str | None = None  # the verdict is past its age limit: no new action on a server
    session: bool = False
    via: Edge | None = field(default=None, compare=False)  # the edge that led here

    @classmethod
    def start(cls, config: Config) -> State:
        return cls(stage="claimed", config=config)


# --- the table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    source: Stage
    event: type[Any]
    target: Stage
    guard: str = ""

    @property
    def label(self) -> str:
        return f"{self.event.__name__} [{self.guard}]" if self.guard else self.event.__name__


def _edges(*rows: tuple[Stage, type[Any], Stage, str]) -> dict[str, Edge]:
    return {f"{s}/{e.__name__}/{g}": Edge(s, e, t, g) for s, e, t, g in rows}


_TABLE = _edges(
    ("claimed", ev.Acquired, "claimed", ""),
    ("claimed", ev.VerdictRefused, "refused", "stored verdict does not verify"),
    ("claimed", ev.ClaimTampered, "refused", "claim record not signed or not the verdict's"),
    ("claimed", ev.VerdictChecked, "refused", "verdict too old to act on"),
    ("claimed", ev.VerdictChecked, "completing", "completion already staged"),
    ("claimed", ev.VerdictChecked, "waiting_for_engineer", "parked on an engineer's step"),
    ("claimed", ev.VerdictChecked, "handing_over", "interrupted too often"),
    ("claimed", ev.VerdictChecked, "verified", ""),
    ("verified", ev.CredentialsRefused, "completing", "credentials refused"),
    ("verified", ev.CredentialsOpened, "deciding", "decision already stored"),
    ("verified", ev.CredentialsOpened, "deciding", "review required"),
    ("verified", ev.CredentialsOpened, "probing", "live system"),
    ("verified", ev.CredentialsOpened, "deciding", "offline repair"),
    ("probing", ev.ProbeFinished, "deciding", "logged in"),
    ("probing", ev.ProbeFinished, "deciding", "host key refused"),
    ("probing", ev.ProbeFinished, "deciding", "credentials refused"),
    ("probing", ev.ProbeFinished, "deciding", "unreachable"),
    ("deciding", ev.DecisionRecorded, "completing", "refuse"),
    ("deciding", ev.DecisionRecorded, "completing", "ask the customer"),
    ("deciding", ev.DecisionRecorded, "access_decided", "run or hand over"),
    ("access_decided", ev.Announced, "handing_over", "engineer's work"),
    ("access_decided", ev.Announced, "completing", "rescue not configured"),
    ("access_decided", ev.Announced, "rescue", "rescue"),
    ("access_decided", ev.Announced, "rescue", "rescue, dry run"),
    ("access_decided", ev.Announced, "running", "ssh, probe session open"),
    ("access_decided", ev.Announced, "connecting", "ssh, resumed"),
    ("connecting", ev.Connected, "running", ""),
    ("connecting", ev.ConnectFailed, "handing_over", "host key or login refused, unreachable"),
    ("running", ev.RunFinished, "completing", "hardware found"),
    ("running", ev.RunFinished, "completing", ""),
    ("running", ev.RunHandedOver, "handing_over", "step not safe to repeat"),
    ("rescue", ev.RunFinished, "completing", "hardware found"),
    ("rescue", ev.RunFinished, "completing", ""),
    ("rescue", ev.RunHandedOver, "handing_over", "left in the rescue system"),
    ("handing_over", ev.EngineerAsked, "waiting_for_engineer", ""),
    ("waiting_for_engineer", ev.StillWaiting, "waiting_for_engineer", ""),
    ("waiting_for_engineer", ev.EngineerReported, "verified", "review approved"),
    ("waiting_for_engineer", ev.EngineerReported, "refused",
     "review approved, verdict too old to act on"),
    ("waiting_for_engineer", ev.ClaimTampered, "refused", "step decision not signed"),
    ("waiting_for_engineer", ev.EngineerReported, "completing", "done"),
    ("waiting_for_engineer", ev.EngineerReported, "completing", "failed"),
    ("waiting_for_engineer", ev.DeadlinePassed, "completing", "deadline passed"),
    ("completing", ev.Published, "closed", ""),
    *((stage, ev.LeaseLost, "stopped", "lease lost") for stage in STAGES if stage != "stopped"),
)
EDGES: tuple[Edge, ...] = tuple(_TABLE.values())


def edge(source: Stage, event: type[Any], guard: str = "") -> Edge:
    """The declared edge; KeyError for one the table does not have."""
    return _TABLE[f"{source}/{event.__name__}/{guard}"]


# --- the diagram -------------------------------------------------------------------------

def mermaid() -> str:
    """The state diagram of :data:`EDGES` (Mermaid ``stateDiagram-v2``), as the docs show it.

    Lease-lost edges leave every stage; they are drawn once, as a note, to keep the diagram
    readable.
    """
    lines = ["stateDiagram-v2", "    [*] --> claimed"]
    for edge in EDGES:
        if edge.event is ev.LeaseLost or edge.event is ev.Acquired:
            continue
        lines.append(f"    {edge.source} --> {edge.target}: {edge.label}")
    lines.extend(f"    {stage} --> [*]" for stage in STAGES if stage in TERMINAL)
    lines.append("    waiting_for_engineer --> [*]: parked (report or deadline re-opens)")
    lines.append("    note right of stopped: LeaseLost [lease lost] from every stage")
    # Step k, run for each runbook step in running and rescue (services.executor.procedure.
    # step): its own table, drawn as a composite state.
    lines.append('    state "step k (each runbook step in running and rescue)" as step_k {')
    lines.append("        [*] --> step_entry")
    for step_edge in STEP_EDGES:
        label = f": {step_edge.label}" if step_edge.label else ""
        lines.append(f"        step_{step_edge.source} --> step_{step_edge.target}{label}")
    lines.append("        step_done --> [*]")
    lines.append("        step_handed_over --> [*]")
    lines.append("    }")
    return "\n".join(lines) + "\n"

