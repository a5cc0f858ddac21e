"""Checking the audit log: every chain (ticket and producer) walked, every break named.

A chain is intact when its records run ``seq`` 1..n without gap or repeat, each links to
the one before (``prev_hash``) and hashes to its ``hash``. With the services' public audit
keys each record must also be signed by the key of the service it belongs to: its chain's
producer and its ``actor``'s service. With the anchors from Kafka (ticket -> anchors) the
store is checked against what the producers published outside it: a record at an anchored
``seq`` with another hash is a rewritten history (even when consistently re-hashed); a chain
ending before an anchored ``seq`` is a truncated tail; an anchored chain with no records
left was deleted (with the whole ticket, or alone).

Records written when a ticket had a single chain for all services (no ``producer`` field)
are walked as that ticket's legacy chain, with its head document in ``<collection>_heads``
(no longer written) and its ``v1`` anchors (no ``producer``).

:class:`ChainCheck` is the pure walk of one chain, tested without I/O; :func:`verify_chain`
feeds it from the store in one ordered pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.runtime.audit_records import GENESIS_HASH, AuditRecord, Document
from services.runtime.audit_signing import (
    Anchor,
    AuditKeys,
    actor_service,
    check_signature,
    signed_message,
)

__all__ = [
    "DEFAULT_COLLECTION",
    "ChainBreak",
    "ChainCheck",
    "ChainReport",
    "TicketChainCheck",
    "heads_collection",
    "verify_chain",
]

DEFAULT_COLLECTION = "audit"


def heads_collection(collection: str) -> str:
    """Name of the collection holding the legacy per-ticket heads of ``collection``.

    Written only by the per-ticket chains of old; the verifier still reads it so that
    their tails stay checked. Per-producer chains are anchored in Kafka instead.
    """
    return f"{collection}_heads"


class ChainBreak(NamedTuple):
    """The first record of a chain that does not check, and why."""

    ticket_id: str
    producer: str | None
    seq: int
    reason: str

    def __str__(self) -> str:
        chain = f"{self.producer} record" if self.producer is not None else "record"
        return f"ticket {self.ticket_id}, {chain} {self.seq}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class ChainReport:
    tickets_checked: int
    records_checked: int
    chains_checked: int = 0
    broken: tuple[ChainBreak, ...] = ()
    """The first break of every broken chain, in ticket and producer order."""
    chain_lengths: Mapping[tuple[str, str | None], int] = field(default_factory=dict)
    """Records checked per chain (ticket, producer)."""

    @property
    def ok(self) -> bool:
        return not self.broken

    @property
    def first_broken(self) -> ChainBreak | None:
        return self.broken[0] if self.broken else None


def _head_position(head: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """(seq, hash) of a legacy head document; ``(-1, "")`` when tampered into nonsense."""
    if head is None:
        return None
    value, seq = head.get("head"), head.get("seq")
    prefix, _, digest = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not prefix.isdigit() or int(prefix) != seq or len(digest) != len(GENESIS_HASH):
        return (-1, "")
    return int(prefix), digest


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}"
    return str(exc)


@dataclass
class ChainCheck:
    """Walks one chain's stored records in ``seq`` order; pure, so it is tested without I/O.

    ``producer`` is the chain's (None: a ticket's legacy single chain). ``head`` is the
    legacy chain's head document, read *before* the records: heads only moved forward after
    their record was durable, so records read later can only be ahead of it.
    """

    ticket_id: str
    producer: str | None = None
    head: Mapping[str, Any] | None = None
    # With keys: every record must be signed by a known audit key of its chain's service.
    keys: AuditKeys | None = None
    # The chain's anchors read from Kafka (already checked as signed, when keys are given).
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
        if self.producer is not None and actor_service(record.actor) != self.producer:
            return self._broken(seq, f"in the {self.producer} chain, but its actor is "
                                     f"{record.actor!r}: record moved between chains")
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
        verdict = check_signature(signed_message(record.hash), record.key_id,
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

    def finish(self, *, ticket_has_records: bool | None = None) -> ChainBreak | None:
        """After the last record: is anything the head, or an anchor, knows about missing?

        ``ticket_has_records``: whether any chain of the ticket still has records (names a
        missing chain as a deleted ticket or a deleted chain); None: this chain's own count.
        """
        head = _head_position(self.head)
        if head is not None and head[0] < 1:
            return self._broken(self.records_checked + 1, "malformed head document")
        if head is not None and head[0] > self.records_checked:
            return self._broken(
                self.records_checked + 1, "head points past the last record: tail deleted"
            )
        # A missing head alone is a first append that crashed before writing it.
        if ticket_has_records is None:
            ticket_has_records = self.records_checked > 0
        return self._check_anchors(head, ticket_has_records)

    def _check_anchors(self, head: tuple[int, str] | None,
                       ticket_has_records: bool) -> ChainBreak | None:
        for anchor in sorted(self.anchors, key=lambda a: -a.seq):
            where = f"anchored by {anchor.service} at {anchor.anchored_at}"
            if self.records_checked == 0 and head is None:
                gone = ("ticket deleted: its records are gone" if not ticket_has_records
                        else f"chain deleted: the {self.producer} records are gone")
                return self._broken(anchor.seq, f"{gone}, but record {anchor.seq} was {where}")
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
        return ChainBreak(self.ticket_id, self.producer, seq, reason)


TicketChainCheck = ChainCheck
"""The name from when a ticket had one chain."""


def _chain_anchors(anchors: Mapping[str, Sequence[Anchor]] | None, ticket: Any,
                   producer: str | None) -> list[Anchor]:
    if anchors is None or not isinstance(ticket, str):
        return []
    return [a for a in anchors.get(ticket, ()) if a.producer == producer]


async def verify_chain(
    db: AsyncDatabase[dict[str, Any]],
    ticket_id: str | None = None,
    *,
    collection: str = DEFAULT_COLLECTION,
    keys: AuditKeys | None = None,
    anchors: Mapping[str, Sequence[Anchor]] | None = None,
) -> ChainReport:
    """Walk one ticket's chains, or every ticket's, and name the first broken record of each.

    With ``keys`` every record's signature and actor are checked; with ``anchors`` (ticket
    -> its anchors from Kafka) the store is checked against them, anchored chains with
    nothing left in the store included.

    Legacy heads are read before records (a head only moved after its record was durable).
    All tickets are walked in one ordered pass over the collection rather than one query
    per ticket, because FerretDB 1.24 scans the whole collection for every filtered query.
    """
    records: AsyncCollection[Document] = db[collection]
    heads: AsyncCollection[Document] = db[heads_collection(collection)]
    legacy: dict[Any, Document]  # legacy heads by ticket id (any type a tampered doc holds)
    if ticket_id is not None:
        head = await heads.find_one({"_id": ticket_id})
        legacy = {ticket_id: head} if head is not None else {}
        cursor = records.find({"ticket_id": ticket_id}).sort([("producer", 1), ("seq", 1)])
    else:
        legacy = {doc["_id"]: doc async for doc in heads.find({})}
        cursor = records.find({}).sort([("ticket_id", 1), ("producer", 1), ("seq", 1)])

    walks: dict[tuple[Any, Any], ChainCheck] = {}
    broken: dict[tuple[Any, Any], ChainBreak] = {}

    def walk_of(ticket: Any, producer: Any) -> ChainCheck:
        chain = (ticket, producer)
        walk = walks.get(chain)
        if walk is None:
            walk = walks[chain] = ChainCheck(
                str(ticket), None if producer is None else str(producer),
                head=legacy.get(ticket) if producer is None else None, keys=keys,
                anchors=_chain_anchors(anchors, ticket, producer))
        return walk

    try:
        async for doc in cursor:
            chain = (doc.get("ticket_id"), doc.get("producer"))
            walk = walk_of(*chain)
            if chain not in broken and (failure := walk.check(doc)) is not None:
                broken[chain] = failure
    finally:
        await cursor.close()
    # A chain whose every record was deleted survives only as its legacy head, or anchors.
    for ticket in legacy:
        walk_of(ticket, None)
    for ticket, anchored in (anchors or {}).items():
        if ticket_id is None or ticket == ticket_id:
            for producer in {a.producer for a in anchored}:
                walk_of(ticket, producer)
    with_records = {ticket for (ticket, _), w in walks.items() if w.records_checked}
    for chain, walk in walks.items():
        if chain not in broken and (failure := walk.finish(
                ticket_has_records=chain[0] in with_records)) is not None:
            broken[chain] = failure
    return ChainReport(
        tickets_checked=len({ticket for ticket, _ in walks}),
        chains_checked=len(walks),
        records_checked=sum(w.records_checked for w in walks.values()),
        broken=tuple(sorted(broken.values(),
                            key=lambda b: (b.ticket_id, b.producer or "", b.seq))),
        chain_lengths={(w.ticket_id, w.producer): w.records_checked for w in walks.values()},
    )
