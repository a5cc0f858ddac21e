"""Acknowledgements and manual-step reports are compare-and-set on FerretDB: the first wins,
everyone else is answered politely, and each event is published (and audited) once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

from notifier_factories import manual_step, started, submitted
from notifier_harness import (
    RecordingBot,
    Stack,
    module_topics,
    notifier_stack,
    settings_for,
)
from polling import eventually

from schemas import EngineerAcknowledged, ManualStepCompleted, TicketUpdated
from services.notifier.acks import CLOSURES, Engineer
from services.runtime.crypto import SigningKey
from services.runtime.facts import sign_fact

pytestmark = pytest.mark.integration

ENGINEERS = [Engineer(engineer_id=f"ENG-{i}", display_name=f"Engineer {i}", tier=1,
                      identities={"webhook": f"user-{i}"}) for i in range(5)]


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str
                ) -> AsyncIterator[Stack]:
    async with module_topics(kafka_bootstrap, topic_prefix) as prefix:
        settings = settings_for(kafka_bootstrap, real_parts.mongodb_uri, prefix,
                                f"{database_name}_notifier_acks")
        async with notifier_stack(settings, bots=[RecordingBot("webhook")]) as running:
            for engineer in ENGINEERS:
                await running.service.directory.register(engineer)
            yield running


async def new_page(stack: Stack, **fields: Any) -> str:
    ticket = submitted(at=datetime.now(UTC), **fields)
    await stack.bus.publish(ticket)
    await stack.bus.wait(ticket.ticket_id, TicketUpdated)
    pages = stack.service.desk.pages

    async def indexed() -> bool:
        return await pages.get(str(ticket.event_id)) is not None

    await eventually(indexed)
    return ticket.ticket_id


async def continues_the_page_trace(stack: Stack, page_id: str, event_id: object) -> None:
    """The event an engineer's chat action published is in the trace of the event that
    opened the page (chat callbacks carry no trace context of their own)."""
    page = await stack.service.desk.pages.get(page_id)
    assert page is not None
    traceparent = page.trace_carrier.get("traceparent", "")
    assert traceparent.startswith("00-"), page.trace_carrier
    records = await stack.service.runtime.audit.records(page.ticket_id)
    [published] = [r for r in records if r.record_id == f"event:{event_id}"]
    assert published.data.get("trace_id") == traceparent.split("-")[1]


async def test_twenty_racing_acks_one_winner_one_event_everyone_answered(stack: Stack) -> None:
    ticket_id = await new_page(stack)
    page = (await stack.service.deadlines.state(ticket_id)).pages[0].page_id
    desk = stack.service.desk
    answers = await asyncio.gather(*(
        desk.acknowledge_page(page, channel="webhook", identity=f"user-{i % 5}")
        for i in range(20)))
    winners = [a for a in answers if a.changed]
    assert len(winners) == 1
    [ack] = await stack.bus.wait(ticket_id, EngineerAcknowledged)
    assert f"it is yours, {ack.display_name}" in winners[0].text
    for answer in answers:
        if not answer.changed:
            assert "already" in answer.text
            assert "Nothing changed" in answer.text or "nothing changed" in answer.text
    await stack.bus.settle()
    assert len(stack.bus.of(ticket_id, EngineerAcknowledged)) == 1
    assert ack.acknowledged_event_id == ack.causation_id
    assert str(ack.acknowledged_event_id) == page
    assert ack.channel == "webhook"
    # Audited by the producer, once.
    records = await stack.service.runtime.audit.records(ticket_id)
    assert [r.record_id for r in records].count(f"event:{ack.event_id}") == 1
    await continues_the_page_trace(stack, page, ack.event_id)
    # A late ack, minutes later, changes nothing either.
    late = await desk.acknowledge_ticket(ticket_id, channel="webhook", identity="user-4")
    assert not late.changed
    assert ack.display_name in late.text


async def test_an_ack_racing_the_automation_either_wins_or_is_told_it_was_resolved(
    stack: Stack,
) -> None:
    desk = stack.service.desk
    outcomes = []
    for _ in range(8):
        ticket_id = await new_page(stack)
        state = await stack.service.deadlines.state(ticket_id)
        record = await desk.pages.get(state.pages[0].page_id)
        assert record is not None
        resolved, answer = await asyncio.gather(
            desk.resolve(record, "the automation took the ticket (ssh)"),
            desk.acknowledge_page(record.page_id, channel="webhook", identity="user-1"))
        assert resolved != answer.changed  # exactly one of them closed the page
        if resolved:
            assert "resolved" in answer.text
        outcomes.append((ticket_id, answer.changed))
    await asyncio.sleep(1.5)
    for ticket_id, acked in outcomes:
        assert len(stack.bus.of(ticket_id, EngineerAcknowledged)) == (1 if acked else 0)


async def test_a_page_the_automation_took_answers_a_late_ack_politely(stack: Stack) -> None:
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    await stack.bus.publish(started(ticket, at=datetime.now(UTC), mode="automated"))
    await stack.bus.wait(ticket.ticket_id, TicketUpdated, 2)
    desk = stack.service.desk

    async def closed() -> bool:
        return await desk.closure(str(ticket.event_id)) is not None

    await eventually(closed)
    answer = await desk.acknowledge_page(str(ticket.event_id), channel="webhook",
                                         identity="user-2")
    assert not answer.changed
    assert "the automation took the ticket" in answer.text
    await stack.bus.settle()
    assert stack.bus.of(ticket.ticket_id, EngineerAcknowledged) == []


async def test_unregistered_chat_identities_cannot_acknowledge(stack: Stack) -> None:
    ticket_id = await new_page(stack)
    answer = await stack.service.desk.acknowledge_ticket(ticket_id, channel="webhook",
                                                         identity="mallory")
    assert not answer.changed
    assert "not registered" in answer.text
    await stack.bus.settle()
    assert stack.bus.of(ticket_id, EngineerAcknowledged) == []


async def test_a_manual_step_is_reported_once_from_chat(stack: Stack) -> None:
    ticket = submitted(at=datetime.now(UTC))
    step = manual_step(ticket, at=datetime.now(UTC), step_id="kvm-1")
    await stack.bus.publish(ticket)
    await stack.bus.publish(step)
    await stack.bus.wait(ticket.ticket_id, TicketUpdated, 2)
    desk = stack.service.desk

    async def indexed() -> bool:
        return await desk.pages.get(str(step.event_id)) is not None

    await eventually(indexed)
    answers = await asyncio.gather(
        desk.report_step(ticket.ticket_id, "kvm-1", status="done", notes="GRUB reinstalled",
                         channel="webhook", identity="user-3"),
        desk.report_step(ticket.ticket_id, "kvm-1", status="failed", notes="no console",
                         channel="webhook", identity="user-4"))
    assert sorted(a.changed for a in answers) == [False, True]
    [report] = await stack.bus.wait(ticket.ticket_id, ManualStepCompleted)
    assert report.step_id == "kvm-1"
    assert report.causation_id == step.event_id
    await continues_the_page_trace(stack, str(step.event_id), report.event_id)
    assert (report.status, report.engineer_id) in (("done", "ENG-3"), ("failed", "ENG-4"))
    unknown = await desk.report_step(ticket.ticket_id, "kvm-9", status="done", notes="",
                                     channel="webhook", identity="user-3")
    assert "no manual step kvm-9" in unknown.text
    await stack.bus.settle()
    assert len(stack.bus.of(ticket.ticket_id, ManualStepCompleted)) == 1
    # The notifier consumed its own report: the step's page is closed, no escalation left.
    state = await stack.service.deadlines.state(ticket.ticket_id)
    assert not [p for p in state.open_pages() if p.kind == "manual_step"]


async def test_an_ack_whose_winner_died_before_publishing_is_finished_once(stack: Stack) -> None:
    ticket_id = await new_page(stack)
    page = (await stack.service.deadlines.state(ticket_id)).pages[0].page_id
    # The winner took the page, then its process died before publishing the event.
    crashed_at = datetime.now(UTC) - timedelta(minutes=5)
    closures = stack.service.runtime.db[CLOSURES]
    await closures.insert_one({
        "_id": f"close:{page}", "state": "claimed", "claimed_at": crashed_at, "owner": "gone",
        "how": "acknowledged", "at": crashed_at, "engineer_id": "ENG-2",
        "display_name": "Engineer 2", "channel": "webhook", "ticket_id": ticket_id})
    desk = stack.service.desk
    late = await desk.acknowledge_page(page, channel="webhook", identity="user-3")
    assert not late.changed
    assert "already acknowledged by Engineer 2" in late.text
    [ack] = await stack.bus.wait(ticket_id, EngineerAcknowledged)
    assert (ack.engineer_id, ack.occurred_at) == ("ENG-2", crashed_at.replace(
        microsecond=crashed_at.microsecond // 1000 * 1000))
    await desk.finish(page)  # the sweeper's repair finds nothing left to do
    await stack.bus.settle()
    assert len(stack.bus.of(ticket_id, EngineerAcknowledged)) == 1


async def test_a_forged_acknowledgement_on_the_bus_closes_no_page(stack: Stack) -> None:
    """Whoever can write the bus (but lacks the notifier's key) cannot silence a page: the
    forged EngineerAcknowledged is audited as refused and the page keeps escalating."""
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    await stack.bus.wait(ticket.ticket_id, TicketUpdated)
    page_id = str(ticket.event_id)

    async def paged() -> bool:
        return (await stack.service.deadlines.state(ticket.ticket_id)).page(page_id) is not None

    await eventually(paged)
    forged = EngineerAcknowledged.new(
        ticket_id=ticket.ticket_id, revision=ticket.revision, causation_id=ticket.event_id,
        engineer_id="ENG-0", display_name="Engineer 0", channel="webhook",
        acknowledged_event_id=ticket.event_id)
    stranger = sign_fact(forged.model_copy(update={"event_id": uuid4()}),
                         SigningKey.generate(key_id_prefix="notifier"))
    await stack.bus.publish_as_is(forged)
    await stack.bus.publish_as_is(stranger)
    audit = stack.service.runtime.audit

    async def refused() -> list[str]:
        records = await audit.records(ticket.ticket_id)
        reasons = sorted(r.data["reason"] for r in records if r.kind == "fact_refused")
        return reasons if len(reasons) == 2 else []

    await eventually(refused)
    assert await refused() == ["unknown_key", "unsigned"]
    state = await stack.service.deadlines.state(ticket.ticket_id)
    page = state.page(page_id)
    assert page is not None
    assert page.open  # nobody acknowledged it
