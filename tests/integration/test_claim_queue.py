"""The claim queue on the real FerretDB: queued claims stay out of ``executor_claims``.

Every claim update and delete is a scan of ``executor_claims`` holding FerretDB's single
write lock, so a claim no worker is free for waits in an insert-only queue partition
(``executor_claims_queued_YYYYMMDD``) and is moved into ``executor_claims`` by the worker
that takes it. These tests walk the crash points of that move: a queued claim is never lost
(redelivery, scan), never run twice (insert-wins materialisation) and never resurrected
after it was closed for good (the done marker).
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
from pymongo.asynchronous.database import AsyncDatabase

from services.cli.commands_executor import _claims as claim_rows
from services.executor.claims import ClaimStore, Owner
from services.executor.runbooks.engine import JournalEntry
from services.runtime.crypto import PrivateSealingKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
from executor_verdicts import verdict

pytestmark = pytest.mark.integration

Db = AsyncDatabase[dict[str, Any]]


@pytest.fixture
async def db(real_parts: Any, database_name: str, unique: str) -> AsyncIterator[Db]:
    """A database of its own: the scans here read every queue partition there is."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(real_parts.mongodb_uri,
                                                                tz_aware=True)
    name = f"{database_name}_q{unique}"
    yield client[name]
    await client.drop_database(name)
    await client.close()


def owner(name: str) -> Owner:
    # Another machine's process: only an expired lease lets anyone take its claims.
    return Owner(id=name, host="elsewhere", boot_id="", pid_ns="", pid=1, started="")


def event_for(ticket_id: str, revision: int = 1) -> Any:
    return verdict(signing_key=None, sealing_key=PrivateSealingKey.generate().public,
                   username="root", password="pw", ticket_id=ticket_id, revision=revision)


async def queue(store: ClaimStore, event: Any, who: Owner, lease_s: float = 30) -> Any:
    claim, created = await store.create(event, verdict_json=event.model_dump_json(),
                                        trace_carrier={}, owner=who, lease_s=lease_s,
                                        queued=True)
    assert created
    return claim


async def queued_copy(db: Db, claim_id: str) -> dict[str, Any] | None:
    """The claim's document in the queue partition it was queued in."""
    for name in await db.list_collection_names():
        if name.startswith(f"{ClaimStore.QUEUED}_"):
            doc = await db[name].find_one({"_id": claim_id})
            if doc is not None:
                assert doc["queued_in"] == name
                return doc
    return None


async def finish(store: ClaimStore, claim_id: str, who: Owner) -> None:
    await store.record_step(claim_id, who, 0, JournalEntry(name="a", state="changing"))
    await store.close(claim_id, who, "finished", outcome="resolved")


async def test_a_queued_claim_waits_outside_executor_claims_and_its_taker_moves_it_there(
        db: Db, unique: str) -> None:
    store, me = ClaimStore(db), owner("creator")
    claim = await queue(store, event_for(f"T-{unique}"), me, lease_s=1.0)
    assert await db[ClaimStore.CLAIMS].count_documents({}) == 0
    queued = await queued_copy(db, claim.id)
    assert queued is not None
    # Operators and the redelivery path still see it, open, and the scan offers it.
    seen = await ClaimStore(db).get(claim.id)
    assert seen is not None
    assert seen.status == "open"
    assert claim.id in await ClaimStore(db).open_claim_ids()
    # Waited longer than its lease: its creator still takes it as attempt 1, the lease
    # starting when it is moved (nobody else could have taken it before the move).
    await asyncio.sleep(1.2)
    taken = await store.acquire(claim.id, me, lease_s=30)
    assert taken is not None
    assert taken.attempt == 1
    live = await db[ClaimStore.CLAIMS].find_one({"_id": claim.id})
    assert live is not None
    assert live["lease_until"].replace(tzinfo=UTC) > datetime.now(UTC) + timedelta(seconds=20)
    # The same signed document, only the lease moved on; the queued copy stays (no delete).
    assert {k: v for k, v in live.items() if k != "lease_until"} == {
        k: v for k, v in queued.items() if k != "lease_until"}
    assert await queued_copy(db, claim.id) is not None
    # Taken: no longer offered as queued, but as an open claim in flight (once).
    assert (await ClaimStore(db).open_claim_ids()).count(claim.id) == 1
    assert claim.id not in await ClaimStore(db).queued_claim_ids()


