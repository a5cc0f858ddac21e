"""What intake remembers: which ticket revisions it accepted, and webhook revisions.

``intake_tickets`` holds one document per accepted ``(ticket_id, revision)`` (``_id``
``<ticket_id>:<revision>``, plus a unique ``(ticket_id, revision)`` index) - the claim that
makes intake idempotent across its two doors (HTTP and the helpdesk topic) and across
processes, without transactions (FerretDB has none). A claim is ``pending`` until its
TicketSubmitted is published and ``submitted`` after; it holds no credentials, no
ciphertext and no customer text, only what deduplication and the HTTP answer need.

``intake_ticket_heads`` keeps each ticket's highest revision, to refuse stale ones.

A claim alone promises nothing: a revision is accepted once its TicketSubmitted is in
intake's outbox (:mod:`services.intake.outbox`), whose first insert wins. A ``pending``
claim without an entry is an attempt that failed or crashed before it was durable; the
next request for the revision (same content) finishes it.

``intake_revision_keys`` / ``intake_revision_counters`` give helpdesk webhooks, which carry
no revision number, one: each new delivery of a ticket gets the next number, a retried
delivery the number it got the first time.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

TICKETS = "intake_tickets"
TICKET_HEADS = "intake_ticket_heads"
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
        )


class TicketStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def get(self, ticket_id: str, revision: int) -> Claim | None: ...

    async def latest_revision(self, ticket_id: str) -> int | None: ...

    async def record_revision(self, ticket_id: str, revision: int) -> int | None:
        """Raise the ticket's latest revision to ``revision`` (never lower it); return the
        latest before, None for a new ticket."""
        ...

    async def claim(self, claim: Claim) -> Claim | None:
        """Insert ``claim``; None when it is now ours, else the claim already there."""
        ...

    async def release(self, claim: Claim) -> None: ...

    async def mark_submitted(self, claim: Claim, *, at: datetime) -> None: ...


class MongoTicketStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, collection: str = TICKETS,
                 heads: str = TICKET_HEADS) -> None:
        self._coll = db[collection]
        # One document per ticket with its highest revision, read and raised by _id in one
        # round trip: a query for the highest revision among the claims reads the whole
        # collection on FerretDB's SQLite backend (measured: slower with every ticket).
        self._heads = db[heads]

    async def ensure_indexes(self) -> None:
        await self._coll.create_index(
            [("ticket_id", 1), ("revision", 1)], unique=True, name="ticket_revision_unique"
        )

    async def get(self, ticket_id: str, revision: int) -> Claim | None:
        doc = await self._coll.find_one({"_id": claim_key(ticket_id, revision)})
        return Claim.from_document(doc) if doc is not None else None

    async def latest_revision(self, ticket_id: str) -> int | None:
        doc = await self._heads.find_one({"_id": ticket_id})
        return int(doc["latest"]) if doc is not None else None

    async def record_revision(self, ticket_id: str, revision: int) -> int | None:
        for _ in range(3):
            try:
                before = await self._heads.find_one_and_update(
                    {"_id": ticket_id}, {"$max": {"latest": revision}}, upsert=True,
                    return_document=ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:
                # Concurrent upserts of a new _id: on FerretDB all but one fail with a
                # duplicate key (the head exists now), so the update is simply made again.
                continue
            return int(before["latest"]) if before is not None else None
        raise RuntimeError(f"the revision head of ticket {ticket_id} could not be updated")

    async def claim(self, claim: Claim) -> Claim | None:
        try:
            await self._coll.insert_one(claim.to_document())
        except DuplicateKeyError:
            existing = await self.get(claim.ticket_id, claim.revision)
            if existing is None:  # released between our insert and read: try once more
                return await self.claim(claim)
            return existing
        return None

    async def release(self, claim: Claim) -> None:
        # Conditional, hence not atomic on FerretDB, but only the claim's holder releases
        # it (or, past the lease, a request that found it never became durable).
        await self._coll.delete_one(
            {"_id": claim.key, "fingerprint": claim.fingerprint, "status": "pending",
             "claimed_at": _ms(claim.claimed_at)}
        )

    async def mark_submitted(self, claim: Claim, *, at: datetime) -> None:
        result = await self._coll.update_one(
            {"_id": claim.key}, {"$set": {"status": "submitted", "submitted_at": _ms(at)}}
        )
        if result.matched_count == 0:
            # The claim was given back (a store error made its writer release it) after the
            # outbox entry landed: the published revision must still answer "duplicate".
            doc = replace(claim, status="submitted", submitted_at=at).to_document()
            doc["submitted_at"] = _ms(at)
            with contextlib.suppress(DuplicateKeyError):  # someone re-claimed it: theirs
                await self._coll.insert_one(doc)


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
