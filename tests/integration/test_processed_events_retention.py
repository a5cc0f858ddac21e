"""processed_events on the real FerretDB: the insert is the check, marks live in day
partitions, and retention drops whole partitions instead of scanning history."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.runtime.idempotency import (
    DEFAULT_RETENTION,
    RETENTION_ENV,
    Begin,
    ProcessedEvents,
    retention_from_env,
)
from services.runtime.store_metrics import StoreRoundTrips

pytestmark = pytest.mark.integration


def at(moment: datetime) -> Any:
    return lambda: moment


def item(key: str, offset: int, *, partition: int = 0, timestamp: datetime | None = None
         ) -> Begin:
    return Begin(key=key, ticket_id="T-1", topic="t", partition=partition, offset=offset,
                 timestamp_ms=None if timestamp is None else int(timestamp.timestamp() * 1000))


def committed_at(position: int | None) -> Any:
    async def committed(_topic: str, _partition: int) -> int | None:
        return position
    return committed


async def test_prune_drops_only_partitions_older_than_the_retention(
        mongo_db: AsyncDatabase[dict[str, object]], unique: str) -> None:
    now = datetime.now(UTC)
    collection = f"processed_{unique}"
    old = ProcessedEvents(mongo_db, collection=collection, clock=at(now - timedelta(days=9)))
    recent = ProcessedEvents(mongo_db, collection=collection, clock=at(now - timedelta(days=7)))
    for i in range(5):
        assert await old.mark("grp", f"old-{i}", ticket_id="T-1")
        assert await recent.mark("grp", f"new-{i}", ticket_id="T-1")
    events = ProcessedEvents(mongo_db, collection=collection, retention=timedelta(days=8),
                             clock=at(now))
    assert [day for day, _ in await events.partitions()] == [
        (now - timedelta(days=9)).date(), (now - timedelta(days=7)).date()]
    assert await events.prune(now=now) == 1
    assert not await events.seen("grp", "old-0")
    assert await events.seen("grp", "new-0")
    assert await events.prune(now=now) == 0


async def test_a_new_batch_costs_one_insert_and_no_read(
        real_parts: Any, database_name: str, unique: str) -> None:
    counter = StoreRoundTrips()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        real_parts.mongodb_uri, event_listeners=[counter])
    try:
        events = ProcessedEvents(client[database_name], collection=f"processed_{unique}")
        done = await events.begin("grp", [item(f"k{i}", i) for i in range(50)],
                                  committed=committed_at(None))
        assert done == set()
        # Day partitions count under one name (a label value per day would grow forever).
        assert dict(counter.totals) == {("insert", f"processed_{unique}_{{day}}"): 1}
    finally:
        await client.close()


async def test_a_copy_is_dropped_only_when_the_record_that_began_it_is_committed(
        mongo_db: AsyncDatabase[dict[str, object]], unique: str) -> None:
    events = ProcessedEvents(mongo_db, collection=f"processed_{unique}")
    assert await events.begin("grp", [item("a", 10), item("b", 11)],
                              committed=committed_at(None)) == set()
    # The same records again before any commit (the process died before committing):
    # both run again.
    assert await events.begin("grp", [item("a", 10), item("b", 11)],
                              committed=committed_at(10)) == set()
    # A producer's copy of "a" at a later offset, once offset 10 is committed: dropped.
    # "b" began at 11, not committed yet: its copy runs (idempotently) rather than be lost.
    assert await events.begin("grp", [item("a", 20), item("b", 21)],
                              committed=committed_at(11)) == {"a"}
    # Once the batch that began "b" is committed, its copies are dropped too: the
    # committed offset, not a second mark, says its effects are durable.
    assert await events.begin("grp", [item("b", 22)], committed=committed_at(12)) == {"b"}
    # A dead-lettered message is forgotten: the same event sent again later runs.
    await events.forget("grp", "a")
    assert await events.begin("grp", [item("a", 30)], committed=committed_at(31)) == set()


async def test_an_old_message_is_checked_against_the_older_partitions(
        mongo_db: AsyncDatabase[dict[str, object]], unique: str) -> None:
    now = datetime.now(UTC)
    collection = f"processed_{unique}"
    then = ProcessedEvents(mongo_db, collection=collection, clock=at(now - timedelta(days=5)))
    await then.begin("grp", [item("old", 3, timestamp=now - timedelta(days=5))],
                     committed=committed_at(None))
    events = ProcessedEvents(mongo_db, collection=collection, clock=at(now))
    # Five days later the group was reset to an earlier offset (a replay): the message is
    # older than the recent partitions, so the older ones are read, and it is committed.
    assert await events.begin("grp", [item("old", 3, timestamp=now - timedelta(days=5))],
                              committed=committed_at(100)) == {"old"}


async def test_prune_of_a_day_with_20000_marks_is_a_drop_not_a_scan(
        mongo_db: AsyncDatabase[dict[str, object]], unique: str) -> None:
    collection = f"processed_{unique}"
    now = datetime.now(UTC)
    aged = ProcessedEvents(mongo_db, collection=collection, clock=at(now - timedelta(days=10)))
    partition = mongo_db[aged.partition_name((now - timedelta(days=10)).date())]
    docs: list[dict[str, object]] = [{"_id": f"grp|{i:06d}", "key": f"{i:06d}"}
                                     for i in range(20_000)]
    for start in range(0, len(docs), 1000):
        await partition.insert_many(docs[start:start + 1000])
    events = ProcessedEvents(mongo_db, collection=collection, clock=at(now))
    began = time.perf_counter()
    assert await events.prune_if_due() == 1
    elapsed = time.perf_counter() - began
    assert await partition.estimated_document_count() == 0
    assert await events.prune_if_due() is None  # not again within the interval
    # A drop is milliseconds; a generous bound for a loaded CI runner.
    assert elapsed < 5, f"dropping a 20,000-mark day took {elapsed:.1f}s"


def test_retention_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RETENTION_ENV, raising=False)
    assert retention_from_env() == DEFAULT_RETENTION == timedelta(days=8)
    monkeypatch.setenv(RETENTION_ENV, "14")
    assert retention_from_env() == timedelta(days=14)
    monkeypatch.setenv(RETENTION_ENV, "0")
    with pytest.raises(ValueError, match=RETENTION_ENV):
        retention_from_env()
    monkeypatch.setenv(RETENTION_ENV, "a week")
    with pytest.raises(ValueError, match=RETENTION_ENV):
        retention_from_env()
