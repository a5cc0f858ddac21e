"""Durable deadlines, swept: a notifier restart loses no timer and fires none twice.

Lessons from paging tools: in-memory delayed tasks are lost on restart, so every deadline
lives in MongoDB and a periodic sweep fires what is due.

- :class:`Deadlines` keeps one document per ticket with something pending
  (``_id = ticket_id``, ``due_at`` = when its next alert falls due). It is only a *hint*:
  what is due is always recomputed from the ticket's ledger (:func:`sla.fold`), so a stale
  hint can make the sweeper look too early, never fire the wrong thing. The hint is written
  after the facts it was computed from, then the ledger is checked for a fact appended in
  the meantime, and if there is one the hint is recomputed: the last write always reflects
  every fact (no lock needed, which FerretDB could not give anyway). Only tickets with
  something pending have a hint, so the sweep's range query (FerretDB scans for anything
  but ``_id``) stays small.
- :class:`Sweeper` fires each due alert once: it claims the alert id
  (:class:`~services.notifier.claims.Claims`), performs it, marks the claim done and records
  an ``alert_fired`` fact. A crash after the claim leaves it ``claimed``; after the lease a
  sweeper takes it over and performs it again with the same derived ids (the published
  events are the same events). A crash after the claim is done but before the fact is
  recorded is repaired by recording the fact, without firing again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo.asynchronous.database import AsyncDatabase

from services.notifier.claims import Claims
from services.notifier.ledger import TicketLedger
from services.notifier.sla import Alert, SlaPolicy, TicketState, fired_fact, fold

log = logging.getLogger(__name__)

COLLECTION = "notifier_deadlines"
ALERT_CLAIMS = "notifier_alert_claims"

Clock = Callable[[], datetime]
FireResult = Literal["fired", "deferred"]
FireAlert = Callable[[Alert, TicketState, datetime], Awaitable[FireResult]]
"""Performs an alert (publishes, posts); ``deferred`` when it must not fire yet."""
Recorded = Callable[[str], Awaitable[None]]
"""Called with a ticket id after alerts of it fired and their facts were recorded."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Deadlines:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], ledger: TicketLedger,
                 policy: SlaPolicy, *, collection: str = COLLECTION) -> None:
        self._coll = db[collection]
        self._ledger = ledger
        self._policy = policy

    async def state(self, ticket_id: str) -> TicketState:
        return fold(ticket_id, await self._ledger.facts(ticket_id), self._policy)

    async def refresh(self, ticket_id: str, *, not_before: datetime | None = None
                      ) -> datetime | None:
        """Rewrite the ticket's hint from its ledger; returns the next due time."""
        while True:
            facts = await self._ledger.facts(ticket_id)
            due = fold(ticket_id, facts, self._policy).next_due(self._policy)
            if due is not None and not_before is not None:
                due = max(due, not_before)
            if due is None:
                await self._coll.delete_one({"_id": ticket_id})
            else:
                await self._coll.replace_one({"_id": ticket_id},
                                             {"due_at": due, "facts": len(facts)}, upsert=True)
            if await self._ledger.count(ticket_id) == len(facts):
                return due

    async def due(self, now: datetime, *, limit: int = 200) -> list[str]:
        """Tickets whose hint has come due, oldest first."""
        cursor = self._coll.find({"due_at": {"$lte": now}}, {"_id": 1}).sort("due_at", 1)
        return [str(doc["_id"]) async for doc in cursor.limit(limit)]

    async def hint(self, ticket_id: str) -> datetime | None:
        doc = await self._coll.find_one({"_id": ticket_id})
        return None if doc is None else _aware(doc["due_at"])


class Sweeper:
    def __init__(
        self,
        *,
        ledger: TicketLedger,
        deadlines: Deadlines,
        claims: Claims,
        policy: SlaPolicy,
        fire: FireAlert,
        clock: Clock = utc_now,
        interval: timedelta = timedelta(seconds=1),
        retry: timedelta = timedelta(seconds=5),
        owner: str = "",
        recorded: Recorded | None = None,
    ) -> None:
        self._recorded = recorded
        self._ledger = ledger
        self._deadlines = deadlines
        self._claims = claims
        self._policy = policy
        self._fire = fire
        self._clock = clock
        self._interval = interval
        self._retry = retry
        self._owner = owner

    async def sweep_once(self, now: datetime | None = None) -> list[Alert]:
        """Fire everything due at ``now`` (the injected clock's time by default)."""
        now = now or self._clock()
        fired: list[Alert] = []
        for ticket_id in await self._deadlines.due(now):
            try:
                fired += await self.sweep_ticket(ticket_id, now)
            except Exception:  # one ticket's failure must not stop the others' timers
                log.exception("sweeping ticket %s failed; retrying later", ticket_id)
                await self._deadlines.refresh(ticket_id, not_before=now + self._retry)
        return fired

    async def sweep_ticket(self, ticket_id: str, now: datetime) -> list[Alert]:
        state = await self._deadlines.state(ticket_id)
        fired: list[Alert] = []
        deferred = False
        for alert in state.due(now, self._policy):
            claim = await self._claims.claim(alert.alert_id, now=now, owner=self._owner,
                                             data={"ticket_id": ticket_id, "kind": alert.kind})
            if claim.outcome == "held":
                deferred = True
                continue
            if claim.mine:
                if await self._fire(alert, state, now) == "deferred":
                    await self._claims.release(alert.alert_id)
                    deferred = True
                    continue
                await self._claims.complete(alert.alert_id, fired_at=now)
                fired.append(alert)
            # Done now or earlier (a crash before the fact was recorded): record the fact.
            await self._ledger.append(ticket_id, fired_fact(alert, now))
        await self._deadlines.refresh(ticket_id,
                                      not_before=now + self._retry if deferred else None)
        if fired and self._recorded is not None:
            await self._recorded(ticket_id)
        return fired

    async def run(self) -> None:
        """Sweep every ``interval`` until cancelled."""
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store may blip; the next sweep retries
                log.exception("deadline sweep failed")
            await asyncio.sleep(self._interval.total_seconds())
