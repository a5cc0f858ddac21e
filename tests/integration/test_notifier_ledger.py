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
from services.notifier.deadlines import Deadlines
from services.notifier.ledger import TicketLedger, as_stored, to_document
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


async def test_a_finished_ticket_moves_to_the_archive_and_a_late_start_fires_no_alert(
    mongo_db: AsyncDatabase[dict[str, Any]], unique: str,
) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    ticket = submitted(at=old)
    # The completion was recorded; the start lagged behind (its topic's group was far back).
    facts = (fact(ticket), fact(completed(ticket, at=old + timedelta(minutes=30))))
    writer = ledger(mongo_db, unique)
    for f in facts:
        await writer.record(ticket.ticket_id, f)
    waiting = submitted(at=old)
    await writer.record(waiting.ticket_id, fact(waiting))  # still waiting: stays
    archiver = Archiver(writer, clock=lambda: datetime.now(UTC), after=timedelta(0))
    assert await archiver.archive_once() == [ticket.ticket_id]
    assert await archiver.archive_once() == []
    live = {d["ticket_id"] async for d in writer.coll.find({})}
    assert live == {waiting.ticket_id}

    # A notifier that never saw the ticket gets the start, two hours late. The ticket path
    # does not read the archive: the straggler starts a live run of its own, whose view
    # alone has a running intervention clock long past due.
    late = fact(started(ticket, at=old + timedelta(minutes=1)))
    other = ledger(mongo_db, unique)
    recorded = await other.record(ticket.ticket_id, late)
    assert (recorded.before, recorded.after) == ((), (late,))
    deadlines = Deadlines(ledger(mongo_db, unique), POLICY)
    assert ticket.ticket_id in await deadlines.due(datetime.now(UTC))
    # The sweeper reads with the history joined back: nothing is due, and the marker's
    # view says so, so the ticket is neither swept again nor kept live.
    state = await deadlines.state(ticket.ticket_id, history=True)
    assert state.due(datetime.now(UTC), POLICY) == []
    assert ticket.ticket_id not in await deadlines.due(datetime.now(UTC))
    latest = (await writer.latest({"ticket_id": ticket.ticket_id}))[ticket.ticket_id]
    assert (latest["seq"], latest["due_at"], latest["open"]) == (2, None, False)
    assert await archiver.archive_once() == [ticket.ticket_id]
    runs = [d async for d in writer.archive.find({"ticket_id": ticket.ticket_id})]
    kept = {f["fact_id"] for run in runs for f in run["facts"]}
    assert kept >= {f.fact_id for f in (*facts, late)}
    assert len(runs) == 2


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


async def test_a_store_in_the_layout_before_views_is_adopted_once_at_start(
    mongo_db: AsyncDatabase[dict[str, Any]], unique: str,
) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    waiting, done = submitted(at=old), submitted(at=old)
    writer = ledger(mongo_db, unique)
    legacy = [(waiting.ticket_id, fact(waiting)), (done.ticket_id, fact(done)),
              (done.ticket_id, fact(started(done, at=old + timedelta(seconds=5)))),
              (done.ticket_id, fact(completed(done, at=old + timedelta(seconds=30))))]
    seqs: dict[str, int] = {}
    for ticket_id, f in legacy:  # fact documents as the old ledger wrote them: no view
        seqs[ticket_id] = seq = seqs.get(ticket_id, 0) + 1
        await writer.coll.insert_one({"_id": f"{ticket_id}#{seq:06d}", "ticket_id": ticket_id,
                                      "seq": seq, "fact": to_document(f)})
    hints = mongo_db["notifier_deadlines"]  # shared by this run's tests: this one's ticket
    await hints.insert_one({"_id": waiting.ticket_id, "due_at": old, "facts": 1})
    archiver = Archiver(writer, clock=lambda: datetime.now(UTC), after=timedelta(minutes=1))
    assert await archiver.adopt_legacy() == [done.ticket_id]
    assert await archiver.adopt_legacy() == []  # once: the old collections are gone
    assert "notifier_deadlines" not in await mongo_db.list_collection_names()
    # The ticket still waiting got a view: its overdue initial response is found again.
    assert waiting.ticket_id in await Deadlines(writer, POLICY).due(datetime.now(UTC))
    assert {d["ticket_id"] async for d in writer.coll.find({})} == {waiting.ticket_id}
    [run] = [d async for d in writer.archive.find({"ticket_id": done.ticket_id})]
    assert [f["fact_id"] for f in run["facts"]] == [f.fact_id for t, f in legacy[1:]]


async def test_tickets_the_sweeper_put_off_do_not_crowd_out_the_others(
    mongo_db: AsyncDatabase[dict[str, Any]], unique: str,
) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    writer = ledger(mongo_db, unique)
    tickets = [submitted(at=old + timedelta(seconds=i)) for i in range(3)]
    for ticket in tickets:  # each initial response long overdue
        await writer.record(ticket.ticket_id, fact(ticket))
    deadlines = Deadlines(writer, POLICY)
    ids = [t.ticket_id for t in tickets]
    assert await deadlines.due(datetime.now(UTC), limit=2) == ids[:2]
    assert await deadlines.due(datetime.now(UTC), limit=2, skip={ids[0]}) == ids[1:]
