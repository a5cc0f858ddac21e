"""Redelivery has no second effect: each consumer remembers what it has processed.

A record per (consumer group, idempotency key) under a unique index. The key is the
event's ``event_id``; for the helpdesk's requests, which carry none, it is the ticket
number and revision (a retried webhook or a duplicate publish is the same request).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

COLLECTION = "processed_events"


class ProcessedEvents:
    def __init__(
        self, db: AsyncDatabase[dict[str, object]], *, collection: str = COLLECTION
    ) -> None:
        self._coll = db[collection]

    async def ensure_indexes(self) -> None:
        await self._coll.create_index([("consumer", 1), ("key", 1)], unique=True)

    async def seen(self, consumer: str, key: str) -> bool:
        return await self._coll.find_one({"consumer": consumer, "key": key}, {"_id": 1}) is not None

    async def mark(self, consumer: str, key: str, *, ticket_id: str | None) -> bool:
        """Record ``key`` as processed; False when a concurrent delivery recorded it first."""
        try:
            await self._coll.insert_one({
                "consumer": consumer, "key": key, "ticket_id": ticket_id,
                "processed_at": datetime.now(UTC),
            })
        except DuplicateKeyError:
            return False
        return True
