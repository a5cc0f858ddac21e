"""The tamper-evident audit trail: an append-only MongoDB collection with a per-ticket hash chain.

Every record of a ticket carries ``seq`` (1, 2, 3, ...), the ``prev_hash`` of record
``seq - 1`` (or :data:`GENESIS_HASH`) and its own ``hash``: SHA-256 (hex) of the canonical
JSON (:func:`schemas.canonical.canonical_json`) of its content fields - ``ticket_id``,
``seq``, ``record_id``, ``kind``, ``actor``, ``at`` (ISO-8601 UTC, milliseconds, ``Z``),
``data`` and ``prev_hash``. Editing, deleting, inserting or reordering a record breaks the
chain at that record, and :func:`verify_chain` names it.

Concurrency without transactions (FerretDB has none): a unique index on
``(ticket_id, seq)`` (and the record's ``_id``, :func:`record_key`) lets exactly one writer
take each position; a loser gets a duplicate key error, re-reads the head and retries
with jittered backoff, so the chain never forks. A unique index on
``(ticket_id, record_id)`` makes appends idempotent: ``record_id`` is the caller's key (an
``event_id``, or ``f"{event_id}:step-3"``), and a redelivered append returns the record
already written.

Deleting the newest records leaves a chain that is still internally consistent, so a
second collection (``<collection>_heads``) keeps each ticket's head (``seq`` and a
``"<seq>:<hash>"`` marker), moved only forward (``$max``) after the record itself is
durable. Writers start from the head, so the common append never reads the records
collection. The verifier treats a head behind the last record as a crash between the two
writes (harmless); a head past the last record, or disagreeing with the record at its
``seq``, is tampering.

Against someone who can write the database (issue 15), two more things:

- **Keyed records.** A service appends with its own Ed25519 audit key
  (``audit-<service>.key``, :class:`AuditSigner`): the record carries ``key_id`` and
  ``signature`` = Ed25519 over ``b"intervention-audit-record:v1:" + hash`` (the hash covers
  every content field and ``prev_hash``). The verifier, given the public keys
  (:func:`services.runtime.keys.load_audit_verify_keys`), refuses unsigned records, bad
  signatures, unknown keys and a record whose ``actor`` (its part before ``:``) is not the
  service the key belongs to. Another service's database credential, or a re-hash of an
  edited chain, cannot produce those signatures.
- **Anchors.** Services publish each ticket's head (``seq``, ``hash``), signed likewise, to
  the compacted Kafka topic ``intervention.audit-anchored`` keyed by ticket
  (:mod:`services.runtime.audit_anchors`): periodically and at a ticket's final event. The
  verifier checks the store against them (:class:`Anchor`): a record at an anchored ``seq``
  with another hash is a rewritten history (even if re-hashed consistently); a chain or
  head ending before an anchored ``seq`` is a truncated tail or a rolled-back head; an
  anchored ticket with neither records nor head had both deleted.

Data is redacted (secrets by value, sensitive field names) before it is hashed or stored,
so the stored hash covers exactly what anyone can read back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import random
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal, NamedTuple, Protocol

import nacl.exceptions
import nacl.signing
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.canonical import canonical_json
from services.runtime.crypto import SigningKey, VerifyKey
from services.runtime.redaction import default_redactor

__all__ = [
    "AUDIT_SIGNATURE_CONTEXT",
    "DEFAULT_COLLECTION",
    "GENESIS_HASH",
    "Anchor",
    "AuditContentionError",
    "AuditError",
    "AuditKeys",
    "AuditLog",
    "AuditRecord",
    "AuditSigner",
    "ChainBreak",
    "ChainReport",
    "DataRedactor",
    "TicketChainCheck",
    "actor_service",
    "format_at",
    "heads_collection",
    "normalise_at",
    "record_hash",
    "record_key",
    "storable_data",
    "verify_chain",
]

DEFAULT_COLLECTION = "audit"
GENESIS_HASH = "0" * 64
"""``prev_hash`` of every ticket's first record."""

_SEQ_INDEX = "ticket_seq_unique"
_RECORD_ID_INDEX = "ticket_record_id_unique"

Document = dict[str, Any]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class DataRedactor(Protocol):
    """What the audit log needs from ``services.runtime.redaction``: a pure masking pass."""

    def redact(self, obj: Any) -> Any: ...


