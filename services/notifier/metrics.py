"""The notifier's domain metrics: the event stream projected into what SREs watch.

The notifier consumes every event and keeps each ticket's history (:mod:`.ledger`), so it
alone can say how long a ticket waited for its initial response, whether an intervention
finished within its timeline, how long a page waited for an engineer. Three kinds of
measurement, each counted once however often an event is redelivered and however many
notifier replicas run:

- **per event** (interventions started/completed, hardware escalations): counted by the
  handler whose ledger append recorded the event's fact — the ledger's dedupe on the event
  id is the once-only guarantee;
- **milestones** read off the folded SLA state (a clock stopped, a clock stopped late, a
  page acknowledged): events race across topics, so the fact that completes a milestone may
  be recorded before the fact that starts it. A milestone is counted by the append that
  made it appear: the ledger's append returns the ticket's facts just before and just after
  it, exact across replicas (:mod:`.ledger`), so exactly one append sees a given milestone
  appear, without a store round trip. A clock stopped *late* shares its key with the
  sweeper's breach alert, which may have counted it already: that one, and the sweeper's
  SLA alerts, are counted once by inserting their key into ``notifier_metric_marks`` (the
  unique ``_id`` lets exactly one counter win: the compare-and-set of :mod:`.claims`), a
  rare path;
- **gauges** (open tickets by state and age, pages waiting, overdue clocks) read from the
  open-ticket board (:mod:`.board`) every ``NOTIFIER_METRICS_REFRESH_S``: durable state, so
  they survive restarts; every replica reports the same values (aggregate with ``max``).

No attribute holds a ticket id, an event id, an engineer or any text from a ticket: only
the small enums listed in docs/operations-metrics.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, get_args

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.events import (
    ChatChannel,
    Event,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
)
from services.notifier.board import PHASES, BoardEntry, TicketBoard
from services.notifier.ledger import Recorded
from services.notifier.sla import (
    Alert,
    Fact,
    PageKind,
    SlaClock,
    SlaPolicy,
    TicketState,
    fold,
    sla_alert_id,
)
from services.runtime.group_commit import GroupInsert

log = logging.getLogger(__name__)

MARKS = "notifier_metric_marks"

Clock = Callable[[], datetime]

# Bucket boundaries (seconds) put an edge on every promise the procedure makes, so shares
# "within 10 min / 60 min / 4 h" are exact bucket ratios: 480 and 600 (the warning at 80 %
# and the initial-response deadline), 3600 and 14400 (standard and complex budgets).
INITIAL_RESPONSE_SECONDS: Final[tuple[float, ...]] = (
    30.0, 60.0, 120.0, 300.0, 480.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)
COMPLETION_SECONDS: Final[tuple[float, ...]] = (
    300.0, 900.0, 1800.0, 2880.0, 3600.0, 5400.0, 7200.0, 10800.0, 11520.0, 14400.0, 21600.0,
    43200.0, 86400.0)
ACKNOWLEDGEMENT_SECONDS: Final[tuple[float, ...]] = (
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)

# Open-ticket age bands (label value, upper bound in seconds), aligned with the SLA budgets.
AGE_BANDS: Final[tuple[tuple[str, float], ...]] = (
    ("0-10m", 600.0), ("10m-1h", 3600.0), ("1h-4h", 14400.0), ("4h+", math.inf))
PAGE_KINDS: Final[tuple[PageKind, ...]] = ("new_ticket", "manual_step", "hardware")
CLOCK_NAMES: Final[tuple[str, ...]] = ("initial_response", "intervention")
TIMELINES: Final[tuple[str, ...]] = ("standard", "complex", "datacenter")

Attrs = dict[str, str]


def clock_attributes(clock: SlaClock) -> Attrs:
    """``clock``, plus the intervention's ``timeline`` (the initial response has none)."""
    attrs: Attrs = {"clock": clock.name}
    if clock.name == "intervention":
        attrs["timeline"] = clock.timeline or "standard"
    return attrs


# Every clock/timeline pair an SLA counter can carry: started at zero so that ratios such as
# breaches / (breaches + met) exist before the first breach (a missing series would make the
# burn-rate rules silently return nothing).
SLA_SERIES: Final[tuple[Attrs, ...]] = (
    {"clock": "initial_response"},
    *({"clock": "intervention", "timeline": t} for t in TIMELINES),
)
# The same for the rare, bounded per-event counters the dashboard sums with increase(): a
# series that appears with its first increment is invisible to increase() (it has no earlier
# sample), so without these the first hardware escalation or acknowledgement after a start
# would never show. (Interventions started/completed carry too many label combinations to
# start them all; they are counted from their second occurrence per combination.)
HARDWARE_SERIES: Final[tuple[Attrs, ...]] = tuple(
    {"component": c, "severity": s}
    for c in get_args(HardwareEscalated.model_fields["component"].annotation)
    for s in get_args(HardwareEscalated.model_fields["severity"].annotation))
