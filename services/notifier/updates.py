"""Which customer updates an event calls for, and what they say (pure).

One function per question: :func:`contexts_for` picks the allow-listed facts of an event the
customer should see (nothing else is copied), :func:`customer_updates` renders them in the
ticket's language. The caller turns each :class:`CustomerUpdate` into a TicketUpdated whose
id derives from the causing event and ``key``, so a redelivered event re-publishes the same
ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from schemas.envelope import EventEnvelope
from schemas.events import (
    AuthorizationRejected,
    ClarificationRequested,
    Event,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
    ManualStepRequested,
    TicketRejected,
    TicketSubmitted,
    TicketUpdated,
    TicketUpdateKind,
)
from schemas.request import Language
from services.notifier.sla import Fact, Timeline
from services.notifier.templates import render
from services.notifier.templates.context import (
    Acknowledgement,
    ActionLine,
    BackupLine,
    Clarification,
    Completion,
    EngineerStep,
    Extension,
    FieldProblem,
    HardwareNotice,
    Queued,
    Rejection,
    ScopeNotIncluded,
    Started,
    UpdateContext,
    kind_of,
)

DEFAULT_LANGUAGE: Language = "en"


@dataclass(frozen=True, kw_only=True)
class CustomerUpdate:
    key: str  # unique among the updates of one causing event: part of the derived event id
    kind: TicketUpdateKind
    language: Language
    message: str


def language_of(event: Event) -> Language | None:
    """The language an event states itself (only the customer's own requests do)."""
    if isinstance(event, TicketSubmitted | TicketRejected):
        return event.language
    return None


def contexts_for(
    event: Event, *, extended_to: Timeline | None = None, initial_response_minutes: int = 10
) -> list[UpdateContext]:
    """What the customer should hear about ``event`` (nothing, for internal events)."""
    ticket = event.ticket_id
    contexts: list[UpdateContext] = []
    match event:
        case TicketSubmitted() if event.scope == "not_included":
            contexts.append(ScopeNotIncluded(ticket_id=ticket, category=event.category))
        case TicketSubmitted():
            contexts.append(Acknowledgement(
                ticket_id=ticket, revision=event.revision, category=event.category,
                initial_response_minutes=initial_response_minutes))
        case TicketRejected():
            contexts.append(Rejection(ticket_id=ticket, problems=tuple(
                FieldProblem(field=e.field, message=e.message) for e in event.errors)))
        case AuthorizationRejected():
            # The paid-only scope was already explained when the ticket arrived.
            reasons = tuple(r for r in event.reasons if r != "scope_not_included")
            if reasons:
                contexts.append(Rejection(ticket_id=ticket, reasons=reasons))
        case ClarificationRequested():
            contexts.append(Clarification(ticket_id=ticket, question=event.question,
                                          field=event.field))
        case InterventionStarted():
            contexts.append(Started(ticket_id=ticket, method=event.access_method,
                                    automated=event.mode == "automated",
                                    timeline=event.timeline, dry_run=event.dry_run))
        case ManualStepRequested():
            contexts.append(EngineerStep(ticket_id=ticket, method=event.method,
                                         deadline=event.deadline))
        case InterventionCompleted():
            contexts.append(Completion(
                ticket_id=ticket, outcome=event.outcome,
                actions=tuple(ActionLine(step=a.step, command=a.command, result=a.result)
                              for a in event.actions),
                backups=tuple(BackupLine(location=b.location, description=b.description)
                              for b in event.backups),
                new_credentials_issued=event.new_credentials_issued,
                recommendations=tuple(event.recommendations), reason=event.reason,
                dry_run=event.dry_run))
        case HardwareEscalated():
            contexts.append(HardwareNotice(ticket_id=ticket, component=event.component,
                                           device=event.device, severity=event.severity))
    if extended_to is not None:
        contexts.append(Extension(ticket_id=ticket, timeline=extended_to))
    return contexts


def customer_updates(
    event: Event,
    *,
    language: Language | None = None,
    extended_to: Timeline | None = None,
    initial_response_minutes: int = 10,
) -> list[CustomerUpdate]:
    """The rendered updates for ``event``, in the event's own language, else ``language``."""
    chosen = language_of(event) or language or DEFAULT_LANGUAGE
    return [
        CustomerUpdate(key=kind_of(c), kind=kind_of(c), language=chosen,
                       message=render(c, chosen))
        for c in contexts_for(event, extended_to=extended_to,
                              initial_response_minutes=initial_response_minutes)
    ]


def overdue_update(ticket_id: str, language: Language | None) -> CustomerUpdate:
    """The customer's notice that the intervention has passed its expected timeline."""
    chosen = language or DEFAULT_LANGUAGE
    context = Extension(ticket_id=ticket_id, overdue=True)
    return CustomerUpdate(key="overdue", kind="extension", language=chosen,
                          message=render(context, chosen))


def queued_update(ticket_id: str, language: Language | None, queued: Fact, now: datetime
                  ) -> CustomerUpdate:
    """The customer's notice that the verified intervention waits for a free executor, with
    its place in line and roughly when it starts (the executor's estimate, from ``now``)."""
    chosen = language or DEFAULT_LANGUAGE
    expected = queued.expected_start or now
    minutes = max(1, math.ceil((expected - now).total_seconds() / 60))
    context = Queued(ticket_id=ticket_id, position=queued.position or 1, minutes=minutes,
                     expected_start=max(expected, now))
    return CustomerUpdate(key="queued", kind="queued", language=chosen,
                          message=render(context, chosen))


def ticket_updated(
    update: CustomerUpdate,
    *,
    ticket_id: str,
    revision: int,
    causation_id: UUID | None,
    event_id: UUID,
    occurred_at: datetime | None = None,
) -> TicketUpdated:
    return TicketUpdated.new(
        ticket_id=ticket_id, revision=revision, causation_id=causation_id, event_id=event_id,
        occurred_at=occurred_at, kind=update.kind, message=update.message,
        language=update.language,
    )


def ticket_updated_for(
    update: CustomerUpdate, cause: EventEnvelope, *, event_id: UUID,
    occurred_at: datetime | None = None,
) -> TicketUpdated:
    return ticket_updated(update, ticket_id=cause.ticket_id, revision=cause.revision,
                          causation_id=cause.event_id, event_id=event_id,
                          occurred_at=occurred_at)
