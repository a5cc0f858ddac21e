"""The tamper-evident audit trail: append-only chains in MongoDB, one per ticket and producer.

A ticket's records form one hash chain per *producer*, the service that writes and signs
them (the part of ``actor`` before ``:``): ``seq`` 1, 2, 3, ... with each record's
``prev_hash`` the ``hash`` of the one before (:mod:`services.runtime.audit_records`).
Readers (``intervene status``/``trace``, ``GET /v1/tickets/{id}``) merge a ticket's chains
into one timeline by time, then producer and seq (:func:`merge_chains`); ``intervene audit
verify`` walks each chain (:mod:`services.runtime.audit_verify`).

Why per producer (issue 17): four services appending to one chain per ticket lost races
for the next ``seq`` about three times per append under load, and every append cost three
round trips (read the head, insert, move the head). Within a service one ticket's messages
are handled by one consumer at a time (the topics are keyed by ticket), so a chain has one
writer at a time and its head can be kept in process memory (a bounded LRU). The common
append is then ONE insert and reads nothing:

- the record's ``_id`` is its position, ``<ticket>:<producer>:<seq>``
  (:func:`record_key`): inserting a taken position is refused atomically (the one
  test-and-set FerretDB 1.24 has), so a chain never forks;
- a refused insert means another process wrote the chain meanwhile (a rebalance, a
  restart, an HTTP or CLI writer), the cached head is stale or missing, or the record is
  a redelivery (a unique index on ``(ticket_id, producer, record_id)``): only then is the
  chain read from the records collection - its tail, or the record already written under
  that ``record_id`` - and the append retried;
- appends to different chains made at the same moment (a consumer's batch of tickets, the
  executor's concurrent runs) share one round trip
  (:class:`~services.runtime.group_commit.GroupInsert`), each still refused or written on
  its own;
- :meth:`AuditLog.append_many` (and :class:`AuditBatch`, a unit of work) writes the records
  of one or many chains in one ordered ``insert_many``; :meth:`AuditLog.append_later` joins
  the :meth:`AuditLog.unit_of_work` open in the current task, if any, so a consumer can
  write all its handlers' records of a batch in one round trip.

:meth:`AuditLog.append` returns once the record is durable, so a caller can audit before it
acts (the executor flushes a run's gathered records before each journal write that
precedes a change on the server).

Nothing on the append path reads the records collection, which grows with all history
(FerretDB scans a whole collection for nearly every query); the rare conflict path does.
No head document is written any more: a deleted tail is detected against the heads each
service anchors in Kafka (:mod:`services.runtime.audit_anchors`), periodically and at a
ticket's final event, signed with its audit key (:mod:`services.runtime.audit_signing`).
The ``<collection>_heads`` documents of legacy per-ticket chains are still read by the
verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from services.runtime.audit_records import (
    GENESIS_HASH,
    AuditContentionError,
    AuditError,
    AuditRecord,
    DataRedactor,
    Document,
    format_at,
    merge_chains,
    new_record,
    normalise_at,
    record_hash,
    record_key,
    storable_data,
)
from services.runtime.audit_signing import (
    AUDIT_SIGNATURE_CONTEXT,
    Anchor,
    AuditKeys,
    AuditSigner,
    actor_service,
    check_signature,
    signed_message,
)
from services.runtime.audit_verify import (
    DEFAULT_COLLECTION,
    ChainBreak,
    ChainCheck,
    ChainReport,
    TicketChainCheck,
    heads_collection,
    verify_chain,
)
from services.runtime.group_commit import GroupInsert
from services.runtime.redaction import default_redactor

__all__ = [
    "AUDIT_SIGNATURE_CONTEXT",
    "DEFAULT_COLLECTION",
    "GENESIS_HASH",
    "Anchor",
    "AuditBatch",
    "AuditContentionError",
    "AuditEntry",
    "AuditError",
    "AuditKeys",
    "AuditLog",
    "AuditRecord",
    "AuditSigner",
    "ChainBreak",
    "ChainCheck",
    "ChainReport",
    "DataRedactor",
    "TicketChainCheck",
    "actor_service",
    "check_signature",
    "format_at",
    "heads_collection",
    "merge_chains",
    "new_record",
    "normalise_at",
    "record_hash",
    "record_key",
    "signed_message",
    "storable_data",
    "verify_chain",
]

_SEQ_INDEX = "ticket_producer_seq_unique"
_RECORD_ID_INDEX = "ticket_producer_record_id_unique"
# The per-ticket chain's indexes: (ticket_id, seq) would refuse a second producer's seq 1.
_LEGACY_INDEXES = ("ticket_seq_unique", "ticket_record_id_unique")

Chain = tuple[str, str]
"""A chain: (ticket id, producer)."""


class _Position(NamedTuple):
    """Where a chain ends as far as a writer knows: last seq (0: empty) and its hash."""

    seq: int
    hash: str


_EMPTY = _Position(0, GENESIS_HASH)


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """One record to append, as the caller states it (see :meth:`AuditLog.append`)."""

    ticket_id: str
    record_id: str
    kind: str
    actor: str
    data: Mapping[str, Any]
    at: datetime | None = None


class _Prepared(NamedTuple):
    """An entry validated, timestamped and redacted: everything but its chain position."""

    ticket_id: str
    producer: str
    record_id: str
    kind: str
    actor: str
    at: datetime
    data: dict[str, Any]

    @property
    def chain(self) -> Chain:
        return (self.ticket_id, self.producer)


class AuditLog:
    """Appends redacted, signed records to per-(ticket, producer) hash chains.

    Safe with concurrent writers: in this process a chain's appends take turns (a lock per
    chain); between processes the unique ``_id`` decides, and the loser re-reads the chain.
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
        cached_heads: int = 50_000,
    ) -> None:
        """``signer``: the writing service's audit key (records are then signed, and an
        ``actor`` of another service is refused). ``on_append``: told of every record this
        log wrote or found already written (the anchors keep the newest per chain).
        ``cached_heads``: how many chains' heads are kept in memory; an evicted chain's next
        append finds its head through the conflict path (three round trips, once)."""
        self.signer = signer
        self._on_append = on_append
        if redactor is None:
            redactor = default_redactor()
        self._records: AsyncCollection[Document] = db[collection]
        # Appends to different chains at the same moment (a consumer's batch of tickets,
        # the executor's concurrent runs) share one insert round trip.
        self._inserts = GroupInsert(self._records)
        self._redactor = redactor
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._cached_heads = cached_heads
        self._indexes_ready = False
        self._indexing = asyncio.Lock()
        self._heads: OrderedDict[Chain, _Position] = OrderedDict()
        self.seq_conflicts = 0
        """How often an insert was refused and the chain re-read (a contention metric)."""
        # One append per chain at a time inside this process: the store then only has to
        # arbitrate between processes. Weak values drop idle locks.
        self._locks: weakref.WeakValueDictionary[Chain, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def ensure_indexes(self) -> None:
        """Create the unique indexes the chains' integrity rests on (idempotent), and drop
        the per-ticket chain's, which would refuse every second producer's records.

        ``_id`` (see :func:`record_key`) already makes a position unique; the explicit
        ``(ticket_id, producer, seq)`` index states the invariant on the stored fields and
        serves MongoDB's ordered reads of a chain; ``(ticket_id, producer, record_id)``
        makes a redelivered append find its record instead of writing it twice.
        """
        existing = await self._records.index_information()
        for name in _LEGACY_INDEXES:
            if name in existing:
                with contextlib.suppress(OperationFailure):  # another process dropped it
                    await self._records.drop_index(name)
        await self._records.create_index(
            [("ticket_id", 1), ("producer", 1), ("seq", 1)], unique=True, name=_SEQ_INDEX
        )
        await self._records.create_index(
            [("ticket_id", 1), ("producer", 1), ("record_id", 1)], unique=True,
            name=_RECORD_ID_INDEX,
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
        """Append to the chain of ``ticket_id`` and ``actor``'s service, or return the record
        already written there under ``record_id``. Durable when it returns."""
        entry = self._prepare(AuditEntry(ticket_id=ticket_id, record_id=record_id, kind=kind,
                                         actor=actor, data=data, at=at))
        await self._ready()
        async with self._lock(entry.chain):
            if at is None:
                # Stamped when the position is taken, so a chain's times follow its seqs.
                entry = entry._replace(at=normalise_at(datetime.now(UTC)))
            return await self._append_locked(entry)

    async def append_many(self, entries: Iterable[AuditEntry]) -> list[AuditRecord]:
        """Append several records, of one chain or many, in ONE ordered ``insert_many``.

        Records of a chain are written in the order given. Should the store refuse one (a
        stale head, a redelivered ``record_id``), the records before it are written, none
        after it, and those from it on are appended one by one; so a chain never has a
        record after a missing one. Returns the records in the order given, all durable.
        """
        return await self._append_prepared([self._prepare(e) for e in entries])

    def batch(self) -> AuditBatch:
        """A unit of work: records gathered now and written in one round trip later."""
        return AuditBatch(self)

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AuditBatch]:
        """Gather the :meth:`append_later` calls made in this task, and in the tasks it
        starts, and write them in one round trip when the block ends without an error (a
        consumer's batch: one insert for all its handlers' records). After an error they
        are dropped: the messages are redelivered and audit them again."""
        batch = AuditBatch(self)
        token = _UNIT.set(batch)
        try:
            yield batch
        finally:
            _UNIT.reset(token)
        await batch.flush()

    @contextlib.contextmanager
    def gathering(self, unit: AuditBatch) -> Iterator[AuditBatch]:
        """Make :meth:`append_later` in this task, and in the tasks it starts, join
        ``unit``, which the caller flushes (and may flush again after a failure) and
        closes: the consumer runtime's batch, whose records must be durable before its
        offsets are committed, whatever outage it rides out meanwhile."""
        token = _UNIT.set(unit)
        try:
            yield unit
        finally:
            _UNIT.reset(token)

    async def append_later(self, ticket_id: str, *, record_id: str, kind: str, actor: str,
                           data: Mapping[str, Any], at: datetime | None = None) -> None:
        """:meth:`append`, deferred to the open :meth:`unit_of_work` if there is one (then
        durable only when the unit ends), else at once. For records nothing waits on, never
        for one that must be durable before the caller acts. A deferred record keeps the
        ``at`` of this call but takes its ``seq`` when the unit is written, after records
        of its chain appended at once meanwhile (chain order is write order)."""
        unit = _UNIT.get()
        if unit is None or unit.log is not self or unit.closed:
            await self.append(ticket_id, record_id=record_id, kind=kind, actor=actor,
                              data=data, at=at)
            return
        unit.add(ticket_id, record_id=record_id, kind=kind, actor=actor, data=data, at=at)

    async def records(self, ticket_id: str) -> list[AuditRecord]:
        """The ticket's records as one timeline: its chains merged by time (then producer,
        seq). A reader's query, never on the append path."""
        cursor = self._records.find({"ticket_id": ticket_id})
        return merge_chains([AuditRecord.from_document(doc) async for doc in cursor])

    # --- the append path --------------------------------------------------------------

    def _prepare(self, entry: AuditEntry) -> _Prepared:
        for name in ("ticket_id", "record_id", "kind", "actor"):
            if not getattr(entry, name):
                raise ValueError(f"audit record needs a non-empty {name}")
        producer = actor_service(entry.actor)
        if not producer:
            raise ValueError(f"audit actor {entry.actor!r} names no service before ':'")
        if self.signer is not None and producer != self.signer.service:
            raise ValueError(f"the {self.signer.service} audit key cannot sign a record of "
                             f"actor {entry.actor!r}")
        return _Prepared(
            ticket_id=entry.ticket_id, producer=producer, record_id=entry.record_id,
            kind=entry.kind, actor=entry.actor,
            at=normalise_at(entry.at if entry.at is not None else datetime.now(UTC)),
            data=storable_data(entry.data, self._redactor))

    async def _ready(self) -> None:
        if not self._indexes_ready:
            # Without the unique indexes concurrent writers would fork a chain silently.
            async with self._indexing:
                if not self._indexes_ready:
                    await self.ensure_indexes()

    def _record(self, entry: _Prepared, position: _Position) -> AuditRecord:
        return new_record(
            ticket_id=entry.ticket_id, seq=position.seq + 1, prev_hash=position.hash,
            record_id=entry.record_id, kind=entry.kind, actor=entry.actor, at=entry.at,
            data=entry.data, signer=self.signer)

    def _head(self, chain: Chain) -> _Position:
        head = self._heads.get(chain)
        if head is None:
            # Unknown here: most likely a new chain. If not, the insert is refused and the
            # chain's tail is read once.
            return _EMPTY
        self._heads.move_to_end(chain)
        return head

    def _remember(self, chain: Chain, head: _Position) -> None:
        self._heads[chain] = head
        self._heads.move_to_end(chain)
        while len(self._heads) > self._cached_heads:
            self._heads.popitem(last=False)

    def _written(self, record: AuditRecord) -> None:
        self._remember((record.ticket_id, actor_service(record.actor)),
                       _Position(record.seq, record.hash))
        if self._on_append is not None:
            self._on_append(record)

    async def _append_locked(self, entry: _Prepared) -> AuditRecord:
        """Insert at the cached head; after a refusal, read the chain and try again.
        The caller holds the chain's lock."""
        position = self._head(entry.chain)
        for attempt in range(self._max_attempts):
            record = self._record(entry, position)
            try:
                await self._inserts.insert(record.to_stored())
            except DuplicateKeyError:
                self.seq_conflicts += 1
                found, tail = await self._settle(record)
                self._remember(entry.chain, tail)
                if found is not None:
                    # A redelivery: the record is already in the chain.
                    if self._on_append is not None:
                        self._on_append(found)
                    return found
                if tail.seq < record.seq:
                    # The position is free again (deleted meanwhile?), or the writer that
                    # took it is racing us: back off, with jitter, before the next try.
                    await self._pause(attempt)
                position = tail
                continue
            self._written(record)
            return record
        raise AuditContentionError(
            entry.ticket_id,
            f"record {entry.record_id!r} lost the race for the next seq of the "
            f"{entry.producer} chain {self._max_attempts} times; too many concurrent writers "
            "on one chain (retry later or raise max_attempts)",
        )

    async def _settle(self, record: AuditRecord) -> tuple[AuditRecord | None, _Position]:
        """After a refused insert (the rare path): the record already written under this
        ``record_id`` in the chain, if any, and the chain's tail, read from the records.

        One query for the chain (small: its ticket's records of one service), projected to
        what is needed; the whole record only when it is a redelivery.
        """
        producer = actor_service(record.actor)
        cursor = self._records.find(
            {"ticket_id": record.ticket_id, "producer": producer},
            projection={"seq": 1, "hash": 1, "record_id": 1})
        tail = _EMPTY
        same: Any = None
        async for doc in cursor:
            seq, digest = doc.get("seq"), doc.get("hash")
            if type(seq) is int and isinstance(digest, str) and seq > tail.seq:
                tail = _Position(seq, digest)
            if doc.get("record_id") == record.record_id:
                same = doc.get("_id")
        if same is not None:
            existing = await self._records.find_one({"_id": same})
            if existing is not None:
                return AuditRecord.from_document(existing), tail
        return None, tail

    async def _append_prepared(self, entries: list[_Prepared]) -> list[AuditRecord]:
        if not entries:
            return []
        await self._ready()
        async with contextlib.AsyncExitStack() as held:
            # Sorted, so two batches sharing chains cannot each hold what the other waits for.
            for chain in sorted({e.chain for e in entries}):
                await held.enter_async_context(self._lock(chain))
            heads = {e.chain: self._head(e.chain) for e in entries}
            records = []
            for entry in entries:
                record = self._record(entry, heads[entry.chain])
                heads[entry.chain] = _Position(record.seq, record.hash)
                records.append(record)
            try:
                await self._records.insert_many([r.to_stored() for r in records], ordered=True)
            except BulkWriteError as exc:
                # Ordered: exactly the records before the first refused one are written.
                written = int(exc.details.get("nInserted", 0))
                for record in records[:written]:
                    self._written(record)
                return [*records[:written],
                        *[await self._append_locked(e) for e in entries[written:]]]
            for record in records:
                self._written(record)
            return records

    async def _pause(self, attempt: int) -> None:
        # Jitter, so writers waiting on the same chain do not all come back at once.
        await asyncio.sleep(random.uniform(
            0, min(self._backoff_cap, self._backoff_base * 2**attempt)))

    def _lock(self, chain: Chain) -> asyncio.Lock:
        lock = self._locks.get(chain)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[chain] = lock
        return lock


_UNIT: ContextVar[AuditBatch | None] = ContextVar("intervention_audit_unit", default=None)
"""The unit of work :meth:`AuditLog.append_later` joins (copied into tasks started in it)."""


class AuditBatch:
    """A unit of work: records gathered (validated, redacted and timestamped when added)
    and written together by :meth:`flush` in one round trip (:meth:`AuditLog.append_many`).

    Durable only once :meth:`flush` returns: a caller that must audit *before* it acts uses
    :meth:`AuditLog.append`. As an ``async with`` block it flushes on a clean exit; after an
    exception the gathered records are dropped (the message is redelivered and audits them
    again under the same ``record_id``\\ s).
    """

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self._entries: list[_Prepared] = []
        # Set once its owner wrote it for the last time: a task that outlived the unit
        # (started inside it, still running) then appends at once instead of into a batch
        # nobody will write again.
        self.closed = False

    def add(self, ticket_id: str, *, record_id: str, kind: str, actor: str,
            data: Mapping[str, Any], at: datetime | None = None) -> None:
        # Prepared now: a bad record is refused at the caller, and "at" is when it happened.
        self._entries.append(self.log._prepare(AuditEntry(
            ticket_id=ticket_id, record_id=record_id, kind=kind, actor=actor, data=data,
            at=at)))

    def __len__(self) -> int:
        return len(self._entries)

    async def flush(self) -> list[AuditRecord]:
        """Write the gathered records. On failure (the store is away) they stay gathered,
        so the caller can flush again: records already written are recognised by their
        ``record_id`` and not written twice."""
        entries = list(self._entries)
        records = await self.log._append_prepared(entries)
        del self._entries[:len(entries)]  # records added meanwhile wait for the next flush
        return records

    def close(self) -> None:
        """No more records join this unit (:meth:`AuditLog.append_later` appends at once)."""
        self.closed = True

    async def __aenter__(self) -> AuditBatch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.flush()
        else:
            self._entries = []
