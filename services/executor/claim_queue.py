"""The claim queue's partitions: where claims wait for a worker, and what says one is done.

Split out of :mod:`services.executor.claims` (whose module doc tells the whole protocol:
when a claim is queued, how it is moved into ``executor_claims``, the crash points). This
module owns the two time-partitioned, insert-only collections and what is read from them:

- ``executor_claims_queued_<YYYYMMDDHH>``: the signed claim documents no worker was free
  for, inserted by the verdict's handler, never updated or deleted (FerretDB scans a
  collection for every update or delete);
- ``executor_claims_done_<YYYYMMDD>``: a marker per queue-origin claim closed for good,
  written before it is archived, so its queued copy is never offered again;
- *settled* partitions: a queue partition past its hour (plus :data:`SETTLE_AFTER` for other
  executors' clocks) in which nothing waited stays that way, so this process reads it no
  more (neither the scan nor ``get``);
- retention: a queue partition older than ``EXECUTOR_VERDICT_MAX_AGE_S`` plus a day with
  nothing waiting is dropped whole, then the done partitions older than that and than every
  queue partition left (a marker outlives the queued copy it stands for).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.runtime.store_ops import (
    day_suffix,
    drop_partitions,
    hour_suffix,
    insert_new,
    partitions,
)

DAY = "%Y%m%d"
HOUR = "%Y%m%d%H"
QUEUE_RETENTION_MARGIN = timedelta(days=1)
# EXECUTOR_VERDICT_MAX_AGE_S (a day by default) plus the margin
QUEUE_RETENTION = timedelta(days=1) + QUEUE_RETENTION_MARGIN
# A queue partition is only inserted into during its hour (by the clock of the executor
# that queues); after this much more, one in which nothing waited stays that way.
SETTLE_AFTER = timedelta(minutes=15)


class ClaimQueue:
    QUEUED = "executor_claims_queued"  # + "_YYYYMMDDHH": claims waiting for a worker
    DONE = "executor_claims_done"  # + "_YYYYMMDD": queued claims closed for good

    def __init__(self, db: AsyncDatabase[dict[str, Any]], *,
                 retention: timedelta = QUEUE_RETENTION) -> None:
        self._db = db
        self._retention = retention
        # Partitions past their hour in which the scan found nothing waiting (module doc).
        self._settled: set[str] = set()

    @staticmethod
    def day_of(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime(DAY)

    @staticmethod
    def hour_of(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime(HOUR)

    def partition_for(self, moment: datetime) -> str:
        """The queue partition a claim queued at ``moment`` goes to."""
        return f"{self.QUEUED}_{self.hour_of(moment)}"

    def partition(self, name: str) -> AsyncCollection[dict[str, Any]]:
        return self._db[name]

    async def unsettled(self) -> list[str]:
        """The queue partitions not settled, newest first."""
        return [name for _, name in reversed(await partitions(self._db, self.QUEUED,
                                                              hour_suffix))
                if name not in self._settled]

    async def finished(self, claim_id: str, queued_in: str) -> bool:
        """Whether the queued claim was closed for good: its done marker, written on or
        after the day it was queued, exists."""
        hour = hour_suffix(queued_in.removeprefix(f"{self.QUEUED}_"))
        since = hour.date() if hour is not None else None
        for day, name in reversed(await partitions(self._db, self.DONE, day_suffix)):
            if since is not None and day < since:
                break
            if await self._db[name].find_one({"_id": claim_id}, {"_id": 1}) is not None:
                return True
        return False

    async def mark_done(self, doc: Mapping[str, Any]) -> None:
        """Before a queued claim leaves ``executor_claims`` for good: its queued copy must
        never be offered again (the scan and the move into flight look for this marker)."""
        if doc.get("queued_in"):
            done = self._db[f"{self.DONE}_{self.day_of(datetime.now(UTC))}"]
            await insert_new(done, [{"_id": doc["_id"]}])

    async def waiting(self, in_flight: AsyncCollection[dict[str, Any]]) -> dict[str, str]:
        """The queued claims nobody has taken: claim id -> its queue partition, oldest
        first. Each is neither in ``in_flight`` nor closed for good. Read in that order
        (queue, in flight, done) so a claim taken and closed between the reads is seen in
        flight or as done, never as waiting."""
        now = datetime.now(UTC)
        waiting: dict[str, str] = {}
        read: list[tuple[datetime, str]] = []
        for hour, name in await partitions(self._db, self.QUEUED, hour_suffix):
            if name in self._settled:
                continue
            read.append((hour, name))
            async for doc in self._db[name].find({}, {"_id": 1}):
                waiting.setdefault(str(doc["_id"]), name)
        if waiting:
            taken = {str(doc["_id"]) async for doc in in_flight.find({}, {"_id": 1})}
            since = read[0][0].date()  # markers are written on or after the queue's day
            for day, name in await partitions(self._db, self.DONE, day_suffix):
                if day >= since:
                    taken.update([str(doc["_id"])
                                  async for doc in self._db[name].find({}, {"_id": 1})])
            waiting = {claim_id: name for claim_id, name in waiting.items()
                       if claim_id not in taken}
        # Nothing waits in a partition past its hour: nothing ever will again (a claim
        # leaves the waiting set for good when it is moved in flight).
        still = set(waiting.values())
        self._settled.update(name for hour, name in read if name not in still
                             and hour + timedelta(hours=1) + SETTLE_AFTER < now)
        return waiting

    async def drop_old(self, waiting: Mapping[str, str]) -> int:
        """Drop queue partitions older than the retention in which nothing waits any more,
        then the done partitions older than both the retention and every queue partition
        left (a done marker must outlive the queued copy it stands for)."""
        cutoff = datetime.now(UTC) - self._retention
        still = set(waiting.values())
        dropped = 0
        for hour, name in await partitions(self._db, self.QUEUED, hour_suffix):
            if hour < cutoff and name not in still:
                await self._db.drop_collection(name)
                self._settled.discard(name)
                dropped += 1
        left = [hour.date() for hour, _ in await partitions(self._db, self.QUEUED,
                                                            hour_suffix)]
        return dropped + await drop_partitions(self._db, self.DONE, day_suffix,
                                               min([cutoff.date(), *left]))
