"""Stuck tickets: open work with no progress since an SLA deadline passed.

Read from the notifier's open-ticket board (:mod:`services.notifier.board`), which the
notifier rewrites from its ticket ledger on every event: each open ticket's lifecycle state,
the time of its latest lifecycle fact, and its SLA clocks with their deadlines as the
notifier's own policy computed them (so this needs no SLA settings of its own).

A ticket is *stuck* when one of its SLA clocks is running (not stopped, not paused while
the customer is asked something) past its deadline **and** nothing moved the ticket since
that deadline: a ticket whose intervention is late but still reporting steps is late, not
stuck. ``intervene status --stuck`` lists them, most overdue first.

Stuck also means stuck *from the first accepted byte*, long before an SLA deadline: a
ticket waiting at a hand-off between services for longer than ``HANDOFF_GRACE`` is a
:class:`StalledHandoff`, with its age and the service it waits for -

- accepted but not submitted: an entry in intake's outbox (accepted with a 202, not yet
  on the bus) - waits for intake (its relay, and Kafka);
- submitted but not authorized: on the notifier's board as ``submitted`` with no decision
  in auth's history for the revision - waits for auth;
- authorized but not claimed (or claimed but not started): auth decided, the executor has
  not started - waits for the executor.

Every read is of a small collection (the outbox holds only unpublished entries, the board
only open tickets) or by ``_id``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from pymongo.asynchronous.database import AsyncDatabase

from services.auth.history import COLLECTION as AUTH_HISTORY
from services.intake.outbox import OUTBOX
from services.notifier.board import WAITING_FOR, BoardEntry, read_board

HANDOFF_GRACE: Final = timedelta(minutes=2)
"""How long a ticket may wait at a hand-off before it counts as stuck: far above the
seconds a healthy pipeline takes, far below the 10-minute initial-response clock."""

Stage = Literal["accepted_not_submitted", "submitted_not_authorized", "authorized_not_claimed",
                "claimed_queued"]
WAITS_FOR: Final[dict[Stage, str]] = {
    "accepted_not_submitted": "intake (its outbox relay publishing to Kafka)",
    "submitted_not_authorized": "auth (the authorization decision)",
    "authorized_not_claimed": "executor (claiming and starting the intervention)",
    "claimed_queued": "executor capacity (claimed, queued for a free worker; the customer "
                      "was told it is queued)",
}


@dataclass(frozen=True, kw_only=True)
class StuckTicket:
    ticket_id: str
    state: str  # lifecycle state: submitted, waiting_customer, in_progress, waiting_engineer
    clock: str  # the overdue SLA clock: initial_response or intervention
    revision: int  # the ticket revision the clock belongs to
    deadline: datetime
    overdue: timedelta
    last_progress_at: datetime | None
    waiting_for: str  # what the ticket waits for, in words


def stuck_tickets(entries: Iterable[BoardEntry], now: datetime) -> list[StuckTicket]:
    """Pure: the stuck tickets among board entries at ``now``, most overdue first."""
    stuck: list[StuckTicket] = []
    for entry in entries:
        if entry.phase is None:
            continue  # closed; only a page is still waiting
        progress = entry.progress_at
        overdue = sorted((c for c in entry.overdue(now)
                          if progress is None or progress <= c.deadline),
                         key=lambda c: c.deadline)
        if not overdue:
            continue
        clock = overdue[0]
        stuck.append(StuckTicket(
            ticket_id=entry.ticket_id, state=entry.phase, clock=clock.name,
            revision=clock.revision, deadline=clock.deadline, overdue=now - clock.deadline,
            last_progress_at=progress, waiting_for=WAITING_FOR[entry.phase]))
    return sorted(stuck, key=lambda s: s.overdue, reverse=True)


async def find_stuck_tickets(db: AsyncDatabase[Any], now: datetime) -> list[StuckTicket]:
    """The stuck tickets at ``now`` (timezone-aware), most overdue first."""
    return stuck_tickets(await read_board(db), now)


@dataclass(frozen=True, kw_only=True)
class StalledHandoff:
    ticket_id: str
    revision: int
    stage: Stage
    since: datetime  # when the ticket reached this hand-off
    age: timedelta
    waits_for: str


@dataclass(frozen=True, kw_only=True)
class Waiting:
    """A ticket revision at a hand-off, as read from the stores."""

    ticket_id: str
    revision: int
    since: datetime
    stage: Stage


def stalled_handoffs(waiting: Iterable[Waiting], now: datetime,
                     grace: timedelta = HANDOFF_GRACE) -> list[StalledHandoff]:
    """Pure: the hand-offs waited on longer than ``grace`` at ``now``, oldest first."""
    stalled = [StalledHandoff(ticket_id=w.ticket_id, revision=w.revision, stage=w.stage,
                              since=w.since, age=now - w.since, waits_for=WAITS_FOR[w.stage])
               for w in waiting if now - w.since > grace]
    return sorted(stalled, key=lambda s: s.age, reverse=True)


async def waiting_at_handoffs(db: AsyncDatabase[Any]) -> list[Waiting]:
    """Every ticket revision waiting at a hand-off now (see the module doc)."""
    waiting = [Waiting(ticket_id=doc["ticket_id"], revision=int(doc["revision"]),
                       since=_aware(doc["accepted_at"]), stage="accepted_not_submitted")
               async for doc in db[OUTBOX].find({}, {"ticket_id": 1, "revision": 1,
                                                     "accepted_at": 1})]
    for entry in await read_board(db):
        if entry.phase != "submitted" or entry.progress_at is None:
            continue
        revision = max((c.revision for c in entry.clocks), default=1)
        decided = await db[AUTH_HISTORY].find_one({"_id": f"ticket:{entry.ticket_id}"})
        since = entry.progress_at
        if decided is None or int(decided.get("latest_revision", 0)) < revision:
            stage: Stage = "submitted_not_authorized"
        elif entry.queued_at is not None:
            stage, since = "claimed_queued", entry.queued_at  # an overload, not a fault
        else:
            stage = "authorized_not_claimed"
        waiting.append(Waiting(ticket_id=entry.ticket_id, revision=revision,
                               since=since, stage=stage))
    return waiting


async def find_stalled_handoffs(db: AsyncDatabase[Any], now: datetime,
                                grace: timedelta = HANDOFF_GRACE) -> list[StalledHandoff]:
    return stalled_handoffs(await waiting_at_handoffs(db), now, grace)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
