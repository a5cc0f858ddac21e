"""What auth has decided before: the repeated-interventions count and each ticket's latest
decided revision.

Two kinds of document in one collection, both read and written by ``_id`` only (FerretDB
1.24, the local and test store, decodes every document of a collection for any other
filter, ~35x slower than an ``_id`` lookup, so a query on ``ticket_id`` would slow down
with every ticket ever decided):

- ``ticket:<ticket_id>``: ``latest_revision``, raised with ``$max`` on every decision;
- ``server:<service_id>``: ``interventions``, a set of ``{ticket_id, at}``, one per
  verified revision, added with ``$addToSet`` (so recording a redelivered decision again is
  a no-op and two auth replicas never overwrite each other's entries).

``at`` is the ticket revision's ``occurred_at`` (when the customer submitted it), not when
auth ran: a redelivered ticket sees the same window and gets the same count.

An intervention is a *verified* verdict: auth's own record that work was authorized on the
server. Revisions of one ticket are one intervention. A verdict recorded whose publication
later failed for good (DLQ) still counts: on the side of more review.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from schemas.events import TicketSubmitted

COLLECTION: Final = "auth_history"
# Entries this much older than the review window are dropped when a server's set is
# written, so a long-lived server's document stays small.
_RETENTION_FACTOR: Final = 2


class VerdictHistory:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, collection: str = COLLECTION) -> None:
        self._coll = db[collection]

    async def ensure_indexes(self) -> None:
        """Nothing to create: every query is by ``_id``. Kept so callers need not know."""

    async def latest_revision(self, ticket_id: str) -> int | None:
        doc = await self._coll.find_one({"_id": f"ticket:{ticket_id}"})
        return None if doc is None else int(doc["latest_revision"])

    async def prior_interventions(
        self, service_id: str, *, ticket: TicketSubmitted, window: timedelta
    ) -> int:
        """Other tickets verified for ``service_id`` submitted within ``window`` before
        ``ticket`` (or after it: a later ticket decided first is just as recent)."""
        doc = await self._coll.find_one({"_id": f"server:{service_id}"})
        since = ticket.occurred_at - window
        return len(
            {
                entry["ticket_id"]
                for entry in (doc or {}).get("interventions", ())
                if entry["ticket_id"] != ticket.ticket_id and _utc(entry["at"]) >= since
            }
        )

    async def record_decision(self, ticket: TicketSubmitted) -> None:
        await self._coll.update_one(
            {"_id": f"ticket:{ticket.ticket_id}"},
            {"$max": {"latest_revision": ticket.revision}},
            upsert=True,
        )

    async def record_intervention(
        self, service_id: str, ticket: TicketSubmitted, *, window: timedelta
    ) -> None:
        key = {"_id": f"server:{service_id}"}
        entry = {"ticket_id": ticket.ticket_id, "at": ticket.occurred_at}
        doc = await self._coll.find_one_and_update(
            key,
            {"$addToSet": {"interventions": entry}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        # Pruned by exact value: FerretDB ignores a $pull with a condition.
        cutoff = ticket.occurred_at - _RETENTION_FACTOR * window
        stale = [e for e in (doc or {}).get("interventions", ()) if _utc(e["at"]) < cutoff]
        for old in stale:
            await self._coll.update_one(key, {"$pull": {"interventions": old}})


def _utc(at: datetime) -> datetime:
    # BSON dates are UTC; a client without tz_aware=True returns them naive.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