class AuditError(RuntimeError):
    """An audit append that could not be completed; names the ticket and why."""

    def __init__(self, ticket_id: str, reason: str) -> None:
        super().__init__(f"audit of ticket {ticket_id}: {reason}")
        self.ticket_id = ticket_id
        self.reason = reason


class AuditContentionError(AuditError):
    """Every attempt to take the next ``seq`` lost to another writer."""


def heads_collection(collection: str) -> str:
    """Name of the collection holding the per-ticket heads of ``collection``."""
    return f"{collection}_heads"


# --- canonical content and hashing (pure) ------------------------------------------------


def normalise_at(at: datetime) -> datetime:
    """``at`` in UTC, truncated to the millisecond BSON stores, so it reads back unchanged.

    Naive datetimes are refused: guessing a timezone would put a wrong time on the record.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit timestamps must be timezone-aware")
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def format_at(at: datetime) -> str:
    """The hashed form of a timestamp: ISO-8601 in UTC with milliseconds and ``Z``."""
    return normalise_at(at).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_hash(
    *,
    ticket_id: str,
    seq: int,
    record_id: str,
    kind: str,
    actor: str,
    at: datetime,
    data: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 hex of the canonical JSON of a record's content fields."""
    content = {
        "ticket_id": ticket_id,
        "seq": seq,
        "record_id": record_id,
        "kind": kind,
        "actor": actor,
        "at": format_at(at),
        "data": data,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(content)).hexdigest()


def _text(value: str) -> str:
    # A lone surrogate (JSON "\ud800" from a ticket parses into one) cannot be encoded as
    # UTF-8 for BSON or hashing; customer text must not be able to stop auditing.
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _key(key: object) -> str:
    # FerretDB refuses keys with "." or a leading "$" (and BSON keys cannot hold NUL); the
    # usual MongoDB escape is the full-width look-alike, which keeps the record readable.
    text = _text(key if isinstance(key, str) else str(key))
    text = text.replace(".", "\uff0e").replace("\x00", "\ufffd")
    return "\uff04" + text[1:] if text.startswith("$") else text


def _plain(obj: Any, *, escape_keys: bool) -> Any:
    """``obj`` as exactly the JSON types that round-trip through BSON unchanged."""
    if obj is None or type(obj) is bool:
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool | Enum):
        # BSON integers are 64-bit; a bigger one is kept as its decimal text.
        return int(obj) if _INT64_MIN <= obj <= _INT64_MAX else str(int(obj))
    if type(obj) is str:
        return _text(obj)
    if isinstance(obj, Enum):
        return _plain(obj.value, escape_keys=escape_keys)
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, str):
        return _text(str.__str__(obj))
    if isinstance(obj, float):
        # JSON and canonical hashing refuse NaN/Infinity; a measurement is still worth keeping.
        # FerretDB stores -0.0 as 0.0, so "+ 0.0" makes the hash match what reads back.
        return float(obj) + 0.0 if math.isfinite(obj) else repr(float(obj))
    if isinstance(obj, Mapping):
        return {
            (_key(k) if escape_keys else (k if isinstance(k, str) else str(k))):
                _plain(v, escape_keys=escape_keys)
            for k, v in obj.items()
        }
    if isinstance(obj, bytes | bytearray | memoryview):
        # Command output as text, not base64: redaction by value must be able to see secrets.
        return _text(bytes(obj).decode("utf-8", "replace"))
    if isinstance(obj, list | tuple | set | frozenset):
        return [_plain(v, escape_keys=escape_keys) for v in obj]
    # Datetimes, UUIDs, IP addresses, pydantic models, dataclasses: their JSON form.
    return _plain(to_jsonable_python(obj), escape_keys=escape_keys)


def storable_data(data: Mapping[str, Any], redactor: DataRedactor) -> dict[str, Any]:
    """``data`` redacted and reduced to JSON types that read back from the store unchanged.

    Reduced first so the redactor sees every string (a model's fields, bytes of command
    output), then reduced again because the redactor's output is what gets hashed and stored.
    """
    redacted = redactor.redact(_plain(data, escape_keys=False))
    result = _plain(redacted, escape_keys=True)
    if not isinstance(result, dict):
        raise TypeError(f"the redactor turned a mapping into {type(result).__name__}")
    return result


# --- keys (pure) ---------------------------------------------------------------------------

