"""What intake remembers: which ticket revisions it accepted, each ticket's owner and
latest revision, and webhook revisions.

``intake_tickets`` holds one document per accepted ``(ticket_id, revision)`` (``_id``
``<ticket_id>:<revision>``): the record that decides, across intake's two doors (HTTP and
the helpdesk topic) and across processes, which content a revision has - its insert is the
only atomic first-wins operation FerretDB has. It is written after the revision's outbox
entry is durable (:mod:`services.intake.outbox`), with the fingerprint of the request and
the digest of the TicketSubmitted's exact bytes, and never updated: the relay publishes an
entry only when this record names that entry's bytes, so one revision has one set of bytes
on the bus. It holds no credentials, no ciphertext and no customer text.

``intake_ticket_owners`` (``_id`` = ticket id) is written by the edge when a ticket is first
seen (its integration and account, :mod:`services.intake.edge`) and carries the ticket's
highest revision, ``latest``, so a new ticket costs one insert for both, and a later
revision one ``findAndModify`` raising it. (Before, the highest revision lived in
``intake_ticket_heads``; a ticket owned before that change is read from there once.)

Cost that does not grow with history: the hot path only *inserts* into these two growing
collections (an insert costs the same at any collection size on FerretDB, which reads the
whole collection for every other operation); they are read only for a later revision, a
retry or a conflict.

``intake_revision_keys`` / ``intake_revision_counters`` give helpdesk webhooks, which carry
no revision number, one: each new delivery of a ticket gets the next number, a retried
delivery the number it got the first time.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.runtime.group_commit import GroupInsert

TICKETS = "intake_tickets"
OWNERS = "intake_ticket_owners"
LEGACY_HEADS = "intake_ticket_heads"
REVISION_KEYS = "intake_revision_keys"
REVISION_COUNTERS = "intake_revision_counters"

ClaimStatus = Literal["pending", "submitted"]


def _ms(at: datetime) -> datetime:
    """UTC truncated to BSON's millisecond, so a stored time compares equal when read back."""
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def claim_key(ticket_id: str, revision: int) -> str:
    """The claim's ``_id``. Lookups by ``_id`` are the ones FerretDB's SQLite backend answers
    without reading the collection, so every per-claim operation goes by it; ticket ids
    cannot contain ``:``, so the key is unambiguous."""
    return f"{ticket_id}:{revision}"


