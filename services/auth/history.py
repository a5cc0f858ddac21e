"""What auth has decided before: each ticket's latest decided revision, and the
repeated-interventions count per server.

Each is one ``_id``-keyed document read *and* written in one round trip, so a ticket costs
auth one history round trip, two when it is verified (it was four: two reads, a
find-and-modify and an update):

- ``auth_history``, ``ticket:<ticket_id>``: ``latest_revision`` and ``at`` (the last
  decision). A first revision is an *insert* (refused only when the ticket was decided
  before, and then read back), so the common case costs the same however many tickets the
  collection holds; a later revision is a ``findAndModify`` raising ``latest_revision`` with
  ``$max`` and returning the document before. Either way the decision is recorded before
  the verdict is published: a crash in between re-decides the same revision, which is never
  stale.
- ``auth_history_servers``, ``server:<service_id>``: ``interventions``, a set of
  ``{ticket_id, at}`` (one per verified ticket, added with ``$addToSet``, so a redelivered
  decision adds nothing) and ``last_at``. The document after the update is counted, so the
  count includes every verified ticket that came before, and this ticket's own entry is
  left out. Only a verdict that is *verified* whatever the count is recorded (the count
  only marks it for review).

``at`` of an intervention is the ticket revision's ``occurred_at`` (when the customer
submitted it), not when auth ran: a redelivered ticket sees the same window and the same
count.

Cost that does not grow with history: FerretDB 1.24 reads a whole collection for nearly
every operation, ``_id`` lookups included, so both collections hold only what a decision
can still need. At most once an hour per process, ticket documents not decided on for
``retention`` (default 8 days, above Kafka's topic retention and the runtime's
``processed_events`` retention: the horizon within which an older revision can still arrive)
and server documents without an intervention for twice the review window are deleted (one
``delete_many`` each); a server document's own entries older than twice the window are
pulled in batches of :data:`PRUNE_BATCH` (one ``$pullAll``), so it stays small.

Concurrency: a ticket's revisions arrive in order (one partition, one consumer), but two
tickets of one server may be decided at once; FerretDB's updates are read-then-replace, so
concurrent ``$addToSet``s on one document could lose one. Within a process the server's
update is serialised by a lock per server; across auth replicas a lost entry means one
review fewer, never a wrong verdict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.events import TicketSubmitted
from services.runtime.group_commit import GroupInsert

log = logging.getLogger("intervention.auth.history")

COLLECTION: Final = "auth_history"
# Server entries this much older than the review window are dropped.
_RETENTION_FACTOR: Final = 2
PRUNE_BATCH: Final = 16
"""Stale entries of a server pulled together (one update), so pruning costs a fraction of a
round trip per ticket and a document holds fewer than this many stale entries."""
PRUNE_EVERY: Final = timedelta(hours=1)


def _now() -> datetime:
    return datetime.now(UTC)


class VerdictHistory:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, collection: str = COLLECTION,
                 retention: timedelta = timedelta(days=8),
                 window: timedelta = timedelta(days=30),
                 clock: Callable[[], datetime] = _now) -> None:
        """``retention``: how long a ticket's latest decided revision is kept after its last
        decision; ``window``: the review window (server documents idle for twice as long are
        dropped)."""
        self._tickets = db[collection]
        # A consumer batch's first revisions share one insert (services.runtime.group_commit).
        self._ticket_inserts = GroupInsert(self._tickets)
        self._servers = db[f"{collection}_servers"]
        self._retention = retention
        self._window = window
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._pruned_at: datetime | None = None

    async def ensure_indexes(self) -> None:
        """Nothing to create: every query is by ``_id``. Kept so callers need not know."""

    async def note_decision(self, ticket: TicketSubmitted) -> int | None:
        """Record that ``ticket``'s revision is being decided; the highest revision decided
        before (None for a ticket auth has not seen within the retention)."""
        await self.prune()
        key = f"ticket:{ticket.ticket_id}"
        if ticket.revision == 1:
            # Most tickets have one revision: the insert is the check (it costs the same at
            # any collection size, where a read scans it). Refused, the ticket was decided
            # before - a redelivery, or a later revision first - and is read back.
            try:
                await self._ticket_inserts.insert(
                    {"_id": key, "latest_revision": 1, "at": self._clock()})
                return None
            except DuplicateKeyError:
                doc = await self._tickets.find_one({"_id": key})
                if doc is not None:
                    return int(doc["latest_revision"])
        before = await _upsert(
            self._tickets, key,
            {"$max": {"latest_revision": ticket.revision}, "$set": {"at": self._clock()}},
            ReturnDocument.BEFORE)
        return None if before is None else int(before["latest_revision"])

    async def note_intervention(self, service_id: str, ticket: TicketSubmitted, *,
                                window: timedelta) -> int:
        """Record ``ticket`` as verified for ``service_id``; how many *other* tickets were
        verified for it within ``window`` of ``ticket`` (before it, or after it: a later
        ticket decided first is just as recent)."""
        key = f"server:{service_id}"
        entry = {"ticket_id": ticket.ticket_id, "at": ticket.occurred_at}
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            doc = await _upsert(self._servers, key, {
                "$addToSet": {"interventions": entry},
                "$max": {"last_at": ticket.occurred_at}}, ReturnDocument.AFTER)
            entries = (doc or {}).get("interventions", ())
            cutoff = ticket.occurred_at - _RETENTION_FACTOR * window
            stale = [e for e in entries if _utc(e["at"]) < cutoff]
            if len(stale) >= PRUNE_BATCH:
                # By exact value: FerretDB ignores a $pull with a condition.
                await self._servers.update_one({"_id": key}, {"$pullAll": {"interventions": stale}})
        if not lock.locked() and len(self._locks) > 10_000:
            self._locks.clear()
        since = ticket.occurred_at - window
        return len({e["ticket_id"] for e in entries
                    if e["ticket_id"] != ticket.ticket_id and _utc(e["at"]) >= since})

    async def prune(self) -> None:
        """At most once per :data:`PRUNE_EVERY` per process: drop what no decision needs."""
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            # Documents without ``at`` were written before it existed (tickets decided, and
            # the servers' counts kept in this collection then): they go at the first prune.
            await self._tickets.delete_many({"$or": [{"at": {"$lt": now - self._retention}},
                                                     {"at": {"$exists": False}}]})
            await self._servers.delete_many(
                {"last_at": {"$lt": now - _RETENTION_FACTOR * self._window}})
        except Exception:  # housekeeping; the next hour tries again
            log.warning("could not prune auth's history", exc_info=True)


async def _upsert(coll: AsyncCollection[dict[str, Any]], key: str, update: dict[str, Any],
                  returned: bool) -> dict[str, Any] | None:
    for _ in range(3):
        try:
            return await coll.find_one_and_update(
                {"_id": key}, update, upsert=True, return_document=returned)
        except DuplicateKeyError:
            # Concurrent upserts of a new _id: on FerretDB all but one fail with a duplicate
            # key (the document exists now), so the update is simply made again.
            continue
    raise RuntimeError(f"auth's history document {key} could not be updated")


def _utc(at: datetime) -> datetime:
    # BSON dates are UTC; a client without tz_aware=True returns them naive.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