ACKNOWLEDGEMENT_SERIES: Final[tuple[Attrs, ...]] = tuple(
    {"page_kind": k, "channel": c} for k in PAGE_KINDS for c in get_args(ChatChannel))


@dataclass(frozen=True, kw_only=True)
class Milestone:
    """Something a ticket reached that is counted once, under ``key``."""

    key: str
    kind: Literal["clock_stopped", "clock_late", "acknowledged"]
    seconds: float
    attrs: Attrs
    met: bool = False  # clock_stopped: within its budget (and never breached)


def milestones(ticket_id: str, facts: Sequence[Fact], state: TicketState) -> list[Milestone]:
    """Pure: every milestone the ticket's state shows (counted or not; the caller dedupes)."""
    found: list[Milestone] = []
    for clock in state.clocks:
        if clock.stopped_at is None:
            continue
        elapsed = clock.elapsed(clock.stopped_at)
        breach_id = sla_alert_id(ticket_id, clock, "sla_breach")
        late = elapsed > clock.budget
        found.append(Milestone(
            key=f"{ticket_id}:{clock.key}:stopped", kind="clock_stopped",
            seconds=elapsed.total_seconds(), attrs=clock_attributes(clock),
            met=not late and breach_id not in state.fired))
        if late:
            # Stopped past its deadline: a breach, whether or not the sweeper got to fire it
            # (it was down, or the stopping fact arrived late). Same key as the sweeper's
            # alert, so it is counted once either way.
            found.append(Milestone(key=breach_id, kind="clock_late",
                                   seconds=elapsed.total_seconds(),
                                   attrs=clock_attributes(clock)))
    channels = {f.page_id: f.channel for f in facts if f.kind == "acknowledged"}
    for page in state.pages:
        if page.closed_by != "acknowledged" or page.closed_at is None:
            continue
        found.append(Milestone(
            key=f"{ticket_id}:page:{page.page_id}:acknowledged", kind="acknowledged",
            seconds=max(0.0, (page.closed_at - page.opened_at).total_seconds()),
            attrs={"page_kind": page.kind, "channel": channels.get(page.page_id) or "unknown"}))
    return found


def category_of(facts: Iterable[Fact], revision: int) -> str:
    """The category of the latest submitted revision up to ``revision``."""
    best: Fact | None = None
    for fact in facts:
        if fact.kind == "submitted" and fact.category is not None and fact.revision <= revision \
                and (best is None or fact.revision >= best.revision):
            best = fact
    return best.category if best is not None and best.category is not None else "unknown"


@dataclass(frozen=True, kw_only=True)
class BoardSnapshot:
    open: dict[tuple[str, str], int]  # (state, age band) -> tickets
    oldest: dict[str, float]  # state -> seconds
    overdue: dict[str, int]  # clock -> tickets
    pages: dict[str, int]  # page kind -> pages
    oldest_page: dict[str, float]  # page kind -> seconds
    # The least time left on a running initial-response clock (negative past its deadline);
    # None when none runs.
    initial_time_left: float | None = None


def snapshot(entries: Iterable[BoardEntry], now: datetime) -> BoardSnapshot:
    """Pure: the gauges' values from the board."""
    opened: dict[tuple[str, str], int] = {}
    oldest: dict[str, float] = {}
    overdue: dict[str, int] = {}
    pages: dict[str, int] = {}
    oldest_page: dict[str, float] = {}
    time_left: float | None = None
    for entry in entries:
        if entry.phase is not None and entry.opened_at is not None:
            age = max(0.0, (now - entry.opened_at).total_seconds())
            band = next(name for name, bound in AGE_BANDS if age < bound)
            opened[(entry.phase, band)] = opened.get((entry.phase, band), 0) + 1
            oldest[entry.phase] = max(oldest.get(entry.phase, 0.0), age)
        for clock in entry.clocks:
            if clock.running and clock.name == "initial_response":
                left = (clock.deadline - now).total_seconds()
                time_left = left if time_left is None else min(time_left, left)
        for name in {c.name for c in entry.overdue(now)}:
            overdue[name] = overdue.get(name, 0) + 1
        for page in entry.pages:
            waited = max(0.0, (now - page.opened_at).total_seconds())
            pages[page.kind] = pages.get(page.kind, 0) + 1
            oldest_page[page.kind] = max(oldest_page.get(page.kind, 0.0), waited)
    return BoardSnapshot(open=opened, oldest=oldest, overdue=overdue, pages=pages,
                         oldest_page=oldest_page, initial_time_left=time_left)