AUDIT_SIGNATURE_CONTEXT = b"intervention-audit-record:v1:"
# key id -> (the service it belongs to, its public key); see keys.load_audit_verify_keys.
AuditKeys = Mapping[str, tuple[str, VerifyKey]]


def actor_service(actor: str) -> str:
    """The service an ``actor`` names: ``executor:<owner>`` -> ``executor``."""
    return actor.split(":", 1)[0]


@dataclass(frozen=True, kw_only=True)
class AuditSigner:
    """A service's audit key: signs what that service appends, and only as that service."""

    service: str
    key: SigningKey

    def __post_init__(self) -> None:
        # The private key is held as an object, so signing costs no key expansion.
        object.__setattr__(self, "_nacl", nacl.signing.SigningKey(self.key.seed))

    def sign(self, message: bytes) -> str:
        signer: nacl.signing.SigningKey = object.__getattribute__(self, "_nacl")
        return base64.b64encode(signer.sign(message).signature).decode("ascii")


def _signed_message(digest: str) -> bytes:
    return AUDIT_SIGNATURE_CONTEXT + digest.encode("ascii")


def check_signature(message: bytes, key_id: str | None, signature: str | None,
                    keys: AuditKeys) -> str | None:
    """Why ``signature`` by ``key_id`` over ``message`` does not hold (None: it does), and
    otherwise the service of the key (prefixed ``ok:``)."""
    if not key_id or not signature:
        return "unsigned"
    known = keys.get(key_id)
    if known is None:
        return f"signed by unknown key {key_id!r}"
    try:
        raw = base64.b64decode(signature, validate=True)
        nacl.signing.VerifyKey(known[1].public_key).verify(message, raw)
    except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError):
        return "bad signature"
    return "ok:" + known[0]


@dataclass(frozen=True, kw_only=True)
class Anchor:
    """A ticket's head as a service saw it after an append, published outside the store."""

    ticket_id: str
    seq: int
    hash: str
    service: str
    anchored_at: str
    key_id: str | None = None
    signature: str | None = None

    def content(self) -> bytes:
        return b"intervention-audit-anchor:v1:" + canonical_json({
            "ticket_id": self.ticket_id, "seq": self.seq, "hash": self.hash,
            "service": self.service, "anchored_at": self.anchored_at})


# --- the record --------------------------------------------------------------------------


class AuditRecord(BaseModel):
    """One link of a ticket's chain, as written and as read back."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    ticket_id: str
    seq: int = Field(ge=1)
    record_id: str
    kind: str
    actor: str
    at: AwareDatetime
    data: dict[str, Any]
    prev_hash: str
    hash: str
    # The writing service's audit key and its Ed25519 signature over the hash (base64);
    # None on records written without a key (before keys existed, or a keyless service).
    key_id: str | None = None
    signature: str | None = None

    def expected_hash(self) -> str:
        return record_hash(
            ticket_id=self.ticket_id, seq=self.seq, record_id=self.record_id, kind=self.kind,
            actor=self.actor, at=self.at, data=self.data, prev_hash=self.prev_hash,
        )

    def to_document(self) -> Document:
        doc = self.model_dump()
        for name in ("key_id", "signature"):  # unsigned records keep the original layout
            if doc[name] is None:
                del doc[name]
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> AuditRecord:
        fields = {k: v for k, v in doc.items() if k != "_id"}
        at = fields.get("at")
        if isinstance(at, datetime) and at.tzinfo is None:
            # PyMongo returns naive UTC datetimes unless the client is tz_aware.
            fields["at"] = at.replace(tzinfo=UTC)
        return cls.model_validate(fields)


def _new_record(
    *,
    ticket_id: str,
    seq: int,
    prev_hash: str,
    record_id: str,
    kind: str,
    actor: str,
    at: datetime,
    data: dict[str, Any],
    signer: AuditSigner | None = None,
) -> AuditRecord:
    digest = record_hash(
        ticket_id=ticket_id, seq=seq, record_id=record_id, kind=kind, actor=actor, at=at,
        data=data, prev_hash=prev_hash,
    )
    return AuditRecord(
        ticket_id=ticket_id, seq=seq, record_id=record_id, kind=kind, actor=actor, at=at,
        data=data, prev_hash=prev_hash, hash=digest,
        key_id=signer.key.key_id if signer else None,
        signature=signer.sign(_signed_message(digest)) if signer else None,
    )


# --- the writer --------------------------------------------------------------------------


def _violated_index(exc: DuplicateKeyError) -> Literal["seq", "record_id"] | None:
    """Which unique index refused an insert, when the server says (MongoDB does).

    FerretDB 1.24 names neither the index nor the key, so ``None`` means "look it up".
    """
    details = exc.details or {}
    pattern = details.get("keyPattern")
    if isinstance(pattern, Mapping):
        if "record_id" in pattern:
            return "record_id"
        if "seq" in pattern or "_id" in pattern:  # _id is the position too (record_key)
            return "seq"
    message = str(details.get("errmsg", ""))
    if _RECORD_ID_INDEX in message:
        return "record_id"
    if _SEQ_INDEX in message or "index: _id_" in message:
        return "seq"
    return None


class _Position(NamedTuple):
    """Where a ticket's chain ends as far as a writer knows: last seq (0: empty) and hash."""

    seq: int
    hash: str


