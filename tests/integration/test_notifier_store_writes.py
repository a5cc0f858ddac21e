"""How the notifier writes to the real FerretDB (issue 17): inserts (and intake's outbox
deletes) made at once share one round trip (:mod:`services.runtime.group_commit`), each
caller still getting exactly the outcome its own ``insert_one`` would have had; and a
fire-once claim is finished by an insert, never by an update of the claim collection,
which grows with history (:mod:`services.notifier.claims`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from services.notifier.acks import ENGINEERS, Engineer, EngineerDirectory
from services.notifier.claims import Claims
from services.runtime.group_commit import GroupDelete, GroupInsert
from services.runtime.store_metrics import StoreRoundTrips

pytestmark = pytest.mark.integration


@pytest.fixture
async def counted(real_parts: Any, database_name: str, unique: str
                  ) -> AsyncIterator[tuple[AsyncCollection[dict[str, Any]], StoreRoundTrips]]:
    trips = StoreRoundTrips()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        real_parts.mongodb_uri, event_listeners=[trips])
    name = f"{database_name}_store_writes_{unique}"
    try:
        yield client[name][f"c{unique}"], trips
    finally:
        await client.drop_database(name)
        await client.close()


async def test_deletes_made_at_once_share_one_round_trip_and_touch_only_their_documents(
    counted: tuple[AsyncCollection[dict[str, Any]], StoreRoundTrips],
) -> None:
    coll, trips = counted
    await coll.insert_many([{"_id": f"doc-{i}"} for i in range(30)])
    group = GroupDelete(coll)
    before = trips.totals.copy()
    # Twenty published entries at once, one of them twice, and one that is already gone.
    keys = [f"doc-{i}" for i in range(20)] + ["doc-3", "never-there"]
    await asyncio.gather(*(group.delete(k) for k in keys))
    assert (trips.totals - before)[("delete", coll.name)] == 1
    assert sorted([d["_id"] async for d in coll.find({})]) == sorted(
        f"doc-{i}" for i in range(20, 30))
    # Alone, a delete is the plain delete by _id.
    await group.delete("doc-25")
    assert (trips.totals - before)[("delete", coll.name)] == 2
    assert await coll.find_one({"_id": "doc-25"}) is None


async def test_inserts_made_at_once_share_one_round_trip_and_keep_their_own_outcomes(
    counted: tuple[AsyncCollection[dict[str, Any]], StoreRoundTrips],
) -> None:
    coll, trips = counted
    await coll.insert_one({"_id": "taken", "by": "earlier"})
    group = GroupInsert(coll)
    docs = [{"_id": f"doc-{i}", "by": "group"} for i in range(20)]
    docs += [{"_id": "taken", "by": "group"}, {"_id": "twice", "by": "first"},
             {"_id": "twice", "by": "second"}]
    before = trips.totals.copy()
    outcomes = await asyncio.gather(*(group.insert(d) for d in docs), return_exceptions=True)
    assert (trips.totals - before)[("insert", coll.name)] == 1
    refused = [d for d, o in zip(docs, outcomes, strict=True) if o is not None]
    assert all(isinstance(o, DuplicateKeyError) for o in outcomes if o is not None)
    # The taken _id is refused to its caller only; of two callers of one _id, one wins.
    assert [d["_id"] for d in refused] == ["taken", "twice"]
    stored = {d["_id"]: d["by"] async for d in coll.find({})}
    assert stored["taken"] == "earlier"
    [loser] = [d for d in refused if d["_id"] == "twice"]
    assert stored["twice"] != loser["by"]
    assert len(stored) == 22


async def test_inserts_arriving_while_one_is_sent_go_together_in_the_next(
    counted: tuple[AsyncCollection[dict[str, Any]], StoreRoundTrips],
) -> None:
    coll, trips = counted
    group = GroupInsert(coll)

    async def later(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 5))  # spread over the first round trip
        await group.insert({"_id": f"late-{i}"})

    before = trips.totals.copy()
    await asyncio.gather(group.insert({"_id": "first"}), *(later(i) for i in range(30)))
    sent = (trips.totals - before)[("insert", coll.name)]
    assert 1 <= sent < 10, sent
    assert await coll.count_documents({}) == 31


async def test_a_failed_round_trip_fails_every_insert_of_its_group(real_parts: Any) -> None:
    # A store that does not answer (nothing listens on port 1): each caller gets the error
    # insert_one would have raised, none waits forever, none is told it succeeded.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:1", serverSelectionTimeoutMS=300)
    try:
        group = GroupInsert(client["nowhere"]["c"])
        outcomes = await asyncio.wait_for(asyncio.gather(
            *(group.insert({"_id": i}) for i in range(5)), return_exceptions=True), timeout=10)
    finally:
        await client.close()
    assert all(isinstance(o, PyMongoError) for o in outcomes), outcomes


async def test_insert_new_reports_the_ids_already_there(
    counted: tuple[AsyncCollection[dict[str, Any]], StoreRoundTrips],
) -> None:
    coll, trips = counted
    await coll.insert_one({"_id": "a|matrix"})
    group = GroupInsert(coll)
    before = trips.totals.copy()
    skipped = await group.insert_new([{"_id": "a|matrix"}, {"_id": "a|slack"}])
    assert skipped == {"a|matrix"}
    assert (trips.totals - before)[("insert", coll.name)] == 1
    assert await coll.count_documents({}) == 2


async def test_a_claim_is_finished_by_an_insert_and_then_reads_as_done(
    counted: tuple[AsyncCollection[dict[str, Any]], StoreRoundTrips],
) -> None:
    coll, trips = counted
    db = coll.database
    claims = Claims(db, coll.name, lease=timedelta(seconds=60))
    other = Claims(db, coll.name, lease=timedelta(seconds=60))
    now = datetime.now(UTC)
    assert (await claims.claim("post-1|slack", now=now, owner="a")).outcome == "won"
    before = trips.totals.copy()
    await claims.complete("post-1|slack", ref="m1")
    await claims.complete("post-1|slack", ref="m2")  # a slow second finisher
    spent = trips.totals - before
    assert [op for op, name in spent if name == coll.name] == [], spent
    assert [op for op, name in spent if name == f"{coll.name}_done"] == ["insert"], spent
    await claims.release("post-1|slack")  # a late give-up of a finished claim: kept
    # Finished: nobody takes it, even long after the lease; the first result stands.
    later = await other.claim("post-1|slack", now=now + timedelta(hours=1), owner="b")
    assert later.outcome == "done"
    assert later.data["ref"] == "m1"
    doc = await other.get("post-1|slack")
    assert doc is not None
    assert (doc["state"], doc["ref"], doc["owner"]) == ("done", "m1", "a")
    # An unfinished claim reads as claimed.
    await claims.claim("post-2|slack", now=now, owner="a")
    pending = await other.get("post-2|slack")
    assert pending is not None
    assert pending["state"] == "claimed"


async def test_pages_made_at_once_read_the_engineers_roster_once(
    counted: tuple[AsyncCollection[dict[str, Any]], StoreRoundTrips], unique: str,
) -> None:
    coll, trips = counted
    db = coll.database
    await EngineerDirectory(db).register(Engineer(engineer_id=f"e-{unique}", display_name="A",
                                                  tier=1, identities={"webhook": unique}))
    directory = EngineerDirectory(db)
    before = trips.totals.copy()
    rosters = await asyncio.gather(*(directory.up_to_tier(1) for _ in range(20)))
    spent = trips.totals - before
    assert spent[("find", ENGINEERS)] == 1, spent
    assert all([e.engineer_id for e in r] == [f"e-{unique}"] for r in rosters)
