"""Stuck tickets: open work with no progress since an SLA deadline passed.

Read from the notifier's open-ticket board (:mod:`services.notifier.board`), which the
notifier rewrites from its ticket ledger on every event: each open ticket's lifecycle state,
the time of its latest lifecycle fact, and its SLA clocks with their deadlines as the
notifier's own policy computed them (so this needs no SLA settings of its own).

A ticket is *stuck* when one of its SLA clocks is running (not stopped, not paused while
the customer is asked something) past its deadline **and** nothing moved the ticket since
that deadline: a ticket whose intervention is late but still reporting steps is late, not
stuck. ``intervene status --stuck`` lists them, most overdue first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.notifier.board import WAITING_FOR, BoardEntry, read_board


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
