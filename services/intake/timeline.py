"""``GET /v1/tickets/{ticket_id}``: a ticket's status and timeline, read from the audit log.

Pure: audit records in, a :class:`TicketStatus` out. What is shown is *chosen*, field by
field, per event type (an allow-list), never "everything but the secrets": credentials
appear only as ``"sealed"``, no ciphertext, signature, description, authorization text or
command output is shown, so the answer stays safe whoever asks and whatever later event
types carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from services.runtime.audit import AuditRecord

# Event type -> the fields of it the timeline shows.
SHOWN: Final[Mapping[str, tuple[str, ...]]] = {
    "TicketSubmitted": ("category", "category_source", "confidence", "form_category", "scope"),
    "TicketRejected": ("errors",),
    "AuthorizationVerified": ("review_required", "review_reason"),
    "AuthorizationRejected": ("reasons",),
    "ClarificationRequested": ("question", "field"),
    "InterventionQueued": ("position", "expected_start_at"),
    "InterventionStarted": ("access_method", "runbook", "mode", "timeline", "dry_run"),
    "ManualStepRequested": ("step_id", "method", "deadline"),
    "ManualStepCompleted": ("step_id", "status", "channel"),
    "InterventionCompleted": ("outcome", "access_method", "new_credentials_issued", "dry_run"),
    "HardwareEscalated": ("component", "severity"),
    "EngineerAcknowledged": ("channel",),
    "TicketUpdated": ("kind", "language"),
    "SlaWarning": ("clock", "deadline", "elapsed_seconds"),
    "SlaBreached": ("clock", "deadline"),
}
# Non-event records (intake's own, and other services' action records).
SHOWN_RECORDS: Final[Mapping[str, tuple[str, ...]]] = {
    "intake.refused": ("revision", "reason"),
}

# Event type -> the ticket status it leaves; types not listed do not change the status.
STATUS: Final[Mapping[str, str]] = {
    "TicketSubmitted": "submitted",
    "TicketRejected": "rejected",
    "AuthorizationVerified": "authorized",
    "AuthorizationRejected": "authorization_rejected",
    "ClarificationRequested": "awaiting_customer",
    "InterventionStarted": "in_progress",
    "ManualStepRequested": "waiting_for_engineer",
    "ManualStepCompleted": "in_progress",
    "InterventionCompleted": "completed",
    "HardwareEscalated": "hardware_escalated",
}


class TimelineEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int
    at: datetime
    actor: str
    kind: str = Field(description='"event" for a published event, else the record kind.')
    event_type: str | None = None
    revision: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class TicketStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    ticket_id: str
    status: str = Field(description="submitted, rejected, authorized, in_progress, ...")
    revision: int | None = Field(description="The latest revision the timeline mentions.")
    category: str | None = None
    scope: str | None = None
    outcome: str | None = Field(default=None, description="Set once completed.")
    credentials: str | None = Field(
        default=None, description='"sealed" once a revision was submitted; never more.'
    )
    timeline: list[TimelineEntry]


def _pick(data: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    return {name: data[name] for name in names if data.get(name) is not None}


def ticket_status(ticket_id: str, records: Iterable[AuditRecord]) -> TicketStatus | None:
    """The ticket's status and timeline; None when the audit log knows no such ticket."""
    entries: list[TimelineEntry] = []
    status = "received"
    revision: int | None = None
    category = scope = outcome = credentials = None
    # The records come as one timeline (the ticket's chains merged by time); an entry's
    # seq is its place in it, since each service's chain counts its own seq.
    for position, record in enumerate(records, start=1):
        data = record.data
        if record.kind == "event" and isinstance(data.get("event"), Mapping):
            event = data["event"]
            event_type = str(data.get("event_type") or event.get("event_type") or "")
            event_revision = event.get("revision")
            details = _pick(event, SHOWN.get(event_type, ()))
            if event_type == "TicketSubmitted":
                details["credentials"] = "sealed"
                category, scope, credentials = event.get("category"), event.get("scope"), "sealed"
            if event_type == "InterventionCompleted":
                outcome = event.get("outcome")
            status = STATUS.get(event_type, status)
        else:
            event_type = None
            event_revision = data.get("revision")
            details = _pick(data, SHOWN_RECORDS.get(record.kind, ()))
        if isinstance(event_revision, int) and not isinstance(event_revision, bool):
            revision = max(revision or 0, event_revision)
        else:
            event_revision = None
        entries.append(TimelineEntry(
            seq=position, at=record.at, actor=record.actor, kind=record.kind,
            event_type=event_type, revision=event_revision, details=details,
        ))
    if not entries:
        return None
    return TicketStatus(
        ticket_id=ticket_id, status=status, revision=revision, category=category, scope=scope,
        outcome=outcome if status == "completed" else None, credentials=credentials,
        timeline=entries,
    )
