"""What a customer message may say: one small value type per update kind.

The contexts are an allow-list. :mod:`services.notifier.updates` copies into them only the
fields of an event meant for the customer; everything else an event carries — the
engineer-facing ``details`` of a refusal, hardware ``evidence``, manual-step
``instructions``, the runbook and the reasons behind an access method, the ticket's own
description and written authorization, and above all credentials (only ever sealed) — has
no field here to land in, so a template cannot leak it even by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.events import AccessMethod, AuthorizationRejectionReason, Outcome, TicketUpdateKind
from schemas.scope import Category
from services.notifier.sla import Timeline

ActionResult = str  # one of Action.result's literals; templates fall back to the raw value


@dataclass(frozen=True, kw_only=True)
class Acknowledgement:
    ticket_id: str
    revision: int
    category: Category
    initial_response_minutes: int


@dataclass(frozen=True, kw_only=True)
class FieldProblem:
    field: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """A request intake refused (``problems``) or auth refused (``reasons``)."""

    ticket_id: str
    problems: tuple[FieldProblem, ...] = ()
    reasons: tuple[AuthorizationRejectionReason, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Clarification:
    ticket_id: str
    question: str
    field: str | None = None


@dataclass(frozen=True, kw_only=True)
class ScopeNotIncluded:
    ticket_id: str
    category: Category


@dataclass(frozen=True, kw_only=True)
class Started:
    ticket_id: str
    method: AccessMethod
    automated: bool
    timeline: Timeline
    dry_run: bool = False


@dataclass(frozen=True, kw_only=True)
class Queued:
    """Verified and accepted, waiting for a free executor: the initial response under load.
    ``position`` is the place in line (1: next), ``minutes`` the rough wait from now."""

    ticket_id: str
    position: int
    minutes: int
    expected_start: datetime


@dataclass(frozen=True, kw_only=True)
class Extension:
    """The timeline grew: a longer timeline applies (``timeline``) or the promised one has
    passed (``overdue``)."""

    ticket_id: str
    timeline: Timeline | None = None
    overdue: bool = False


@dataclass(frozen=True, kw_only=True)
class ActionLine:
    step: str
    command: str
    result: ActionResult


@dataclass(frozen=True, kw_only=True)
class BackupLine:
    location: str
    description: str


@dataclass(frozen=True, kw_only=True)
class Completion:
    ticket_id: str
    outcome: Outcome
    actions: tuple[ActionLine, ...] = ()
    backups: tuple[BackupLine, ...] = ()
    new_credentials_issued: bool = False
    recommendations: tuple[str, ...] = ()
    reason: str | None = None
    dry_run: bool = False


@dataclass(frozen=True, kw_only=True)
class HardwareNotice:
    ticket_id: str
    component: str
    device: str | None
    severity: str


@dataclass(frozen=True, kw_only=True)
class EngineerStep:
    """An engineer does a step by hand (console, rescue, data centre)."""

    ticket_id: str
    method: AccessMethod
    deadline: datetime | None = None


UpdateContext = (
    Acknowledgement
    | Rejection
    | Clarification
    | ScopeNotIncluded
    | Started
    | Queued
    | Extension
    | Completion
    | HardwareNotice
    | EngineerStep
)

KIND_OF: dict[type[UpdateContext], TicketUpdateKind] = {
    Acknowledgement: "acknowledgement",
    Rejection: "rejection",
    Clarification: "clarification",
    ScopeNotIncluded: "scope_not_included",
    Started: "intervention_started",
    Queued: "queued",
    Extension: "extension",
    Completion: "completion",
    HardwareNotice: "hardware_escalation",
    EngineerStep: "other",
}


def kind_of(context: UpdateContext) -> TicketUpdateKind:
    return KIND_OF[type(context)]
