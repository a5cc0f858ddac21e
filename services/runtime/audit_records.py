"""Audit records: their canonical content, hash, storable data and chain order (pure).

A record belongs to one chain: its ticket and its *producer*, the service that wrote and
signed it (the part of ``actor`` before ``:``). Within the chain it carries ``seq`` (1, 2,
3, ...), the ``prev_hash`` of record ``seq - 1`` (or :data:`GENESIS_HASH`) and its own
``hash``: SHA-256 (hex) of the canonical JSON (:func:`schemas.canonical.canonical_json`) of
its content fields - ``ticket_id``, ``seq``, ``record_id``, ``kind``, ``actor``, ``at``
(ISO-8601 UTC, milliseconds, ``Z``), ``data`` and ``prev_hash``. The stored ``producer``
field is not hashed separately: it must equal the service of the hashed ``actor`` (the
verifier checks), so moving a record to another chain breaks its hash or that check.

Data is redacted (secrets by value, sensitive field names) before it is hashed or stored,
so the stored hash covers exactly what anyone can read back.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python

from schemas.canonical import canonical_json
from services.runtime.audit_signing import AuditSigner, actor_service, signed_message

__all__ = [
    "GENESIS_HASH",
    "AuditContentionError",
    "AuditError",
    "AuditRecord",
    "DataRedactor",
    "Document",
    "format_at",
    "merge_chains",
    "new_record",
    "normalise_at",
    "record_hash",
    "record_key",
    "storable_data",
]

GENESIS_HASH = "0" * 64
"""``prev_hash`` of every chain's first record."""

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
    """Every attempt to take the next ``seq`` of a chain lost to another writer."""


# --- canonical content and hashing ---------------------------------------------------------


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


# --- the record --------------------------------------------------------------------------


class AuditRecord(BaseModel):
    """One link of a chain (ticket and producer), as written and as read back."""

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
    # The chain: the service of ``actor``. None on a record written when a ticket had one
    # chain for every service (read and verified as that ticket's legacy chain).
    producer: str | None = None

    def expected_hash(self) -> str:
        return record_hash(
            ticket_id=self.ticket_id, seq=self.seq, record_id=self.record_id, kind=self.kind,
            actor=self.actor, at=self.at, data=self.data, prev_hash=self.prev_hash,
        )

    def to_document(self) -> Document:
        doc = self.model_dump()
        for name in ("key_id", "signature", "producer"):  # absent, as such records were
            if doc[name] is None:
                del doc[name]
        return doc

    def to_stored(self) -> Document:
        """The document as the writer inserts it: keyed by its position (:func:`record_key`)."""
        return {"_id": record_key(self.ticket_id, self.producer, self.seq),
                **self.to_document()}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> AuditRecord:
        fields = {k: v for k, v in doc.items() if k != "_id"}
        at = fields.get("at")
        if isinstance(at, datetime) and at.tzinfo is None:
            # PyMongo returns naive UTC datetimes unless the client is tz_aware.
            fields["at"] = at.replace(tzinfo=UTC)
        return cls.model_validate(fields)


def new_record(
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
    """A record of the chain of ``actor``'s service, hashed and (with ``signer``) signed."""
    digest = record_hash(
        ticket_id=ticket_id, seq=seq, record_id=record_id, kind=kind, actor=actor, at=at,
        data=data, prev_hash=prev_hash,
    )
    return AuditRecord(
        ticket_id=ticket_id, seq=seq, record_id=record_id, kind=kind, actor=actor, at=at,
        data=data, prev_hash=prev_hash, hash=digest, producer=actor_service(actor),
        key_id=signer.key.key_id if signer else None,
        signature=signer.sign(signed_message(digest)) if signer else None,
    )


def record_key(ticket_id: str, producer: str | None, seq: int) -> str:
    """A record's ``_id``: ticket, producer and zero-padded seq, so it sorts in chain order.

    The primary key is what makes a position unique: an insert of a taken position is
    refused atomically, the one test-and-set FerretDB 1.24 has. A producer never contains
    ``:`` (:func:`~services.runtime.audit_signing.actor_service`) and the seq has a fixed
    width, so the key is unambiguous even for ticket ids with ``:`` in them. Legacy records
    (one chain per ticket) were keyed ``<ticket>:<seq>``.
    """
    if producer is None:
        return f"{ticket_id}:{seq:010d}"
    return f"{ticket_id}:{producer}:{seq:010d}"


def merge_chains(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    """A ticket's records as one timeline: its chains merged by time, then producer, seq.

    Each chain keeps its own order (by ``seq``) even where a caller-supplied ``at`` runs
    backwards; between chains the earlier record comes first.
    """
    chains: dict[str, list[AuditRecord]] = {}
    for record in records:
        chains.setdefault(record.producer or "", []).append(record)
    ordered = [sorted(chain, key=lambda r: r.seq) for _, chain in sorted(chains.items())]
    return list(heapq.merge(*ordered, key=lambda r: (r.at, r.producer or "", r.seq)))
