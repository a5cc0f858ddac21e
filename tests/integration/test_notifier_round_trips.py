"""What one ticket costs the notifier in store round trips, through the real Kafka broker and
FerretDB (issue 17): counted by the service's own PyMongo command listener
(``runtime.store_round_trips``), per ticket lifecycle, and shown not to depend on history.

The dedupe marks (``processed_events``) and the audit chain are the shared runtime's, counted
and cut elsewhere; what is bounded here is the notifier's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

from notifier_factories import completed, started, submitted
from notifier_harness import FakeClock, Stack, module_topics, notifier_stack, settings_for
from polling import eventually

from schemas import TicketSubmitted, TicketUpdated, topic_for
from services.notifier.acks import CLOSURES
from services.notifier.app import CONSUMED
from services.notifier.deadlines import ALERT_CLAIMS
from services.notifier.ledger import ARCHIVE, COLLECTION
from services.runtime.idempotency import ProcessedEvents
from services.runtime.store_metrics import own_round_trips

pytestmark = pytest.mark.integration

TICKETS = 8
# Each lifecycle (new ticket, automated start, completion): one fact insert per event, the
# new-ticket page, and the claim that resolves it when the automation takes the ticket.
BOUND_PER_TICKET = 6


@pytest.fixture(scope="module")
async def settings(kafka_bootstrap: str, topic_prefix: str, real_parts: Any,
                   database_name: str) -> AsyncIterator[Any]:
    async with module_topics(kafka_bootstrap, topic_prefix) as prefix:
        yield settings_for(kafka_bootstrap, real_parts.mongodb_uri, prefix,
                           f"{database_name}_notifier_round_trips",
                           notifier_archive_after_s=0, notifier_archive_interval_s=0.2,
                           # The gauges read the board on a timer, not per ticket: once, at
                           # start, here.
                           notifier_metrics_refresh_s=3600)


async def handled(stack: Stack, events: list[Any]) -> None:
    """Wait until the notifier marked every event processed in its SLA groups (asked on a
    client of the test's own, so the service's count holds only the service's trips)."""
    prefix = stack.settings.kafka_topic_prefix
    groups = [f"{prefix}notifier.{topic_for(m)}" for m in CONSUMED]
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.settings.mongodb_uri)
    processed = ProcessedEvents(client[stack.settings.mongodb_database])

    async def done() -> bool:
        for event in events:
            if not any([await processed.seen(g, str(event.event_id)) for g in groups]):
                return False
        return True

    try:
        await eventually(done, timeout=60)
    finally:
        await client.close()


async def lifecycles(stack: Stack, n: int, at: datetime) -> list[TicketSubmitted]:
    tickets = [submitted(at=at) for _ in range(n)]
    events: list[Any] = []
    for ticket in tickets:
        await stack.bus.publish(ticket)
    await handled(stack, tickets)
    for ticket in tickets:
        event = started(ticket, at=at + timedelta(seconds=5))
        events.append(event)
        await stack.bus.publish(event)
    await handled(stack, events)
    for ticket in tickets:
        event = completed(ticket, at=at + timedelta(seconds=30))
        events.append(event)
        await stack.bus.publish(event)
    await handled(stack, events)
    for ticket in tickets:
        await stack.bus.wait(ticket.ticket_id, TicketUpdated, 3)
    return tickets