class NotifierMetrics:
    """The instruments; values come from :class:`TicketProjection`."""

    def __init__(self, meter_provider: MeterProvider, policy: SlaPolicy) -> None:
        self._policy = policy
        meter = meter_provider.get_meter("intervention.notifier.domain")
        self._started = meter.create_counter(
            "intervention.interventions.started", unit="{intervention}",
            description="Interventions started, by category, access method, mode, timeline.")
        self._completed = meter.create_counter(
            "intervention.interventions.completed", unit="{intervention}",
            description="Interventions completed, by category, access method, outcome, "
                        "dry run.")
        self._hardware = meter.create_counter(
            "intervention.hardware.escalations", unit="{escalation}",
            description="Hardware escalations by component and severity.")
        self._acks = meter.create_counter(
            "intervention.acknowledgements", unit="{acknowledgement}",
            description="Pages acknowledged by an engineer, by page kind and chat channel.")
        self._ack_time = meter.create_histogram(
            "intervention.acknowledgement.duration", unit="s",
            description="Time from a page to its acknowledgement, by page kind.",
            explicit_bucket_boundaries_advisory=ACKNOWLEDGEMENT_SECONDS)
        self._escalations = meter.create_counter(
            "intervention.pages.escalations", unit="{escalation}",
            description="Unacknowledged pages escalated, by page kind and on-call tier.")
        self._initial = meter.create_histogram(
            "intervention.sla.initial_response.duration", unit="s",
            description="Time from a ticket revision to its initial response (ack or the "
                        "automation taking it up).",
            explicit_bucket_boundaries_advisory=INITIAL_RESPONSE_SECONDS)
        self._completion = meter.create_histogram(
            "intervention.sla.completion.duration", unit="s",
            description="Active time from intervention start to completion (pauses for the "
                        "customer excluded), by timeline.",
            explicit_bucket_boundaries_advisory=COMPLETION_SECONDS)
        self._met = meter.create_counter(
            "intervention.sla.met", unit="{clock}",
            description="SLA clocks stopped within their budget, by clock and timeline.")
        self._warnings = meter.create_counter(
            "intervention.sla.warnings", unit="{clock}",
            description="SLA clocks past their warning threshold, by clock and timeline.")
        self._breaches = meter.create_counter(
            "intervention.sla.breaches", unit="{clock}",
            description="SLA clocks past their deadline, by clock and timeline.")
        for attrs in SLA_SERIES:
            for counter in (self._met, self._warnings, self._breaches):
                counter.add(0, attrs)
        for attrs in HARDWARE_SERIES:
            self._hardware.add(0, attrs)
        for attrs in ACKNOWLEDGEMENT_SERIES:
            self._acks.add(0, attrs)
        self._board: BoardSnapshot | None = None
        for name, unit, description, callback in (
            ("intervention.tickets.open", "{ticket}",
             "Open tickets by lifecycle state and age band.", self._observe_open),
            ("intervention.tickets.oldest_age", "s",
             "Age of the oldest open ticket, by lifecycle state.", self._observe_oldest),
            ("intervention.tickets.overdue", "{ticket}",
             "Open tickets with a running SLA clock past its deadline, by clock.",
             self._observe_overdue),
            ("intervention.pages.open", "{page}",
             "Pages waiting for an engineer's acknowledgement, by page kind.",
             self._observe_pages),
            ("intervention.pages.oldest_age", "s",
             "How long the oldest unacknowledged page has waited, by page kind.",
             self._observe_oldest_page),
            ("intervention.sla.initial_response.time_left", "s",
             "The least time left on a running initial-response clock (negative past its "
             "deadline; the whole budget when none runs): the initial response at risk.",
             self._observe_initial_time_left),
        ):
            meter.create_observable_gauge(name, callbacks=[callback], unit=unit,
                                          description=description)

    @property
    def policy(self) -> SlaPolicy:
        return self._policy

    # -- recorded ------------------------------------------------------------------------------

    def event(self, event: Event, *, category: str) -> None:
        match event:
            case InterventionStarted():
                self._started.add(1, {"category": category, "access_method": event.access_method,
                                      "mode": event.mode, "timeline": event.timeline})
            case InterventionCompleted():
                self._completed.add(1, {
                    "category": category, "access_method": event.access_method or "none",
                    "outcome": event.outcome, "dry_run": "true" if event.dry_run else "false"})
            case HardwareEscalated():
                self._hardware.add(1, {"component": event.component,
                                       "severity": event.severity})

    def milestone(self, milestone: Milestone) -> None:
        attrs = milestone.attrs
        match milestone.kind:
            case "clock_stopped":
                if attrs["clock"] == "initial_response":
                    self._initial.record(milestone.seconds)
                else:
                    self._completion.record(milestone.seconds, {"timeline": attrs["timeline"]})
                if milestone.met:
                    self._met.add(1, attrs)
            case "clock_late":
                self._breaches.add(1, attrs)
            case "acknowledged":
                self._acks.add(1, attrs)
                self._ack_time.record(milestone.seconds, {"page_kind": attrs["page_kind"]})

    def alert(self, alert: Alert) -> None:
        if alert.kind == "escalation":
            kind = alert.page.kind if alert.page is not None else "new_ticket"
            self._escalations.add(1, {"page_kind": kind,
                                      "tier": str(self._policy.tier_for(alert.level))})
        elif alert.clock is not None and alert.kind != "queued_notice":
            counter = self._warnings if alert.kind == "sla_warning" else self._breaches
            counter.add(1, clock_attributes(alert.clock))

    def board(self, board: BoardSnapshot) -> None:
        self._board = board

    # -- observed (nothing until the board was first read: unknown is not zero) ---------------

    def _observe_open(self, _options: CallbackOptions) -> Iterable[Observation]:
        if (board := self._board) is not None:
            for state in PHASES:
                for band, _ in AGE_BANDS:
                    yield Observation(board.open.get((state, band), 0),
                                      {"state": state, "age": band})

    def _observe_oldest(self, _options: CallbackOptions) -> Iterable[Observation]:
        if (board := self._board) is not None:
            for state in PHASES:
                yield Observation(board.oldest.get(state, 0.0), {"state": state})

    def _observe_overdue(self, _options: CallbackOptions) -> Iterable[Observation]:
        if (board := self._board) is not None:
            for name in CLOCK_NAMES:
                yield Observation(board.overdue.get(name, 0), {"clock": name})

    def _observe_pages(self, _options: CallbackOptions) -> Iterable[Observation]:
        if (board := self._board) is not None:
            for kind in PAGE_KINDS:
                yield Observation(board.pages.get(kind, 0), {"page_kind": kind})

    def _observe_initial_time_left(self, _options: CallbackOptions) -> Iterable[Observation]:
        if (board := self._board) is not None:
            left = board.initial_time_left
            # Nothing waiting is nothing at risk: a whole budget left, so the alert's
            # threshold and the panel read the same with or without tickets.
            yield Observation(self._policy.initial_response.total_seconds() if left is None
                              else left)

    def _observe_oldest_page(self, _options: CallbackOptions) -> Iterable[Observation]:
        if (board := self._board) is not None:
            for kind in PAGE_KINDS:
                yield Observation(board.oldest_page.get(kind, 0.0), {"page_kind": kind})


