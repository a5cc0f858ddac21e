"""Each ticket's history of :class:`~services.notifier.sla.Fact` values, append-only, in MongoDB.

The SLA clocks and pages are *computed* from this history (:func:`services.notifier.sla.fold`)
rather than kept as a mutable document, because FerretDB 1.24 has no atomic
read-modify-write (see :mod:`services.notifier.claims`): two events of one ticket handled at
once (they arrive on different topics) would overwrite each other's changes to a shared
document. Appends cannot lose each other.

Fact ``n`` of a ticket is the document ``_id = "<ticket_id>#<n>"`` (n = 1, 2, ...): the
append inserts at the next position and, when another writer took it (duplicate key), at the
one after; reading probes ``#1, #2, ...`` until one is missing. Every access is an ``_id``
equality, the one filter FerretDB pushes down to SQL, so the cost does not grow with the
number of tickets. Facts never change, so a process caches what it has read and only probes
past it.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.notifier.sla import Fact

COLLECTION = "notifier_ticket_facts"


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


class TicketLedger:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, collection: str = COLLECTION,
                 cache_tickets: int = 10_000) -> None:
        self._coll = db[collection]
        self._cache: OrderedDict[str, list[Fact]] = OrderedDict()
        self._cache_tickets = cache_tickets

    async def facts(self, ticket_id: str) -> list[Fact]:
        """Every fact recorded for the ticket, in recorded order."""
        known = list(self._cache.get(ticket_id, ()))
        while True:
            doc = await self._coll.find_one({"_id": _key(ticket_id, len(known) + 1)})
            if doc is None:
                break
            known.append(from_document(doc["fact"]))
        self._remember(ticket_id, known)
        return known

    async def append(self, ticket_id: str, fact: Fact) -> bool:
        """Record ``fact`` unless a fact with its id is already recorded; True if recorded."""
        known = await self.facts(ticket_id)
        while True:
            if any(f.fact_id == fact.fact_id for f in known):
                return False
            seq = len(known) + 1
            try:
                await self._coll.insert_one({"_id": _key(ticket_id, seq), "ticket_id": ticket_id,
                                             "seq": seq, "fact": to_document(fact)})
            except DuplicateKeyError:
                known = await self.facts(ticket_id)  # someone appended first: look again
                continue
            known.append(fact)
            self._remember(ticket_id, known)
            return True

    async def count(self, ticket_id: str) -> int:
        """How many facts are recorded (one lookup past what this process knows)."""
        return len(await self.facts(ticket_id))

    def _remember(self, ticket_id: str, facts: list[Fact]) -> None:
        self._cache[ticket_id] = facts
        self._cache.move_to_end(ticket_id)
        while len(self._cache) > self._cache_tickets:
            self._cache.popitem(last=False)
