"""Where a ticket is, from its events alone: the phase, when it has settled, and what the
customer has not been told yet (the demo's table and the end-to-end tests rely on it)."""

from __future__ import annotations

import sys
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notifier"))
from notifier_factories import (
    acknowledged,
    auth_rejected,
    clarification,
    completed,
    hardware,
    manual_step,
    rejected,
    started,
    submitted,
)

from schemas.envelope import EventEnvelope
from schemas.events import AuthorizationVerified, Event, TicketUpdated
from services.demo.progress import TicketProgress


def told(cause: EventEnvelope, kind: str = "other") -> TicketUpdated:
    return TicketUpdated.caused_by(cause, kind=kind, message="m", language="en")


def progress_of(*events: Event, at: float = 100.0) -> TicketProgress:
    progress = TicketProgress(events[0].ticket_id)
    for event in events:
        progress.add(event, at)
    return progress


def test_a_completed_ticket_settles_once_the_customer_heard_of_every_step() -> None:
    ticket = submitted()
    go, done = started(ticket), completed(ticket, outcome="partially_resolved")
    progress = progress_of(ticket, told(ticket), go, told(go), done)
    assert (progress.phase, progress.outcome) == ("completed", "partially_resolved")
    assert not progress.settled(now=200.0)
    assert progress.untold() == [done]
    progress.add(told(done), 101.0)
    assert progress.settled(now=200.0)
    assert progress.label() == "completed: partially_resolved"


def test_a_rescue_hand_over_rests_only_after_a_quiet_period() -> None:
    ticket = submitted()
    rescue = started(ticket, method="rescue", timeline="complex")
    progress = progress_of(ticket, told(ticket), rescue, told(rescue), at=100.0)
    assert progress.phase == "rescue"
    assert not progress.settled(rescue_quiet_s=15, now=110.0)
    assert progress.settled(rescue_quiet_s=15, now=116.0)
    # Rescue automation answering moves the ticket on: it settles where that leads.
    step = manual_step(ticket)
    progress.add(step, 117.0)
    progress.add(told(step), 117.0)
    assert progress.phase == "manual_step"
    assert progress.settled(now=117.5)


def test_an_executor_clarification_waits_for_its_completion_but_auths_does_not() -> None:
    ticket = submitted()
    question = clarification(ticket)
    by_auth = progress_of(ticket, told(ticket), question, told(question))
    assert by_auth.settled(now=200.0)
    # Only its presence matters here: the executor asks after auth verified the ticket.
    verified = AuthorizationVerified.model_construct(ticket_id=ticket.ticket_id,
                                                     event_id=uuid4())
    by_executor = progress_of(ticket, told(ticket), verified, question, told(question))
    assert by_executor.phase == "clarification"
    assert not by_executor.settled(now=200.0)


def test_a_paid_only_refusal_needs_no_second_update() -> None:
    ticket = submitted(category="performance_tuning")
    refusal = auth_rejected(ticket, reasons=("scope_not_included",))
    progress = progress_of(ticket, told(ticket, "scope_not_included"), refusal)
    assert progress.phase == "refused"
    assert progress.settled(now=200.0)
    other = progress_of(ticket, told(ticket), auth_rejected(ticket, reasons=("not_owner",)))
    assert not other.settled(now=200.0)


def test_rejection_hardware_and_acknowledgement_show_in_the_label() -> None:
    refused = rejected()
    assert progress_of(refused, told(refused)).label() == "rejected by intake"
    ticket = submitted()
    fault = hardware(ticket)
    progress = progress_of(ticket, started(ticket), fault, acknowledged(ticket, fault.event_id))
    assert progress.label() == ("intervention running (ssh, automated), disk escalated, "
                                "acked by engineer t")


def test_a_redelivered_event_counts_once() -> None:
    ticket = submitted()
    progress = progress_of(ticket, ticket, told(ticket))
    assert len(progress.events) == 2
