"""Durable deadlines, swept: a notifier restart loses no timer and fires none twice.

Lessons from paging tools: in-memory delayed tasks are lost on restart, so every deadline
lives in MongoDB and a periodic sweep fires what is due.

- :class:`Deadlines` finds what is due from the ledger itself: every fact document carries
  ``due_at``, when the ticket's next alert falls due after that fact (:mod:`.views`), and a
  ticket's latest fact document is its current state. It is only a *hint*: what is due is
  always recomputed from the ticket's facts (:func:`sla.fold`), so a stale hint can make
  the sweeper look too early, never fire the wrong thing. The sweep's range query scans the
  ledger's live collection, which holds only in-flight tickets (:mod:`.archive`), so it
  stays small; a superseded document whose ``due_at`` has passed is skipped without a read
  when this process knows a later fact, and read past once otherwise.
- :class:`Sweeper` fires each due alert once: it claims the alert id
  (:class:`~services.notifier.claims.Claims`), performs it and records an ``alert_fired``
  fact. The fact is what says "done": once it is in the ledger the alert is no longer due,
  so no sweeper claims it again, and the claim is never updated (an update scans the
  claims collection, which grows with every alert, holding the store's write lock; issue
  17). A sweeper that finds the claim held by another defers the ticket and looks again
  after ``retry``, by when the fact is recorded. A crash after the claim, before the fact
  is recorded, leaves it ``claimed``; after the lease a sweeper takes it over and performs
  it again with the same derived ids (the published events are the same events, the chat
  post the same outbox entry). A claim marked ``done`` (by a notifier before this change)
  is repaired by recording the fact, without firing again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container
from datetime import UTC, datetime, timedelta
from typing import Literal

from services.notifier.claims import Claims
from services.notifier.ledger import Recorded, TicketLedger
from services.notifier.sla import Alert, SlaPolicy, TicketState, fired_fact, fold

log = logging.getLogger(__name__)

ALERT_CLAIMS = "notifier_alert_claims"

Clock = Callable[[], datetime]
FireResult = Literal["fired", "deferred"]
FireAlert = Callable[[Alert, TicketState, datetime], Awaitable[FireResult]]
"""Performs an alert (publishes, posts); ``deferred`` when it must not fire yet."""
AfterRecord = Callable[[Recorded], Awaitable[None]]
"""Called with each fired alert's fact append (a "queued" update answers a clock: its
milestone is counted from the append's before and after)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class Deadlines:
    def __init__(self, ledger: TicketLedger, policy: SlaPolicy) -> None:
        self._ledger = ledger
        self._policy = policy

    async def state(self, ticket_id: str, *, history: bool = False) -> TicketState:
        """The ticket's state from its live facts (``history``: with an archived history
        joined back, for firing alerts; see :mod:`.ledger`)."""
        return fold(ticket_id, await self._ledger.facts(ticket_id, history=history),
                    self._policy)

    async def due(self, now: datetime, *, limit: int = 200,
                  skip: Container[str] = ()) -> list[str]:
        """Tickets whose latest view has come due, soonest first (but those in ``skip``)."""
        # Not limited in the store: a ticket's latest document must be among those read,
        # else one of its older, superseded documents would pass for its state.
        docs = await self._ledger.latest({"due_at": {"$lte": now}},
                                         {"ticket_id": 1, "seq": 1, "due_at": 1})
        due = [doc for ticket_id, doc in docs.items() if ticket_id not in skip
               and not self._ledger.knows_past(ticket_id, int(doc["seq"]))]
        return [str(doc["ticket_id"]) for doc in sorted(due, key=lambda d: d["due_at"])][:limit]

    async def hint(self, ticket_id: str) -> datetime | None:
        """When the ticket's next alert falls due (None: nothing pending)."""
        return (await self.state(ticket_id)).next_due(self._policy)


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
        recorded: AfterRecord | None = None,
        concurrency: int = 32,
    ) -> None:
        self._recorded = recorded
        self._concurrency = concurrency
        self._ledger = ledger
        self._deadlines = deadlines
        self._claims = claims
        self._policy = policy
        self._fire = fire
        self._clock = clock
        self._interval = interval
        self._retry = retry
        self._owner = owner
        # Tickets to leave alone until then (a failure or a deferral): in memory, since a
        # restarted sweeper may as well look again at once.
        self._later: dict[str, datetime] = {}

    async def sweep_once(self, now: datetime | None = None) -> list[Alert]:
        """Fire everything due at ``now`` (the injected clock's time by default)."""
        now = now or self._clock()
        fired: list[Alert] = []
        self._later = {t: at for t, at in self._later.items() if at > now}
        # Deferred tickets are left out before the batch is cut, so they cannot crowd out
        # the others.
        # The due tickets are swept at once (a bounded number at a time): their claims
        # and facts then share round trips (services.runtime.group_commit), so
        # a burst's due "queued" notices go out in a few round trips' time, not in one
        # ticket's time each. A ticket's own alerts stay in order.
        gate = asyncio.Semaphore(self._concurrency)

        async def one(ticket_id: str) -> None:
            async with gate:
                try:
                    fired.extend(await self.sweep_ticket(ticket_id, now))
                except Exception:  # one ticket's failure must not stop the others' timers
                    log.exception("sweeping ticket %s failed; retrying later", ticket_id)
                    self._later[ticket_id] = now + self._retry

        await asyncio.gather(*(one(t) for t in await self._deadlines.due(now, skip=self._later)))
        return fired

    async def sweep_ticket(self, ticket_id: str, now: datetime) -> list[Alert]:
        state = await self._deadlines.state(ticket_id, history=True)
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
                fired.append(alert)
            # Fired now, or marked done earlier: the fact (whose document carries the
            # ticket's next deadline) is the alert's "done" (module doc).
            entry = await self._ledger.record(ticket_id, fired_fact(alert, now))
            if self._recorded is not None:
                await self._recorded(entry)
        if deferred:
            self._later[ticket_id] = now + self._retry
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