_EMPTY = _Position(0, GENESIS_HASH)
# Head re-reads after a conflict before the writer reads the records collection instead
# (an expensive scan on FerretDB; needed only when a writer died between its two writes).
_STALE_HEAD_ROUNDS = 3


def record_key(ticket_id: str, seq: int) -> str:
    """A record's ``_id``: the ticket and its zero-padded seq, so it sorts in chain order.

    Writers find a record by position through the primary key because it is the only
    lookup FerretDB 1.24 pushes down to SQLite; any other filter decodes every document
    of the collection in FerretDB, which grows with the whole audit trail.
    """
    return f"{ticket_id}:{seq:010d}"


class AuditLog:
    """Appends redacted records to per-ticket hash chains; safe with many concurrent writers.

    The common append is three round trips, none of which reads the (large, growing)
    records collection: read the head, insert ``seq + 1``, move the head forward.
    """

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        *,
        collection: str = DEFAULT_COLLECTION,
        redactor: DataRedactor | None = None,
        max_attempts: int = 50,
        backoff_base: float = 0.001,
        backoff_cap: float = 0.05,
        signer: AuditSigner | None = None,
        on_append: Callable[[AuditRecord], None] | None = None,
    ) -> None:
        """``signer``: the writing service's audit key (records are then signed, and an
        ``actor`` of another service is refused). ``on_append``: told of every record this
        log wrote or found already written (the anchors keep the newest per ticket)."""
        self.signer = signer
        self._on_append = on_append
        if redactor is None:
            redactor = default_redactor()
        self._records: AsyncCollection[Document] = db[collection]
        self._heads: AsyncCollection[Document] = db[heads_collection(collection)]
        self._redactor = redactor
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._indexes_ready = False
        self.seq_conflicts = 0
        """How often an append lost the race for a seq and retried (a contention metric)."""
        # One append per ticket at a time inside this process: the store then only has to
        # arbitrate between processes, so retries stay rare. Weak values drop idle locks.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def ensure_indexes(self) -> None:
        """Create the unique indexes the chain's integrity rests on (idempotent).

        ``_id`` (see :func:`record_key`) already makes a position unique; the explicit
        ``(ticket_id, seq)`` index states the invariant on the fields that are hashed, and
        serves MongoDB's ordered reads of a ticket.
        """
        await self._records.create_index(
            [("ticket_id", 1), ("seq", 1)], unique=True, name=_SEQ_INDEX
        )
        await self._records.create_index(
            [("ticket_id", 1), ("record_id", 1)], unique=True, name=_RECORD_ID_INDEX
        )
        self._indexes_ready = True

    async def append(
        self,
        ticket_id: str,
        *,
        record_id: str,
        kind: str,
        actor: str,
        data: Mapping[str, Any],
        at: datetime | None = None,
    ) -> AuditRecord:
        """Append to ``ticket_id``'s chain, or return the record already under ``record_id``."""
        for name, value in (("ticket_id", ticket_id), ("record_id", record_id), ("kind", kind),
                            ("actor", actor)):
            if not value:
                raise ValueError(f"audit record needs a non-empty {name}")
        if self.signer is not None and actor_service(actor) != self.signer.service:
            raise ValueError(f"the {self.signer.service} audit key cannot sign a record of "
                             f"actor {actor!r}")
        if not self._indexes_ready:
            # Without the unique indexes concurrent writers would fork the chain silently.
            await self.ensure_indexes()
        when = normalise_at(at if at is not None else datetime.now(UTC))
        stored = storable_data(data, self._redactor)

        async with self._lock(ticket_id):
            position = await self._head(ticket_id)
            stale = 0  # conflicts in a row after which the head had not moved
            for _ in range(self._max_attempts):
                record = _new_record(
                    ticket_id=ticket_id, seq=position.seq + 1, prev_hash=position.hash,
                    record_id=record_id, kind=kind, actor=actor, at=when, data=stored,
                    signer=self.signer,
                )
                try:
                    await self._records.insert_one(
                        {"_id": record_key(ticket_id, record.seq), **record.to_document()}
                    )
                except DuplicateKeyError as exc:
                    self.seq_conflicts += 1
                    if _violated_index(exc) != "record_id":
                        # Usually another writer took the seq and is about to move the head:
                        # the head is the cheap read, so wait for it a few times.
                        head = await self._head(ticket_id)
                        if head.seq >= record.seq:
                            position, stale = head, 0
                            continue
                        stale += 1
                        if stale < _STALE_HEAD_ROUNDS:
                            await self._pause(stale)
                            continue
                    # The head is not moving (its writer died between its two writes, or
                    # the record_id index refused us): read the store itself.
                    stale = 0
                    found = await self._settle(record)
                    if isinstance(found, AuditRecord):
                        # Redelivery: finish what the first delivery may not have (the head).
                        await self._advance_head(found)
                        self._appended(found)
                        return found
                    position = found
                    continue
                await self._advance_head(record)
                self._appended(record)
                return record
        raise AuditContentionError(
            ticket_id,
            f"record {record_id!r} lost the race for the next seq {self._max_attempts} times; "
            "too many concurrent writers on one ticket (retry later or raise max_attempts)",
        )

    def _appended(self, record: AuditRecord) -> None:
        if self._on_append is not None:
            self._on_append(record)

    async def records(self, ticket_id: str) -> list[AuditRecord]:
        """The ticket's records in chain order."""
        cursor = self._records.find({"ticket_id": ticket_id}).sort("seq", 1)
        return [AuditRecord.from_document(doc) async for doc in cursor]

    async def _head(self, ticket_id: str) -> _Position:
        head = _head_position(await self._heads.find_one({"_id": ticket_id}))
        # A missing or malformed head costs a walk forward from seq 1, never a wrong link.
        return _Position(*head) if head is not None and head[0] >= 1 else _EMPTY

    async def _settle(self, record: AuditRecord) -> AuditRecord | _Position:
        """After a duplicate key the head did not explain: the record already written under
        this record_id, or the position to try next (read from the records themselves)."""
        ticket_id = record.ticket_id
        occupant = await self._records.find_one({"_id": record_key(ticket_id, record.seq)})
        if occupant is not None:
            if occupant.get("record_id") == record.record_id:
                return AuditRecord.from_document(occupant)  # our own earlier attempt
            return _Position(occupant["seq"], occupant["hash"])
        # The position was free, so the record_id index refused us: a redelivery.
        existing = await self._records.find_one(
            {"ticket_id": ticket_id, "record_id": record.record_id}
        )
        if existing is not None:
            return AuditRecord.from_document(existing)
        # Gone again (deleted meanwhile): try the same position once more.
        return _Position(record.seq - 1, record.prev_hash)

    async def _pause(self, round_: int) -> None:
        # Jitter, so writers waiting on the same head do not all come back at once.
        await asyncio.sleep(random.uniform(
            0, min(self._backoff_cap, self._backoff_base * 2**round_)
        ))

    async def _advance_head(self, record: AuditRecord) -> None:
        """Move the ticket's head to ``record`` unless it already points there or further.

        ``$max`` on the zero-padded ``"<seq>:<hash>"`` string is a forward-only
        compare-and-set in one update filtered by ``_id`` alone, the one filter FerretDB
        1.24 pushes down (a ``seq < n`` filter would decode every head in the collection).
        """
        update = {"$max": {"seq": record.seq, "head": _head_value(record.seq, record.hash)}}
        for _ in range(2):
            try:
                await self._heads.update_one({"_id": record.ticket_id}, update, upsert=True)
            except DuplicateKeyError:
                # Two first appends raced to create the head; now it exists, so $max applies.
                continue
            return

    def _lock(self, ticket_id: str) -> asyncio.Lock:
        lock = self._locks.get(ticket_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[ticket_id] = lock
        return lock


# --- the verifier ------------------------------------------------------------------------


class ChainBreak(NamedTuple):
    """The first record of a ticket's chain that does not check, and why."""

    ticket_id: str
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"ticket {self.ticket_id}, record {self.seq}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class ChainReport:
    tickets_checked: int
    records_checked: int
    broken: tuple[ChainBreak, ...] = ()
    """The first break of every broken ticket, in ticket order."""

    @property
    def ok(self) -> bool:
        return not self.broken

    @property
    def first_broken(self) -> ChainBreak | None:
        return self.broken[0] if self.broken else None


def _head_value(seq: int, digest: str) -> str:
    # Zero-padded so that string order is seq order, which is what makes $max forward-only.
    return f"{seq:020d}:{digest}"


def _head_position(head: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """(seq, hash) of a head document; ``(-1, "")`` when it was tampered into nonsense."""
    if head is None:
        return None
    value, seq = head.get("head"), head.get("seq")
    prefix, _, digest = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not prefix.isdigit() or int(prefix) != seq or len(digest) != len(GENESIS_HASH):
        return (-1, "")
    return int(prefix), digest


@dataclass
class TicketChainCheck:
    """Walks one ticket's stored records in ``seq`` order; pure, so it is tested without I/O.

    ``head`` is the ticket's head document, read *before* the records: heads only move
    forward after their record is durable, so records read later can only be ahead of it.
    """

    ticket_id: str
    head: Mapping[str, Any] | None = None
    # With keys: every record must be signed by a known audit key of its actor's service.
    keys: AuditKeys | None = None
    # The ticket's anchors read from Kafka (already checked as signed, when keys are given).
    anchors: Sequence[Anchor] = ()
    records_checked: int = 0
    _prev_hash: str = field(default=GENESIS_HASH, init=False)
    _hashes: dict[int, str] = field(default_factory=dict, init=False)

    def check(self, doc: Mapping[str, Any]) -> ChainBreak | None:
        """Check the next record; a break means the walk should stop."""
        expected = self.records_checked + 1
        seq = doc.get("seq")
        if type(seq) is not int:
            return self._broken(expected, f"malformed record: seq is {seq!r}")
        if seq > expected:
            return self._broken(expected, f"seq gap: record {expected} missing")
        if seq < expected:
            return self._broken(seq, f"duplicate seq: record {seq} appears twice")
        self.records_checked += 1
        if doc.get("prev_hash") != self._prev_hash:
            if seq == 1:
                return self._broken(seq, "prev_hash is not the genesis value")
            return self._broken(seq, f"prev_hash does not match record {seq - 1}")
        try:
            record = AuditRecord.from_document(doc)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            return self._broken(seq, f"malformed record: {_first_error(exc)}")
        if record.expected_hash() != record.hash:
            return self._broken(seq, "hash mismatch: record edited")
        if self.keys is not None and (failure := self._check_key(record)) is not None:
            return self._broken(seq, failure)
        if self.anchors:
            self._hashes[seq] = record.hash
        head = _head_position(self.head)
        if head is not None and head[0] == seq and head[1] != record.hash:
            return self._broken(seq, f"head hash does not match record {seq}: chain rewritten")
        self._prev_hash = record.hash
        return None

    def _check_key(self, record: AuditRecord) -> str | None:
        assert self.keys is not None
        verdict = check_signature(_signed_message(record.hash), record.key_id,
                                  record.signature, self.keys)
        if verdict == "unsigned":
            return ("unsigned record: written without a service's audit key (by someone "
                    "with database access?)")
        if verdict is None or not verdict.startswith("ok:"):
            return f"{verdict}: record forged, or edited and re-hashed"
        signer = verdict[3:]
        if actor_service(record.actor) != signer:
            return (f"written by the wrong service: actor {record.actor!r} but signed with "
                    f"the {signer} audit key")
        return None

    def finish(self) -> ChainBreak | None:
        """After the last record: is anything the head, or an anchor, knows about missing?"""
        head = _head_position(self.head)
        if head is not None and head[0] < 1:
            return self._broken(self.records_checked + 1, "malformed head document")
        if head is not None and head[0] > self.records_checked:
            return self._broken(
                self.records_checked + 1, "head points past the last record: tail deleted"
            )
        # A missing head alone is a first append that crashed before writing it.
        return self._check_anchors(head)

    def _check_anchors(self, head: tuple[int, str] | None) -> ChainBreak | None:
        for anchor in sorted(self.anchors, key=lambda a: -a.seq):
            where = f"anchored by {anchor.service} at {anchor.anchored_at}"
            if self.records_checked == 0 and head is None:
                return self._broken(anchor.seq, f"ticket deleted: records and head are gone, "
                                                f"but record {anchor.seq} was {where}")
            if anchor.seq > self.records_checked:
                return self._broken(
                    self.records_checked + 1,
                    f"truncated: the chain ends at record {self.records_checked}, but record "
                    f"{anchor.seq} was {where} (tail deleted or head rolled back)")
            if self._hashes.get(anchor.seq) != anchor.hash:
                return self._broken(
                    anchor.seq, f"history rewritten: record {anchor.seq} is not the one {where} "
                                "(even though the chain is consistently re-hashed)")
            if head is not None and head[0] < anchor.seq:
                return self._broken(
                    head[0], f"head rolled back to record {head[0]}, behind record "
                             f"{anchor.seq} {where}")
        return None

    def _broken(self, seq: int, reason: str) -> ChainBreak:
        return ChainBreak(self.ticket_id, seq, reason)


def _anchors_of(anchors: Mapping[str, Sequence[Anchor]] | None, ticket: Any) -> Sequence[Anchor]:
    return anchors.get(ticket, ()) if anchors is not None and isinstance(ticket, str) else ()


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}"
    return str(exc)


async def verify_chain(
    db: AsyncDatabase[dict[str, Any]],
    ticket_id: str | None = None,
    *,
    collection: str = DEFAULT_COLLECTION,
    keys: AuditKeys | None = None,
    anchors: Mapping[str, Sequence[Anchor]] | None = None,
) -> ChainReport:
    """Walk one ticket's chain, or every ticket's, and name the first broken record of each.

    With ``keys`` every record's signature and actor are checked; with ``anchors`` (ticket
    -> its anchors from Kafka) the store is checked against them, anchored tickets with
    nothing left in the store included.

    Heads are read before records: a head only moves after its record is durable, so
    records read afterwards can only be ahead of it and concurrent appends never look like
    a deleted tail. All tickets are walked in one ordered pass over the collection rather
    than one query per ticket, because FerretDB 1.24 scans the whole collection for every
    filtered query.
    """
    records: AsyncCollection[Document] = db[collection]
    heads: AsyncCollection[Document] = db[heads_collection(collection)]
    known: dict[Any, Document]  # heads by ticket id (whatever type a tampered record holds)
    if ticket_id is not None:
        head = await heads.find_one({"_id": ticket_id})
        known = {ticket_id: head} if head is not None else {}
        cursor = records.find({"ticket_id": ticket_id}).sort("seq", 1)
    else:
        known = {doc["_id"]: doc async for doc in heads.find({})}
        cursor = records.find({}).sort([("ticket_id", 1), ("seq", 1)])

    walks: dict[Any, TicketChainCheck] = {}
    broken: dict[Any, ChainBreak] = {}
    try:
        async for doc in cursor:
            ticket = doc.get("ticket_id")
            walk = walks.get(ticket)
            if walk is None:
                walk = walks[ticket] = TicketChainCheck(
                    str(ticket), head=known.get(ticket), keys=keys,
                    anchors=_anchors_of(anchors, ticket))
            if ticket not in broken and (failure := walk.check(doc)) is not None:
                broken[ticket] = failure
    finally:
        await cursor.close()
    anchored = [t for t in (anchors or {}) if ticket_id is None or t == ticket_id]
    for ticket in [*known, *anchored]:
        # A ticket whose every record was deleted survives only as its head, or its anchor.
        walk = walks.setdefault(ticket, TicketChainCheck(
            str(ticket), head=known.get(ticket), keys=keys, anchors=_anchors_of(anchors, ticket)))
    for ticket, walk in walks.items():
        if ticket not in broken and (failure := walk.finish()) is not None:
            broken[ticket] = failure
    return ChainReport(
        tickets_checked=len(walks),
        records_checked=sum(w.records_checked for w in walks.values()),
        broken=tuple(sorted(broken.values(), key=lambda b: b.ticket_id)),
    )