@dataclass(frozen=True, kw_only=True)
class Claim:
    """Intake's record of one accepted ticket revision (no secrets, no customer text)."""

    ticket_id: str
    revision: int
    fingerprint: str
    event_id: UUID
    source: str
    account_id: str
    category: str
    category_source: str
    scope: str
    confidence: str
    status: ClaimStatus
    claimed_at: datetime
    submitted_at: datetime | None = None
    event_digest: str | None = None
    """SHA-256 of the winning TicketSubmitted's exact bytes (set on the stored record)."""

    @property
    def key(self) -> str:
        return claim_key(self.ticket_id, self.revision)

    def to_document(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["_id"] = self.key
        doc["event_id"] = str(self.event_id)
        doc["claimed_at"] = _ms(self.claimed_at)
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Claim:
        def aware(value: Any) -> Any:
            if isinstance(value, datetime) and value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            return value

        return cls(
            ticket_id=doc["ticket_id"], revision=doc["revision"],
            fingerprint=doc["fingerprint"], event_id=UUID(doc["event_id"]),
            source=doc["source"], account_id=doc["account_id"], category=doc["category"],
            category_source=doc["category_source"], scope=doc["scope"],
            confidence=doc["confidence"], status=doc["status"],
            claimed_at=aware(doc["claimed_at"]), submitted_at=aware(doc.get("submitted_at")),
            event_digest=doc.get("event_digest"),
        )


class TicketStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def get(self, ticket_id: str, revision: int) -> Claim | None:
        """The accepted record of this revision, if any."""
        ...

    async def latest_revision(self, ticket_id: str) -> int | None: ...

    async def record_revision(self, ticket_id: str, revision: int) -> int | None:
        """Raise the ticket's latest revision to ``revision`` (never lower it); return the
        latest before, None for a ticket without one."""
        ...

    async def claim(self, claim: Claim) -> Claim | None:
        """Insert ``claim`` as the revision's accepted record; None when it is now the one,
        else the record already there."""
        ...


class MongoTicketStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, collection: str = TICKETS,
                 owners: str = OWNERS) -> None:
        self._coll = db[collection]
        # The ticket's owner document, written by the edge on the ticket's first request,
        # carries its highest revision: read and raised by _id in one round trip (a query
        # for the highest revision among the claims would read the whole collection).
        self._owners = db[owners]
        self._legacy_heads = db[LEGACY_HEADS]
        # A consumer batch's requests are accepted at the same moment: their records share
        # insert round trips (services.runtime.group_commit).
        self._inserts = GroupInsert(self._coll)

    async def ensure_indexes(self) -> None:
        await self._coll.create_index(
            [("ticket_id", 1), ("revision", 1)], unique=True, name="ticket_revision_unique"
        )

    async def get(self, ticket_id: str, revision: int) -> Claim | None:
        doc = await self._coll.find_one({"_id": claim_key(ticket_id, revision)})
        return Claim.from_document(doc) if doc is not None else None

    async def latest_revision(self, ticket_id: str) -> int | None:
        doc = await self._owners.find_one({"_id": ticket_id})
        if doc is not None and "latest" in doc:
            return int(doc["latest"])
        return await self._legacy_latest(ticket_id)

    async def record_revision(self, ticket_id: str, revision: int) -> int | None:
        for _ in range(3):
            try:
                before = await self._owners.find_one_and_update(
                    {"_id": ticket_id}, {"$max": {"latest": revision}}, upsert=True,
                    return_document=ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:
                # Concurrent upserts of a new _id: on FerretDB all but one fail with a
                # duplicate key (the document exists now), so the update is simply made again.
                continue
            if before is not None and "latest" in before:
                return int(before["latest"])
            return await self._legacy_latest(ticket_id)
        raise RuntimeError(f"the revision head of ticket {ticket_id} could not be updated")

    async def _legacy_latest(self, ticket_id: str) -> int | None:
        # A ticket owned before its head moved into the owner document.
        doc = await self._legacy_heads.find_one({"_id": ticket_id})
        return int(doc["latest"]) if doc is not None else None

    async def claim(self, claim: Claim) -> Claim | None:
        try:
            await self._inserts.insert(claim.to_document())
        except DuplicateKeyError:
            existing = await self.get(claim.ticket_id, claim.revision)
            if existing is None:  # cannot happen (never deleted); insist once
                return await self.claim(claim)
            return existing
        return None


def _digest(*parts: str) -> str:
    # Hashed: ticket and delivery ids are the sender's text, of any length and alphabet
    # (lone surrogates from JSON included), and must become safe MongoDB ids.
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Delivery:
    revision: int
    first_seen: datetime
    """When this delivery first arrived: the same on every retry, so a request built from
    it (e.g. a default ``signed_at``) is identical on every retry too."""


class RevisionBook:
    """Revision numbers for webhook deliveries, which carry none of their own."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._keys = db[REVISION_KEYS]
        self._counters = db[REVISION_COUNTERS]

    async def delivery(self, source: str, ticket_id: str, delivery: str, *, now: datetime
                       ) -> Delivery:
        """This delivery of ``ticket_id``: the next free revision the first time, the same
        revision (and first-seen time) on every retry."""
        key = _digest(source, ticket_id, delivery)
        found = await self._keys.find_one({"_id": key})
        if found is not None:
            return _delivery(found)
        counter = await self._counters.find_one_and_update(
            {"_id": _digest(source, ticket_id)},
            {"$inc": {"last": 1}},
            upsert=True, return_document=ReturnDocument.AFTER,
        )
        assert counter is not None  # upsert=True with ReturnDocument.AFTER always returns one
        record = {"_id": key, "ticket_id": ticket_id, "revision": int(counter["last"]),
                  "first_seen": _ms(now)}
        try:
            await self._keys.insert_one(record)
        except DuplicateKeyError:
            # A concurrent retry of the same delivery numbered it first; its number stands
            # (ours is skipped: revisions need only increase, not be contiguous).
            found = await self._keys.find_one({"_id": key})
            if found is not None:
                return _delivery(found)
        return _delivery(record)


def _delivery(doc: dict[str, Any]) -> Delivery:
    first_seen = doc["first_seen"]
    if first_seen.tzinfo is None:
        first_seen = first_seen.replace(tzinfo=UTC)
    return Delivery(revision=int(doc["revision"]), first_seen=first_seen)
