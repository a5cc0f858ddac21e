"""The notifier end to end through the real Kafka broker and FerretDB: customer updates,
pages to chat, idempotency, and a chat platform that is down."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

from notifier_factories import (
    auth_rejected,
    completed,
    manual_step,
    started,
    submitted,
)
from notifier_harness import (
    RecordingBot,
    Stack,
    module_topics,
    notifier_stack,
    settings_for,
)
from polling import eventually

from schemas import TicketUpdated, topic_for
from services.notifier.acks import Engineer
from services.runtime.consumer import Delivery

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def chat() -> tuple[RecordingBot, RecordingBot]:
    return RecordingBot("webhook"), RecordingBot("slack", failing=True)


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
                chat: tuple[RecordingBot, RecordingBot]) -> AsyncIterator[Stack]:
    async with module_topics(kafka_bootstrap, topic_prefix) as prefix:
        settings = settings_for(kafka_bootstrap, real_parts.mongodb_uri, prefix,
                                f"{database_name}_notifier_service",
                                notifier_ticket_consumers=3)
        async with notifier_stack(settings, bots=chat) as running:
            await running.service.directory.register(Engineer(
                engineer_id="ENG-1", display_name="Alice", tier=1,
                identities={"webhook": "alice"}))
            yield running


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_new_ticket_is_acknowledged_to_the_customer_within_seconds(stack: Stack) -> None:
    for language in ("en", "it"):
        ticket = submitted(at=now(), language=language)
        began = time.perf_counter()
        await stack.bus.publish(ticket)
        update = (await stack.bus.wait(ticket.ticket_id, TicketUpdated))[0]
        assert time.perf_counter() - began < 3.0
        assert update.kind == "acknowledgement"
        assert update.language == language
        assert update.causation_id == ticket.event_id
        assert update.revision == ticket.revision
        assert ticket.ticket_id in update.message


async def test_a_redelivered_ticket_is_answered_once_and_a_rerun_republishes_the_same_id(
    stack: Stack,
) -> None:
    ticket = submitted(at=now())
    await stack.bus.publish(ticket)
    await stack.bus.publish(ticket)  # the producer retried
    first = (await stack.bus.wait(ticket.ticket_id, TicketUpdated))[0]
    await stack.bus.settle()
    assert len(stack.bus.of(ticket.ticket_id, TicketUpdated)) == 1

    # A handler re-run after a crash (before the offset commit) publishes the same ids.
    runtime = stack.service.runtime
    delivery = Delivery(runtime=runtime, topic=topic_for(ticket), partition=0, offset=0,
                        key=str(ticket.event_id), ticket_id=ticket.ticket_id)
    await stack.service.notifier.acknowledge(ticket, delivery)
    again = await stack.bus.wait(ticket.ticket_id, TicketUpdated, 2)
    assert {u.event_id for u in again} == {first.event_id}


async def test_every_customer_facing_step_is_told_in_the_tickets_language(stack: Stack) -> None:
    ticket = submitted(at=now(), language="it")
    steps = [ticket, started(ticket, at=now(), timeline="complex", mode="engineer"),
             manual_step(ticket, at=now(), method="datacenter"), completed(ticket, at=now())]
    expected = [["acknowledgement"], ["intervention_started"], ["other", "extension"],
                ["completion"]]
    seen = 0
    for event, kinds in zip(steps, expected, strict=True):
        await stack.bus.publish(event)
        seen += len(kinds)
        updates = await stack.bus.wait(ticket.ticket_id, TicketUpdated, seen)
        assert sorted(u.kind for u in updates[seen - len(kinds):]) == sorted(kinds)
    assert {u.language for u in stack.bus.of(ticket.ticket_id, TicketUpdated)} == {"it"}
    completion = stack.bus.of(ticket.ticket_id, TicketUpdated)[-1]
    assert "area clienti" in completion.message  # new credentials wait in the account


async def test_a_verdict_overtaking_its_ticket_is_answered_in_the_tickets_language(
    stack: Stack,
) -> None:
    ticket = submitted(at=now(), language="it")
    await stack.bus.publish(auth_rejected(ticket, at=now(), reasons=("server_unknown",)))
    await asyncio.sleep(0.5)
    await stack.bus.publish(ticket)
    updates = await stack.bus.wait(ticket.ticket_id, TicketUpdated, 2)
    rejection = next(u for u in updates if u.kind == "rejection")
    assert rejection.language == "it"
    assert "Non abbiamo trovato un server" in rejection.message


async def test_pages_reach_chat_once_however_often_the_event_is_delivered(
    stack: Stack, chat: tuple[RecordingBot, RecordingBot],
) -> None:
    working, _ = chat
    ticket = submitted(at=now())
    await stack.bus.publish(ticket)
    await stack.bus.publish(ticket)
    await stack.bus.wait(ticket.ticket_id, TicketUpdated)
    await eventually(lambda: bool(working.texts(ticket.ticket_id)))
    [page] = [p for p in working.posts if p.ticket_id == ticket.ticket_id]
    assert page.page_id == str(ticket.event_id)
    assert [a.kind for a in page.actions] == ["ack"]
    assert [m.identity for m in page.mentions if m.channel == "webhook"] == ["alice"]
    # The handler re-run after a crash enqueues the same post again: still one message.
    runtime = stack.service.runtime
    await stack.service.notifier.handle(ticket, Delivery(
        runtime=runtime, topic=topic_for(ticket), partition=0, offset=0,
        key=str(ticket.event_id), ticket_id=ticket.ticket_id))
    await asyncio.sleep(1.0)
    assert len(working.texts(ticket.ticket_id)) == 1


async def test_a_chat_platform_that_is_down_never_blocks_ticket_updates_or_other_chats(
    stack: Stack, chat: tuple[RecordingBot, RecordingBot],
) -> None:
    working, down = chat
    tickets = [submitted(at=now()) for _ in range(5)]
    began = time.perf_counter()
    for ticket in tickets:
        await stack.bus.publish(ticket)
    for ticket in tickets:
        await stack.bus.wait(ticket.ticket_id, TicketUpdated)
    assert time.perf_counter() - began < 5.0
    await eventually(lambda: all(working.texts(t.ticket_id) for t in tickets))
    assert down.attempts > 0
    assert not down.posts
    # The failed posts wait in the outbox for a later round, not lost.
    assert await stack.service.outbox.pending_count() >= len(tickets)