async def test_a_ticket_lifecycle_costs_the_notifier_a_handful_of_store_round_trips(
    settings: Any,
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with notifier_stack(settings, clock=clock) as stack:
        await lifecycles(stack, 1, clock.now)  # warm-up: the engineers' roster, indexes
        totals = stack.service.runtime.store_round_trips.totals
        before = totals.copy()
        await lifecycles(stack, TICKETS, clock.now)
        whole = totals - before
        spent = own_round_trips(whole)
    per_ticket = sum(spent.values()) / TICKETS
    print(f"notifier round trips per ticket: {per_ticket:.2f} of its own, "
          f"{sum(whole.values()) / TICKETS:.2f} with the runtime's: "
          + ", ".join(f"{op} {coll} {n / TICKETS:.2f}" for (op, coll), n in whole.items()))
    assert per_ticket <= BOUND_PER_TICKET, spent
    # The tickets' facts go in together (group commit): fewer inserts than events.
    assert whole[("insert", COLLECTION)] < 2 * TICKETS, whole
    # None of them reads the ticket's history: every fact is written by insert.
    assert not [key for key in spent if key[0] == "find" and key[1].startswith(COLLECTION)], \
        spent


async def test_events_out_of_order_close_the_page_once_without_reading(settings: Any) -> None:
    """The completion overtakes the start (their topics' groups lag differently): the page
    is resolved by whichever is recorded first, and the late start changes nothing."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with notifier_stack(settings, clock=clock) as stack:
        at = clock.now
        tickets = [submitted(at=at) for _ in range(3)]
        for ticket in tickets:
            await stack.bus.publish(ticket)
        await handled(stack, tickets)
        before = stack.service.runtime.store_round_trips.totals.copy()
        ends = [completed(t, at=at + timedelta(seconds=30)) for t in tickets]
        for event in ends:
            await stack.bus.publish(event)
        await handled(stack, ends)
        closing = stack.service.runtime.store_round_trips.totals - before
        starts = [started(t, at=at + timedelta(seconds=5)) for t in tickets]
        for event in starts:
            await stack.bus.publish(event)
        await handled(stack, starts)
        spent = stack.service.runtime.store_round_trips.totals - before
        closed = {d["_id"] async for d in stack.service.runtime.db[CLOSURES].find({})}
    # Each page closed by its completion (closures claimed at once share round trips) ...
    assert closed == {f"close:{t.event_id}" for t in tickets}
    assert 1 <= closing[("insert", CLOSURES)] <= len(tickets), closing
    # ... and the late start tries nothing again.
    assert spent[("insert", CLOSURES)] == closing[("insert", CLOSURES)], spent
    assert not [key for key in spent if key[0] == "find" and key[1].startswith("notifier")], \
        spent


async def test_finished_tickets_leave_the_hot_collection_and_are_never_read_again(
    settings: Any,
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with notifier_stack(settings, clock=clock, run_sweeper=True) as stack:
        db = stack.service.runtime.db
        finished = await lifecycles(stack, TICKETS, clock.now)
        ids = {t.ticket_id for t in finished}

        async def archived() -> bool:
            live = {d["ticket_id"] async for d in db[COLLECTION].find({}, {"ticket_id": 1})}
            return not live & ids
        await eventually(archived, timeout=30)
        kept = {d["ticket_id"]: len(d["facts"]) async for d in db[ARCHIVE].find({})}
        assert {t: kept.get(t) for t in ids} == dict.fromkeys(ids, 3)

        # Many finished tickets of history: the next tickets never touch it.
        await db[ARCHIVE].insert_many([
            {"_id": f"HD-history-{i:05d}#000001", "ticket_id": f"HD-history-{i:05d}",
             "first": 1, "last": 1, "facts": []} for i in range(2000)])
        before = stack.service.runtime.store_round_trips.totals.copy()
        await lifecycles(stack, 3, clock.now)
        spent = stack.service.runtime.store_round_trips.totals - before
    assert not [key for key in spent if key[1] == ARCHIVE and key[0] != "insert"], spent


async def test_a_fired_alert_is_claimed_by_one_insert_and_its_claim_never_rewritten(
    settings: Any,
) -> None:
    """The alert's fact in the ledger is its "done": the claim collection, which grows with
    every alert, is never updated (on FerretDB an update scans it holding the write lock)."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with notifier_stack(settings, clock=clock) as stack:
        tickets = [submitted(at=clock.now) for _ in range(4)]
        for ticket in tickets:
            await stack.bus.publish(ticket)
        await handled(stack, tickets)
        before = stack.service.runtime.store_round_trips.totals.copy()
        fired = await stack.service.sweeper.sweep_once(clock.now + timedelta(minutes=8))
        assert await stack.service.sweeper.sweep_once(clock.now + timedelta(minutes=9)) == []
        spent = stack.service.runtime.store_round_trips.totals - before
    assert sorted(a.alert_id for a in fired) == sorted(
        f"{t.ticket_id}:r1:initial_response:warning" for t in tickets)
    assert [key for key in spent if key[1] == ALERT_CLAIMS] == [("insert", ALERT_CLAIMS)], spent
    # Swept at once, the tickets' claims share round trips.
    assert spent[("insert", ALERT_CLAIMS)] < len(tickets), spent


async def test_an_event_ahead_of_its_ticket_is_recorded_and_answered_without_reading_the_ledger(
    settings: Any,
) -> None:
    """A start overtakes its TicketSubmitted (their topics' groups lag differently, as in a
    burst): its fact goes in without a read, and its update waits for the ticket's language
    in what the process knows, not by reading the ledger every tick."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with notifier_stack(settings, clock=clock) as stack:
        await lifecycles(stack, 1, clock.now)  # warm-up: the engineers' roster, indexes
        before = stack.service.runtime.store_round_trips.totals.copy()
        tickets = [submitted(at=clock.now, language="it") for _ in range(3)]
        starts = [started(t, at=clock.now + timedelta(seconds=5)) for t in tickets]
        for event in starts:
            await stack.bus.publish(event)
        await asyncio.sleep(0.5)  # the starts are recorded and wait for the language
        for ticket in tickets:
            await stack.bus.publish(ticket)
        await handled(stack, [*starts, *tickets])
        updates = [await stack.bus.wait(t.ticket_id, TicketUpdated, 2) for t in tickets]
        spent = stack.service.runtime.store_round_trips.totals - before
    assert all(u.language == "it" for batch in updates for u in batch), updates
    assert not [key for key in spent if key[0] == "find" and key[1].startswith(COLLECTION)], \
        spent