class TicketProjection:
    """Counts what the notifier's appends make happen; reads the board for the gauges."""

    def __init__(self, *, db: AsyncDatabase[dict[str, Any]], board: TicketBoard,
                 metrics: NotifierMetrics, clock: Clock, collection: str = MARKS,
                 remember: int = 50_000) -> None:
        self.board = board
        self.metrics = metrics
        self._marks = GroupInsert(db[collection])  # a sweep's alerts: one round trip
        self._clock = clock
        self._counted: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    async def observe(self, event: Event, entry: Recorded) -> None:
        """After the handler's append of ``event``'s fact (a redelivery's changes nothing)."""
        if entry.recorded:
            self.metrics.event(event, category=category_of(entry.after, event.revision))
        await self.count_milestones(entry)

    async def count_milestones(self, entry: Recorded) -> None:
        """Count what an append made appear (nothing, when it recorded nothing): after an
        event, or after the sweeper recorded an alert that answers a clock."""
        if not entry.recorded:
            return
        ticket_id, policy = entry.ticket_id, self.metrics.policy
        before = {m.key for m in milestones(ticket_id, entry.before,
                                            fold(ticket_id, entry.before, policy))}
        for milestone in milestones(ticket_id, entry.after,
                                    fold(ticket_id, entry.after, policy)):
            if milestone.key in before:
                continue
            if milestone.kind != "clock_late" or await self._once(milestone.key):
                self.metrics.milestone(milestone)

    async def alert_fired(self, alert: Alert) -> None:
        if await self._once(alert.alert_id):
            self.metrics.alert(alert)

    async def refresh_gauges(self, now: datetime | None = None) -> None:
        self.metrics.board(snapshot(await self.board.entries(), now or self._clock()))

    async def run(self, interval: timedelta) -> None:
        """Refresh the gauges every ``interval`` until cancelled."""
        while True:
            try:
                await self.refresh_gauges()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store may blip; the next round retries
                log.exception("refreshing the ticket gauges failed")
            await asyncio.sleep(interval.total_seconds())

    async def _once(self, key: str) -> bool:
        """True for the one caller, across processes, that gets to count ``key``."""
        if key in self._counted:
            return False
        try:
            await self._marks.insert({"_id": key, "at": self._clock()})
        except DuplicateKeyError:
            won = False
        else:
            won = True
        self._counted[key] = None
        while len(self._counted) > self._remember:
            self._counted.popitem(last=False)
        return won