async def test_operators_see_queued_claims_in_the_claim_listing(db: Db, unique: str) -> None:
    store, me = ClaimStore(db), owner("creator")
    waiting = await queue(store, event_for(f"T-{unique}-w"), me)
    running = await queue(store, event_for(f"T-{unique}-r"), me)
    assert await store.acquire(running.id, me, lease_s=30) is not None
    rows = await claim_rows(db, include_finished=False)
    assert [row.split()[:2] for row in rows] == [[waiting.id, "queued"], [running.id, "open"]]


async def test_a_finished_queued_claim_is_never_offered_or_taken_again(
        db: Db, unique: str) -> None:
    store, me = ClaimStore(db), owner("creator")
    claim = await queue(store, event_for(f"T-{unique}"), me)
    late = ClaimStore(db)  # another executor, whose scan saw the claim still queued
    assert claim.id in await late.open_claim_ids()
    assert await store.acquire(claim.id, me, lease_s=30) is not None
    await finish(store, claim.id, me)
    assert await db[ClaimStore.CLAIMS].count_documents({}) == 0
    # Its queued copy is still there, but it is done: the scan does not offer it,
    assert claim.id not in await ClaimStore(db).open_claim_ids()
    # the late taker's move finds the done marker and takes the copy back out,
    assert await late.acquire(claim.id, owner("late"), lease_s=30) is None
    assert await db[ClaimStore.CLAIMS].count_documents({}) == 0
    # and the claim reads as finished.
    final = await ClaimStore(db).get(claim.id)
    assert final is not None
    assert final.status == "finished"


async def test_a_copy_taken_back_in_after_the_close_is_not_taken_over(
        db: Db, unique: str) -> None:
    # The moment between a late move's insert and its done check: a third executor finds
    # the copy in flight with an old lease.
    store, me = ClaimStore(db), owner("creator")
    claim = await queue(store, event_for(f"T-{unique}"), me, lease_s=0.5)
    assert await store.acquire(claim.id, me, lease_s=30) is not None
    await finish(store, claim.id, me)
    copy = await queued_copy(db, claim.id)
    assert copy is not None
    await asyncio.sleep(0.6)  # the copy's lease (as queued) has run out
    await db[ClaimStore.CLAIMS].insert_one(copy)
    third = ClaimStore(db)
    assert await third.acquire(claim.id, owner("third"), lease_s=30) is None
    assert await db[ClaimStore.CLAIMS].find_one({"_id": claim.id}) is None
    assert await db[ClaimStore.LEASES].count_documents({}) == 0


async def test_a_queued_claim_is_taken_by_exactly_one_of_many_executors(
        db: Db, real_parts: Any, unique: str) -> None:
    creator = ClaimStore(db)
    claim = await queue(creator, event_for(f"T-{unique}"), owner("crashed"), lease_s=0.5)
    await asyncio.sleep(0.6)  # the creator died with it queued; its lease ran out
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(real_parts.mongodb_uri, tz_aware=True) for _ in range(10)]
    try:
        stores = [ClaimStore(client[db.name]) for client in clients]
        for store in stores:
            assert claim.id in await store.open_claim_ids()
        taken = await asyncio.gather(*(store.acquire(claim.id, owner(f"taker-{i}"),
                                                     lease_s=30)
                                       for i, store in enumerate(stores)))
    finally:
        for client in clients:
            await client.close()
    winners = [c for c in taken if c is not None]
    assert len(winners) == 1
    assert winners[0].attempt == 2
    assert await db[ClaimStore.CLAIMS].count_documents({}) == 1


async def test_another_executor_leaves_a_queued_claim_to_its_live_creator(
        db: Db, unique: str) -> None:
    # Its scan lists the claim, but moving it in would only park it in executor_claims
    # until the creator's worker gets to it.
    creator, me = ClaimStore(db), owner("creator")
    claim = await queue(creator, event_for(f"T-{unique}"), me, lease_s=30)
    other = ClaimStore(db)
    assert claim.id in await other.open_claim_ids()
    assert await other.acquire(claim.id, owner("other"), lease_s=30) is None
    assert await db[ClaimStore.CLAIMS].count_documents({}) == 0
    taken = await creator.acquire(claim.id, me, lease_s=30)
    assert taken is not None
    assert taken.attempt == 1


