"""processed_events retention on the real FerretDB: old keys are pruned, recent ones kept,
and one process per interval does the (whole-collection) prune."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.runtime.idempotency import (
    DEFAULT_RETENTION,
    RETENTION_ENV,
    ProcessedEvents,
    retention_from_env,
)

pytestmark = pytest.mark.integration


def at(moment: datetime) -> Any:
    return lambda: moment


async def test_prune_deletes_only_entries_older_than_the_retention(
        mongo_db: AsyncDatabase[dict[str, object]], unique: str) -> None:
    now = datetime.now(UTC)
    collection = f"processed_{unique}"
    old = ProcessedEvents(mongo_db, collection=collection, clock=at(now - timedelta(days=9)))
    recent = ProcessedEvents(mongo_db, collection=collection, clock=at(now - timedelta(days=7)))
    for i in range(5):
        assert await old.mark("grp", f"old-{i}", ticket_id="T-1")
        assert await recent.mark("grp", f"new-{i}", ticket_id="T-1")
    events = ProcessedEvents(mongo_db, collection=collection, retention=timedelta(days=8))
    assert await events.prune(now=now) == 5
    assert not await events.seen("grp", "old-0")
    assert await events.seen("grp", "new-0")
    assert await mongo_db[collection].count_documents({}) == 5
    assert await events.prune(now=now) == 0


async def test_one_process_prunes_per_interval(
        mongo_db: AsyncDatabase[dict[str, object]], unique: str) -> None:
    collection = f"processed_{unique}"
    now = datetime.now(UTC)
    aged = ProcessedEvents(mongo_db, collection=collection, clock=at(now - timedelta(days=30)))
    for i in range(3):
        await aged.mark("grp", f"k{i}", ticket_id=None)
    # Five "processes" finish a message at the same moment: one prunes, four skip.
    processes = [ProcessedEvents(mongo_db, collection=collection, clock=at(now))
                 for _ in range(5)]
    results = await asyncio.gather(*(p.prune_if_due() for p in processes))
    assert sorted(results, key=lambda r: r is None) == [3, None, None, None, None]
    # Not again from the same process within the interval, nor from a new one.
    assert await processes[0].prune_if_due() is None
    late = ProcessedEvents(mongo_db, collection=collection, clock=at(now))
    assert await late.prune_if_due() is None
    # Next interval: a process that has not tried for an interval prunes again.
    later = ProcessedEvents(mongo_db, collection=collection, clock=at(now + timedelta(hours=1)))
    assert await later.prune_if_due() == 0
    # The interval markers are ordinary entries: they age out like the rest.
    markers = [d async for d in mongo_db[collection].find({"consumer": "__prune__"})]
    assert len(markers) == 2


async def test_prune_of_20000_entries_costs_one_scan(
        mongo_db: AsyncDatabase[dict[str, object]], unique: str) -> None:
    collection = f"processed_{unique}"
    now = datetime.now(UTC)
    docs: list[dict[str, object]] = [
        {"_id": f"grp|{i:06d}", "consumer": "grp", "key": f"{i:06d}", "ticket_id": None,
         "processed_at": now - timedelta(days=10) + timedelta(seconds=40 * i)}
        for i in range(20_000)]
    for start in range(0, len(docs), 1000):
        await mongo_db[collection].insert_many(docs[start:start + 1000])
    events = ProcessedEvents(mongo_db, collection=collection)
    began = time.perf_counter()
    deleted = await events.prune(now=now)
    elapsed = time.perf_counter() - began
    # 8 days back from now: the first 2 days of the 10 (40 s apart) are gone.
    assert deleted == 2 * 86_400 // 40
    assert await events.seen("grp", f"{deleted:06d}")
    assert not await events.seen("grp", f"{deleted - 1:06d}")
    # ~0.5 s on the development machine; generous for a loaded CI runner.
    assert elapsed < 15, f"pruning 20,000 entries took {elapsed:.1f}s"


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
