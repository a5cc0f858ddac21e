"""Where a ticket is, from its events alone: the phase, when it has settled, and what the
customer has not been told yet (the demo's table and the end-to-end tests rely on it)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from uuid import uuid4

import pytest

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

from devstack.demo.progress import BusRecorder, TicketProgress
from schemas.envelope import EventEnvelope
from schemas.events import AuthorizationVerified, Event, TicketUpdated


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
    assert not progress.settled()
    assert progress.untold() == [done]
    progress.add(told(done), 101.0)
    assert progress.settled()
    assert progress.label() == "completed: partially_resolved"


def test_a_rescue_hand_over_settles_only_where_the_rescue_automation_leads() -> None:
    ticket = submitted()
    rescue = started(ticket, method="rescue", timeline="complex")
    progress = progress_of(ticket, told(ticket), rescue, told(rescue), at=100.0)
    assert progress.phase == "rescue"
    assert not progress.settled()  # however long the rescue boot and repair take
    # The automation ends it: completed, or a manual step for an engineer.
    step = manual_step(ticket)
    handed = progress_of(ticket, told(ticket), rescue, told(rescue), step, told(step))
    assert handed.phase == "manual_step"
    assert handed.settled()
    done = completed(ticket, outcome="resolved")
    progress.add(done, 130.0)
    progress.add(told(done), 130.0)
    assert (progress.phase, progress.outcome) == ("completed", "resolved")
    assert progress.settled()


def test_an_executor_clarification_waits_for_its_completion_but_auths_does_not() -> None:
    ticket = submitted()
    question = clarification(ticket)
    by_auth = progress_of(ticket, told(ticket), question, told(question))
    assert by_auth.settled()
    # Only its presence matters here: the executor asks after auth verified the ticket.
    verified = AuthorizationVerified.model_construct(ticket_id=ticket.ticket_id,
                                                     event_id=uuid4())
    by_executor = progress_of(ticket, told(ticket), verified, question, told(question))
    assert by_executor.phase == "clarification"
    assert not by_executor.settled()


def test_a_paid_only_refusal_needs_no_second_update() -> None:
    ticket = submitted(category="performance_tuning")
    refusal = auth_rejected(ticket, reasons=("scope_not_included",))
    progress = progress_of(ticket, told(ticket, "scope_not_included"), refusal)
    assert progress.phase == "refused"
    assert progress.settled()
    other = progress_of(ticket, told(ticket), auth_rejected(ticket, reasons=("not_owner",)))
    assert not other.settled()


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


async def test_wait_for_looks_again_only_at_tickets_with_new_events(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst's waiter must not re-judge a thousand unchanged tickets at every arrival."""
    recorder = BusRecorder("unused:9092", "p.")
    quiet, done = submitted(), submitted()
    go, finished = started(done), completed(done, outcome="resolved")
    for event in (quiet, told(quiet), done, told(done), go, told(go), finished):
        recorder.ticket(event.ticket_id).add(event, 100.0)
    judged: list[str] = []
    settled = TicketProgress.settled

    def counting(self: TicketProgress) -> bool:
        judged.append(self.ticket_id)
        return settled(self)

    monkeypatch.setattr(TicketProgress, "settled", counting)

    async def tell_later() -> None:
        for _ in range(3):  # arrivals that change nothing for the quiet ticket
            await asyncio.sleep(0.05)
            recorder.arrived.set()
        recorder.ticket(done.ticket_id).add(told(finished), 101.0)
        recorder.arrived.set()

    teller = asyncio.create_task(tell_later())
    pending = await recorder.wait_for([quiet.ticket_id, done.ticket_id], timeout=0.6)
    await teller
    # The quiet ticket (acknowledged, never started) is still pending at the timeout, and
    # was judged once; the other was judged again only after its new event, and settled.
    assert pending == [quiet.ticket_id]
    assert judged.count(quiet.ticket_id) == 1
    assert judged.count(done.ticket_id) == 2