async def test_a_creator_forgets_a_queued_claim_another_executor_took(
        db: Db, unique: str) -> None:
    # The creator's worker had not got to it before its lease as queued ran out.
    creator, me = ClaimStore(db), owner("creator")
    claim = await queue(creator, event_for(f"T-{unique}"), me, lease_s=0.5)
    assert creator.is_queued(claim.id)
    await asyncio.sleep(0.6)
    other = ClaimStore(db)
    await other.open_claim_ids()
    assert await other.acquire(claim.id, owner("other"), lease_s=30) is not None
    await creator.open_claim_ids()
    assert not creator.is_queued(claim.id)  # no longer a claim to move in
    assert await creator.acquire(claim.id, me, lease_s=30) is None
    assert await db[ClaimStore.CLAIMS].count_documents({}) == 1


async def test_a_verdict_redelivered_before_its_offset_commit_finds_its_queued_claim(
        db: Db, unique: str) -> None:
    # A crash after the queue insert, before the offset commit: the verdict comes again.
    event = event_for(f"T-{unique}")
    await queue(ClaimStore(db), event, owner("crashed"), lease_s=0.5)
    restarted = ClaimStore(db)
    again, created = await restarted.create(event, verdict_json=event.model_dump_json(),
                                            trace_carrier={}, owner=owner("restarted"),
                                            lease_s=30, queued=True)
    assert (created, again.status) == (False, "open")
    await asyncio.sleep(0.6)
    taken = await restarted.acquire(again.id, owner("restarted"), lease_s=30)
    assert taken is not None
    assert await db[ClaimStore.CLAIMS].count_documents({}) == 1


async def test_a_claim_moved_by_an_executor_that_then_crashed_is_taken_over_once(
        db: Db, unique: str) -> None:
    # A crash between the move into executor_claims and the first lease document.
    crashed, me = ClaimStore(db), owner("crashed")
    claim = await queue(crashed, event_for(f"T-{unique}"), me, lease_s=0.5)
    assert await crashed.acquire(claim.id, me, lease_s=0.5) is not None
    await asyncio.sleep(0.6)
    other = ClaimStore(db)
    assert (await other.open_claim_ids()).count(claim.id) == 1
    taken = await other.acquire(claim.id, owner("other"), lease_s=30)
    assert taken is not None
    assert taken.attempt == 2
    await finish(other, claim.id, owner("other"))
    assert claim.id not in await ClaimStore(db).open_claim_ids()


async def test_a_crash_between_the_done_marker_and_the_archive_resumes_the_claim(
        db: Db, unique: str) -> None:
    store, me = ClaimStore(db), owner("crashed")
    claim = await queue(store, event_for(f"T-{unique}"), me, lease_s=0.5)
    assert await store.acquire(claim.id, me, lease_s=0.5) is not None
    live = await db[ClaimStore.CLAIMS].find_one({"_id": claim.id})
    assert live is not None
    await store.queue.mark_done(live)  # the close's first write, then the crash
    await asyncio.sleep(0.6)
    other, who = ClaimStore(db), owner("other")
    assert claim.id in await other.open_claim_ids()
    resumed = await other.acquire(claim.id, who, lease_s=30)
    assert resumed is not None
    await other.close(claim.id, who, "finished", outcome="resolved")
    final = await other.get(claim.id)
    assert final is not None
    assert final.status == "finished"
    assert await db[ClaimStore.CLAIMS].count_documents({}) == 0


