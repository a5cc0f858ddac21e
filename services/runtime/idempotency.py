"""Redelivery has no second effect: each consumer remembers what it has begun to process.

One mark per (consumer group, idempotency key). The key is the event's ``event_id``; for
the helpdesk's requests, which carry none, it is the ticket number and revision (a retried
webhook or a duplicate publish is the same request). The pair is the mark's ``_id``.

**An insert is the check.** On FerretDB 1.24 every read scans its collection (measured:
a find by ``_id`` 1.8 ms at 1,000 documents, 15 ms at 10,000, 44 ms at 30,000), while an
insert costs ~0.5 ms whatever the size, and a duplicate ``_id`` is refused atomically. So
the consumer runtime does not ask "seen?" before each message. For a whole batch it makes
ONE insert: before the handlers run, the batch's marks, one ``insert_many``
(:meth:`ProcessedEvents.begin`), each naming the record (topic, partition, offset) that
began it. Keys the store accepts are new, and the common path costs no read at all.

Only a key whose mark is refused (a redelivery after a crash, or a producer's re-sent
copy) is read back. Begun by a record below the group's committed offset, its effects
were durable before that commit and the copy is dropped; otherwise (the process died
mid-batch, or before its commit; another copy is still in flight; a rebalance refused the
commit) the handler runs again, idempotently (derived event ids, insert-wins claims),
rather than lose the effect. The committed offset is what says "done": a second "done"
mark per batch, written just before the commit, would only cover the moment between the
two, and cost a store round trip per batch (per message at a steady rate) to spare a rare
idempotent re-run. A message dead-lettered after its retries has its mark removed
(:meth:`forget`), so the same event sent again later is handled, not dropped. A mark
written by :meth:`mark` (no source record) counts as processed.

**Bounded by time, dropped whole.** Marks live in one collection per UTC day
(``processed_events_YYYYMMDD``), written to today's. A message whose Kafka timestamp is
older than today (produced before midnight, a backlog after an outage, a replay) is also
looked up in the older partitions within the retention: a read, off the common path.
Partitions older than ``PROCESSED_EVENTS_RETENTION_DAYS`` (default 8, above Kafka's 7-day
topic retention) are dropped whole, at most hourly per process: one cheap ``drop`` instead
of a delete that scans history. What an insert alone does not catch is a producer
re-sending, after midnight and with a new timestamp, an event first handled before it; the
handlers' own idempotency covers that case.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.runtime.store_ops import day_suffix, drop_partitions, insert_new, partitions

log = logging.getLogger(__name__)

COLLECTION = "processed_events"
RETENTION_ENV = "PROCESSED_EVENTS_RETENTION_DAYS"
DEFAULT_RETENTION = timedelta(days=8)
DEFAULT_PRUNE_EVERY = timedelta(hours=1)

Document = dict[str, Any]
Committed = Callable[[str, int], Awaitable[int | None]]
"""The consumer group's committed offset of (topic, partition): the next offset it would
read after a restart, or None when nothing is committed."""




def _doc_id(consumer: str, key: str) -> str:
    return f"{consumer}|{key}"


def retention_from_env(default: timedelta = DEFAULT_RETENTION) -> timedelta:
    """``PROCESSED_EVENTS_RETENTION_DAYS`` (a positive number of days), else ``default``."""
    raw = os.environ.get(RETENTION_ENV, "").strip()
    if not raw:
        return default
    try:
        days = float(raw)
    except ValueError:
        raise ValueError(f"{RETENTION_ENV} must be a number of days, not {raw!r}") from None
    if days <= 0:
        raise ValueError(f"{RETENTION_ENV} must be positive, not {raw!r}")
    return timedelta(days=days)


@dataclass(frozen=True, kw_only=True)
class Begin:
    """One message a consumer is about to handle: its key and where it came from."""

    key: str
    ticket_id: str | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


def _source(item: Begin) -> Document:
    return {"t": item.topic, "p": item.partition, "o": item.offset}


class ProcessedEvents:
    def __init__(
        self, db: AsyncDatabase[dict[str, object]], *, collection: str = COLLECTION,
        retention: timedelta | None = None, prune_every: timedelta = DEFAULT_PRUNE_EVERY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._base = collection
        # Must outlive the topics' retention, or a redelivered message would run again.
        self.retention = retention if retention is not None else retention_from_env()
        self.prune_every = prune_every
        self._clock = clock
        self._next_prune = 0.0  # time.monotonic(): the first batch after start prunes
        self._pruning = False

    # -- partitions ------------------------------------------------------------------------

    def partition_name(self, day: date) -> str:
        return f"{self._base}_{day:%Y%m%d}"

    def _partition(self, day: date) -> AsyncCollection[Document]:
        return self._db[self.partition_name(day)]

    def _days_back(self, now: datetime) -> list[date]:
        """Today first, back to the oldest day still within the retention."""
        days = max(1, int(self.retention.total_seconds() // 86_400) + 1)
        today = now.astimezone(UTC).date()
        return [today - timedelta(days=n) for n in range(days)]

    async def ensure_indexes(self) -> None:
        """Nothing beyond ``_id`` is needed; kept so every store has the same bootstrap."""

    # -- the consumer's path ---------------------------------------------------------------

    async def begin(self, consumer: str, items: Sequence[Begin], *,
                    committed: Committed) -> set[str]:
        """Mark ``items`` begun in one insert per recent partition; return the keys whose
        effects are already durable (to be dropped as duplicates). Keys repeated inside
        ``items`` are marked once (the runtime handles a batch's copies in order)."""
        first: dict[str, Begin] = {}
        for item in items:
            first.setdefault(item.key, item)
        if not first:
            return set()
        now = self._clock()
        recent = self._days_back(now)[:1]
        docs = [{"_id": _doc_id(consumer, item.key), "consumer": consumer, "key": item.key,
                 "ticket_id": item.ticket_id, "at": now, "source": _source(item)}
                for item in first.values()]
        refused = set().union(*await asyncio.gather(
            *(insert_new(self._partition(day), docs) for day in recent)))
        # A message older than the partitions just written may have been begun before them.
        oldest = datetime.combine(recent[-1], datetime.min.time(), UTC)
        older = [item.key for item in first.values()
                 if item.timestamp_ms is not None
                 and item.timestamp_ms / 1000 < oldest.timestamp()
                 and _doc_id(consumer, item.key) not in refused]
        marks: dict[str, Document] = {}
        lookups = [(recent, sorted(refused))]
        if older:
            lookups.append((self._days_back(now)[1:], [_doc_id(consumer, k) for k in older]))
        for days, ids in lookups:
            if ids:
                for mark in await self._find(days, ids):
                    marks.setdefault(str(mark["_id"]), mark)
        done: set[str] = set()
        cache: dict[tuple[str, int], int | None] = {}
        for item in first.values():
            found = marks.get(_doc_id(consumer, item.key))
            if found is None:
                continue
            if await self._durable(found, committed, cache):
                done.add(item.key)
        return done

    @staticmethod
    async def _durable(mark: Document, committed: Committed,
                       cache: dict[tuple[str, int], int | None]) -> bool:
        source = mark.get("source")
        if not isinstance(source, dict):
            return True  # written by mark(): processed
        tp = (str(source.get("t")), int(source.get("p", -1)))
        offset = int(source.get("o", -1))
        if tp not in cache:
            cache[tp] = await committed(*tp)
        position = cache[tp]
        # Below the committed offset: its effects were durable before the commit. Else it
        # is this record again (the process died before committing) or another one not yet
        # committed: either way the handler runs again, idempotently, rather than lose it.
        return position is not None and offset < position

    async def _find(self, days: Iterable[date], ids: list[str]) -> list[Document]:
        found: list[Document] = []
        for day in days:
            found.extend(await self._partition(day).find({"_id": {"$in": ids}}).to_list())
        return found

    async def forget(self, consumer: str, key: str) -> None:
        """Remove ``key``'s mark (a dead-lettered message: the same event sent again
        later must be handled). A rare path; it scans today's partition."""
        await self._partition(self._days_back(self._clock())[0]).delete_one(
            {"_id": _doc_id(consumer, key)})

    # -- direct use (tools, tests) -------------------------------------------------------------

    async def seen(self, consumer: str, key: str) -> bool:
        """Whether ``key`` has a mark within the retention (reads every partition)."""
        return bool(await self._find(self._days_back(self._clock()),
                                     [_doc_id(consumer, key)]))

    async def mark(self, consumer: str, key: str, *, ticket_id: str | None) -> bool:
        """Record ``key`` as processed; False when it was already recorded today."""
        try:
            await self._partition(self._days_back(self._clock())[0]).insert_one({
                "_id": _doc_id(consumer, key), "consumer": consumer, "key": key,
                "ticket_id": ticket_id, "at": self._clock(),
            })
        except DuplicateKeyError:
            return False
        return True

    # -- retention -------------------------------------------------------------------------------

    async def partitions(self) -> list[tuple[date, str]]:
        return await partitions(self._db, self._base, day_suffix)

    async def prune(self, *, now: datetime | None = None) -> int:
        """Drop the partitions wholly older than ``retention`` before ``now``; how many."""
        oldest = min(self._days_back(now or self._clock()))
        return await drop_partitions(self._db, self._base, day_suffix, oldest)

    async def prune_if_due(self) -> int | None:
        """Prune when this process has not tried for ``prune_every``. Returns how many
        partitions went, None when it did not run. Never raises: a failed prune is logged
        and tried again next interval. Dropping is idempotent, so processes need no turn."""
        if self._pruning or time.monotonic() < self._next_prune:
            return None
        self._pruning = True
        self._next_prune = time.monotonic() + self.prune_every.total_seconds()
        try:
            dropped = await self.prune()
            if dropped:
                log.info("dropped %d processed-event partitions older than %g days", dropped,
                         self.retention.total_seconds() / 86_400)
            return dropped
        except Exception:  # housekeeping must never stop consumption
            log.warning("pruning processed events failed; retrying next interval",
                        exc_info=True)
            return None
        finally:
            self._pruning = False
