"""Each ticket's history of :class:`~services.notifier.sla.Fact` values, append-only, in MongoDB.

The SLA clocks and pages are *computed* from this history (:func:`services.notifier.sla.fold`)
rather than kept as a mutable document, because FerretDB 1.24 has no atomic
read-modify-write (see :mod:`services.notifier.claims`): two events of one ticket handled at
once (they arrive on different topics) would overwrite each other's changes to a shared
document. Appends cannot lose each other.

Fact ``n`` of a ticket is the document ``_id = "<ticket_id>#<n>"`` (n = 1, 2, ...), carrying
the ticket's view after it (:mod:`.views`: next deadline, board entry). The append inserts at
the position after the last fact this process knows; that insert succeeding *proves* the
process knew the whole history (nobody had taken the position), so the view it wrote and the
before/after it returns are exact without reading anything. Only when another writer took
the position (duplicate key: another notifier replica, or a restart) does it read forward
and try the next one; a ticket the process has not seen yet is tried at position 1. A
process therefore reads a ticket's facts once at most (after a restart, or when another
replica wrote them), never per event: issue 17 measured 20 reads per ticket when every
step re-read the history.

Within one process, appends of one ticket are serialised by a per-ticket lock: the
consumers of different topics handle the same ticket concurrently, and without the lock
they would race for the same position and pay a read for it.

History moves out (:mod:`.archive`): a ticket with nothing open is copied to
``notifier_ticket_facts_archive`` (one document per run of facts) and deleted from this
collection, so what the ticket path touches holds only in-flight tickets, and the ticket
path never reads the archive. A fact arriving for an archived ticket (a straggler across
topics) is appended to the live collection like a new ticket's. The sweeper reads with
``history=True``: for a ticket whose live facts lack its TicketSubmitted it joins the
archived runs back and appends a ``restored`` marker, whose view then reflects the whole
history (a late InterventionStarted after its completion was archived fires no SLA alert,
and the ticket is archived again). That read is the rare path: only a due alert of a ticket
without its submission in the live collection takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.notifier.sla import Fact
from services.runtime.group_commit import GroupInsert

COLLECTION = "notifier_ticket_facts"
ARCHIVE = "notifier_ticket_facts_archive"

Clock = Callable[[], datetime]
View = Callable[[str, Sequence[Fact]], Mapping[str, Any]]
"""The ticket's view after a run of facts (:func:`services.notifier.views.ticket_view`)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def _key(ticket_id: str, seq: int) -> str:
    return f"{ticket_id}#{seq:06d}"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def to_document(fact: Fact) -> dict[str, Any]:
    return {name: getattr(fact, name) for name in Fact.__dataclass_fields__}


def from_document(doc: dict[str, Any]) -> Fact:
    fields: dict[str, Any] = {name: doc[name] for name in Fact.__dataclass_fields__
                              if name in doc}
    fields["at"] = _aware(fields["at"])
    if fields.get("expected_start") is not None:
        fields["expected_start"] = _aware(fields["expected_start"])
    fields["automated"] = bool(fields.get("automated"))
    return Fact(**fields)