async def test_old_queue_partitions_go_only_when_nothing_in_them_waits(
        db: Db, unique: str) -> None:
    store = ClaimStore(db, queue_retention=timedelta(days=2))
    old = datetime.now(UTC) - timedelta(days=5)
    old_queue = f"{ClaimStore.QUEUED}_{ClaimStore.hour_of(old)}"
    old_done = f"{ClaimStore.DONE}_{ClaimStore.day_of(old)}"
    await db[old_queue].insert_many([
        {"_id": f"T-{unique}-a:1", "status": "open"},
        {"_id": f"T-{unique}-b:1", "status": "open"}])
    await db[old_done].insert_one({"_id": f"T-{unique}-a:1"})
    # b still waits: its partition (and the done markers as old) stay.
    assert await store.open_claim_ids() == [f"T-{unique}-b:1"]
    names = await db.list_collection_names()
    assert {old_queue, old_done} <= set(names)
    await db[old_done].insert_one({"_id": f"T-{unique}-b:1"})
    assert await store.open_claim_ids() == []
    names = await db.list_collection_names()
    assert old_queue not in names
    assert old_done not in names


async def test_the_scan_stops_reading_a_past_queue_partition_once_nothing_in_it_waits(
        db: Db, unique: str) -> None:
    # The queue's history is not read over and over: a partition past its hour with
    # nothing waiting is settled (a claim never waits again once moved in flight).
    store = ClaimStore(db)
    past = datetime.now(UTC) - timedelta(hours=3)
    name = f"{ClaimStore.QUEUED}_{ClaimStore.hour_of(past)}"
    done = f"{ClaimStore.DONE}_{ClaimStore.day_of(past)}"
    await db[name].insert_many([{"_id": f"T-{unique}-a:1", "queued_in": name},
                                {"_id": f"T-{unique}-b:1", "queued_in": name}])
    assert sorted(await store.queued_claim_ids()) == [f"T-{unique}-a:1", f"T-{unique}-b:1"]
    await db[done].insert_one({"_id": f"T-{unique}-a:1"})
    assert list(await store.queued_claim_ids()) == [f"T-{unique}-b:1"]  # still read
    await db[ClaimStore.CLAIMS].insert_one({"_id": f"T-{unique}-b:1", "status": "open"})
    assert await store.queued_claim_ids() == {}
    # Settled: a document slipped in afterwards is not read by this process any more,
    # while a process starting now (its start-up scan) still reads the partition.
    await db[name].insert_one({"_id": f"T-{unique}-c:1", "queued_in": name})
    assert await store.queued_claim_ids() == {}
    assert list(await ClaimStore(db).queued_claim_ids()) == [f"T-{unique}-c:1"]


async def test_a_claim_update_with_500_claims_queued_costs_what_it_costs_alone(
        db: Db, unique: str) -> None:
    """The measurement behind the queue: one journal entry's update of a claim (by
    ``_id``, which FerretDB runs as a scan of the collection) with 500 other claims in
    ``executor_claims`` (as before the queue) and with the same 500 queued, timed in turns
    so that the machine's load weighs on both alike."""
    me = owner("creator")
    before_db = db.client[f"{db.name}b"]
    try:
        before, after = ClaimStore(before_db), ClaimStore(db)
        for n in range(501):
            event = event_for(f"T-{unique}-{n}")
            await before.create(event, verdict_json=event.model_dump_json(),
                                trace_carrier={}, owner=me, lease_s=600)
            await queue(after, event, me, lease_s=600)
        first = f"T-{unique}-0:1"
        assert await after.acquire(first, me, lease_s=600) is not None
        assert await db[ClaimStore.CLAIMS].count_documents({}) == 1
        assert await before_db[ClaimStore.CLAIMS].count_documents({}) == 501
        times: dict[str, list[float]] = {"before": [], "after": []}
        loop = asyncio.get_running_loop()
        entry = JournalEntry(name="a", state="changing").to_json()
        for n in range(UPDATES):
            for name, where in (("before", before_db), ("after", db)):
                started = loop.time()
                await where[ClaimStore.CLAIMS].update_one(
                    {"_id": first}, {"$set": {f"steps.{n:03d}": entry}})
                times[name].append(loop.time() - started)
    finally:
        await db.client.drop_database(before_db.name)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    print(f"\none claim update (median of {UPDATES}): {median['before'] * 1000:.2f} ms with "
          f"500 claims in executor_claims, {median['after'] * 1000:.2f} ms with them queued")
    assert median["after"] < median["before"] / 2


UPDATES = 40
