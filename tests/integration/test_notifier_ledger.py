"""The notifier's ticket ledger on the real FerretDB: appends that read nothing yet lose
nothing across replicas, and finished tickets archived out of the hot collection without
losing a late fact."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

from notifier_factories import completed, started, submitted

from services.notifier.archive import Archiver
from services.notifier.ledger import TicketLedger, as_stored
from services.notifier.sla import Fact, SlaPolicy, fact_of
from services.notifier.views import ticket_view

pytestmark = pytest.mark.integration

POLICY = SlaPolicy()


def ledger(db: AsyncDatabase[dict[str, Any]], unique: str, **kwargs: Any) -> TicketLedger:
    """One notifier process's ledger (a new one: a replica, or a restart)."""
    return TicketLedger(db, partial(ticket_view, policy=POLICY), collection=f"facts_{unique}",
                        archive=f"archive_{unique}", **kwargs)


def fact(event: Any) -> Fact:
    found = fact_of(event)
    assert found is not None
    return as_stored(found)  # as any reader gets it back (BSON times: milliseconds)


def lifecycle(at: datetime) -> tuple[Fact, Fact, Fact]:
    ticket = submitted(at=at)
    return (fact(ticket), fact(started(ticket, at=at + timedelta(seconds=5))),
            fact(completed(ticket, at=at + timedelta(seconds=30))))


async def test_replicas_appending_to_one_ticket_lose_nothing_and_see_the_exact_history(
    mongo_db: AsyncDatabase[dict[str, Any]], unique: str,
) -> None:
    now = datetime.now(UTC)
    first, second, third = lifecycle(now)
    a, b = ledger(mongo_db, unique), ledger(mongo_db, unique)
    ticket_id = "HD-replicas"
    assert (await a.record(ticket_id, first)).recorded
    # B never saw the ticket: its append finds A's fact and builds on it.
    on_b = await b.record(ticket_id, second)
    assert (on_b.before, on_b.after) == ((first,), (first, second))
    # A's knowledge is one fact behind: its insert meets B's and it reads past it.
    on_a = await a.record(ticket_id, third)
    assert (on_a.before, on_a.after) == ((first, second), (first, second, third))
    # A redelivery, to the replica that did not record it, records nothing.
    again = await a.record(ticket_id, second)
    assert not again.recorded
    assert again.after == (first, second, third)
    # Many appends at once from both: each fact once, every position taken once.
    extra = [Fact(fact_id=f"f{i}", kind="alert_fired", at=now, revision=1, alert_id=f"x{i}")
             for i in range(12)]
    results = await asyncio.gather(*(
        (a if i % 2 else b).record(ticket_id, f) for i, f in enumerate(extra)))
    assert all(r.recorded for r in results)
    fresh = await ledger(mongo_db, unique).facts(ticket_id)
    assert len({f.fact_id for f in fresh}) == len(fresh) == 15
    # Each append's view is exact for its prefix: the latest document counts every fact.
    latest = (await a.latest({"ticket_id": ticket_id}))[ticket_id]
    assert (latest["seq"], latest["board"], latest["open"]) == (15, None, False)


async def test_a_finished_ticket_moves_to_the_archive_and_a_late_fact_finds_its_history(
    mongo_db: AsyncDatabase[dict[str, Any]], unique: str,
) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    facts = lifecycle(old)
    writer = ledger(mongo_db, unique)
    for f in facts:
        await writer.record("HD-late", f)
    await writer.record("HD-open", fact(submitted(at=old)))  # still waiting: stays
    archiver = Archiver(writer, clock=lambda: datetime.now(UTC), after=timedelta(0))
    assert await archiver.archive_once() == ["HD-late"]
    assert await archiver.archive_once() == []
    live = {d["ticket_id"] async for d in writer.coll.find({})}
    assert live == {"HD-open"}

    # A notifier that never saw the ticket gets a fact from long ago (an acknowledgement
    # that lagged): it is folded with the archived history, after it, never over it.
    late = as_stored(Fact(fact_id="late-ack", kind="acknowledged",
                          at=old + timedelta(minutes=1), revision=1,
                          page_id=facts[0].fact_id, channel="webhook"))
    other = ledger(mongo_db, unique, archive_after=timedelta(minutes=1))
    recorded = await other.record("HD-late", late)
    assert (recorded.before, recorded.after) == (facts, (*facts, late))
    assert [d["seq"] async for d in other.coll.find({"ticket_id": "HD-late"})] == [4]
    assert await ledger(mongo_db, unique).facts("HD-late") == [*facts, late]
    # Archived again: a second run beside the first, and the history still whole.
    assert await archiver.archive_once() == ["HD-late"]
    assert await ledger(mongo_db, unique).facts("HD-late") == [*facts, late]


async def test_the_archiver_leaves_a_ticket_a_later_fact_reopened(
    mongo_db: AsyncDatabase[dict[str, Any]], unique: str,
) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    clock = [old + timedelta(minutes=1)]
    writer = ledger(mongo_db, unique, clock=lambda: clock[0])
    ticket = submitted(at=old)
    await writer.record(ticket.ticket_id, fact(ticket))
    await writer.record(ticket.ticket_id, fact(completed(ticket, at=old)))  # closed, long ago
    clock[0] = datetime.now(UTC)  # the customer answers much later: revision 2
    await writer.record(ticket.ticket_id, fact(submitted(ticket_id=ticket.ticket_id,
                                                         revision=2, at=clock[0])))
    archiver = Archiver(writer, clock=lambda: datetime.now(UTC), after=timedelta(minutes=1))
    assert await archiver.archive_once() == []
    assert len([d async for d in writer.coll.find({"ticket_id": ticket.ticket_id})]) == 3