def as_stored(fact: Fact) -> Fact:
    """``fact`` as the store returns it (BSON times are whole milliseconds): the facts this
    process appended and those it reads must fold alike (same-instant ties included)."""
    whole_ms: dict[str, Any] = {
        name: value.replace(microsecond=value.microsecond // 1000 * 1000)
        for name, value in vars(fact).items() if isinstance(value, datetime)}
    return replace(fact, **whole_ms)


@dataclass(frozen=True, kw_only=True)
class Recorded:
    """An append's outcome: the ticket's facts just before and just after it (equal when the
    fact was already recorded), exact at the moment of the append."""

    ticket_id: str
    fact: Fact  # as stored (and as the folds of before and after hold it)
    before: tuple[Fact, ...]
    after: tuple[Fact, ...]
    recorded: bool


@dataclass(frozen=True)
class _Known:
    facts: tuple[Fact, ...]
    next_seq: int  # equals len(facts) + 1 unless an archived run was numbered apart


@dataclass
class _Lock:
    lock: asyncio.Lock
    users: int = 0


class TicketLedger:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], view: View, *,
                 clock: Clock = utc_now, collection: str = COLLECTION, archive: str = ARCHIVE,
                 cache_tickets: int = 10_000) -> None:
        self.coll = db[collection]
        # The facts of the tickets a consumer batch handles at once go in one round trip.
        self._inserts = GroupInsert(self.coll)
        self.archive = db[archive]
        self._view = view
        self._clock = clock
        self._cache: OrderedDict[str, _Known] = OrderedDict()
        self._cache_tickets = cache_tickets
        self._locks: dict[str, _Lock] = {}

    # -- the hot path ---------------------------------------------------------------------

    async def record(self, ticket_id: str, fact: Fact) -> Recorded:
        """Append ``fact`` unless a fact with its id is already recorded."""
        async with self._locked(ticket_id):
            known = self._cache.get(ticket_id)
            if known is None:
                known = await self._load(ticket_id, fact)
            return await self._append(ticket_id, as_stored(fact), known)

    async def _append(self, ticket_id: str, fact: Fact, known: _Known) -> Recorded:
        while True:
            if any(f.fact_id == fact.fact_id for f in known.facts):
                self._remember(ticket_id, known)
                return Recorded(ticket_id=ticket_id, fact=fact, before=known.facts,
                                after=known.facts, recorded=False)
            after = (*known.facts, fact)
            seq = known.next_seq
            try:
                await self._inserts.insert({
                    "_id": _key(ticket_id, seq), "ticket_id": ticket_id, "seq": seq,
                    "fact": to_document(fact), "view_at": self._clock(),
                    **self._view(ticket_id, after)})
            except DuplicateKeyError:
                known = await self._forward(ticket_id, known)  # another writer was first
                continue
            self._remember(ticket_id, _Known(after, seq + 1))
            return Recorded(ticket_id=ticket_id, fact=fact, before=known.facts, after=after,
                            recorded=True)

    async def append(self, ticket_id: str, fact: Fact) -> bool:
        """Record ``fact``; True if this call added it."""
        return (await self.record(ticket_id, fact)).recorded

    # -- reads: after a restart, for another replica's facts, for the sweeper and chat -----

    async def facts(self, ticket_id: str, *, history: bool = False) -> list[Fact]:
        """Every fact recorded for the ticket, in recorded order, including any another
        writer appended since this process last looked (one lookup past what it knows).

        ``history``: also join back an archived history (see the module doc), for the
        sweeper, before it fires anything."""
        async with self._locked(ticket_id):
            known = self._cache.get(ticket_id)
            known = await (self._load(ticket_id, None) if known is None
                           else self._forward(ticket_id, known))
            self._remember(ticket_id, known)
            if history and not any(f.kind == "submitted" for f in known.facts):
                known = await self._restore(ticket_id, known)
            return list(known.facts)

    def knows_past(self, ticket_id: str, seq: int) -> bool:
        """Whether this process knows a fact after position ``seq`` (no read)."""
        known = self._cache.get(ticket_id)
        return known is not None and known.next_seq > seq + 1

    async def latest(self, query: Mapping[str, Any] | None = None,
                     projection: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Each in-flight ticket's latest fact document (its current view), by ticket."""
        return await latest_documents(self.coll, query, projection)

    # -- loading ----------------------------------------------------------------------------

    async def _load(self, ticket_id: str, fact: Fact | None) -> _Known:
        """What this process does not know yet about the ticket (live facts only)."""
        if fact is not None:
            # Nothing read before an append: it tries position 1, and were that taken (a
            # history this process has not seen) the refused insert says so and the history
            # is read then. Usually the ticket is new to the store too: its first event, or
            # an event that overtook its TicketSubmitted across topics (issue 17 measured a
            # read - a miss that scans the collection - for 58 % of the tickets in a burst).
            return _Known((), 1)
        return await self._forward(ticket_id, _Known((), 1))

    def known(self, ticket_id: str) -> tuple[Fact, ...]:
        """The ticket's facts as this process knows them, without reading the store."""
        known = self._cache.get(ticket_id)
        return () if known is None else known.facts

    async def _restore(self, ticket_id: str, known: _Known) -> _Known:
        """Join the ticket's archived runs to its live facts (the lock is held)."""
        archived: list[Fact] = []
        runs = [doc async for doc in self.archive.find({"ticket_id": ticket_id})]
        for run in sorted(runs, key=lambda d: (int(d["first"]), str(d["_id"]))):
            archived += map(from_document, run["facts"])
        seen = {f.fact_id for f in known.facts}
        missing = tuple(f for f in _unique(archived) if f.fact_id not in seen)
        if not missing:
            return known
        # The marker's document carries the view of the whole history; its id names the
        # history joined, so a repeated restore (another sweeper) adds nothing.
        marker = Fact(fact_id=f"{ticket_id}:restored:{len(missing)}", kind="restored",
                      at=self._clock(), revision=max(f.revision for f in missing))
        joined = _Known((*missing, *known.facts), known.next_seq)
        recorded = await self._append(ticket_id, as_stored(marker), joined)
        return _Known(recorded.after, self._cache[ticket_id].next_seq)

    async def _forward(self, ticket_id: str, known: _Known) -> _Known:
        facts, seq = list(known.facts), known.next_seq
        while (doc := await self.coll.find_one({"_id": _key(ticket_id, seq)})) is not None:
            facts.append(from_document(doc["fact"]))
            seq += 1
        return _Known(tuple(facts), seq)

    def _remember(self, ticket_id: str, known: _Known) -> None:
        self._cache[ticket_id] = known
        self._cache.move_to_end(ticket_id)
        while len(self._cache) > self._cache_tickets:
            self._cache.popitem(last=False)

    @contextlib.asynccontextmanager
    async def _locked(self, ticket_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(ticket_id)
        if entry is None:
            entry = self._locks[ticket_id] = _Lock(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:  # nobody waits: drop it, so locks do not pile up
                del self._locks[ticket_id]


async def latest_documents(coll: AsyncCollection[dict[str, Any]],
                           query: Mapping[str, Any] | None = None,
                           projection: Mapping[str, Any] | None = None
                           ) -> dict[str, dict[str, Any]]:
    """The latest (highest-position) document per ticket among those ``query`` matches."""
    latest: dict[str, dict[str, Any]] = {}
    async for doc in coll.find(dict(query or {}), projection):
        current = latest.get(doc["ticket_id"])
        if current is None or doc["seq"] > current["seq"]:
            latest[doc["ticket_id"]] = doc
    return latest


def _unique(facts: Sequence[Fact]) -> list[Fact]:
    unique: dict[str, Fact] = {}
    for fact in facts:
        unique.setdefault(fact.fact_id, fact)
    return list(unique.values())


def facts_of(docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The fact documents of a run of ledger documents, in position order (for the archive)."""
    return [dict(d["fact"]) for d in sorted(docs, key=lambda d: int(d["seq"]))]
