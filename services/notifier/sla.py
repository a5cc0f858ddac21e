"""SLA clocks, pages and escalation: the procedure's response-time promises as a pure model.

A ticket's history is a list of :class:`Fact` values (what happened, when, on which revision);
:func:`fold` turns it into a :class:`TicketState`: its clocks, its pages, the alerts already
fired. The state answers the only two questions the sweeper asks — what is due *now*
(:meth:`TicketState.due`) and when the next thing falls due (:meth:`TicketState.next_due`).
Time is always passed in, never read, so tests step a clock through hours in microseconds.

The clocks (ARCHITECTURE §1, "Response times"):

- **initial response** (10 min), one per ticket revision, from its TicketSubmitted. The
  customer's acknowledgement goes out within seconds (that is the *message*); this clock
  measures that someone has actually *taken the ticket up*: an engineer acknowledged it, or
  the automation answered it (intervention started, clarification asked, authorization
  refused, outcome or hardware escalation reported). A response on a revision also answers
  every earlier revision still waiting. When the executors are saturated the automation
  cannot start at once: a verified ticket the executor *queued* (InterventionQueued) that has
  not started ``queued_notice_after`` (30 s) later gets the customer's "queued" update, with
  its place in line and expected start, and that update answers the clock (the
  ``queued_notice`` alert, fired once like the others; never later than the clock's warning
  point, so a ticket queued late is answered at once and no warning fires for it).
- **intervention** (60 min standard, 4 h complex, 24 h data centre), from InterventionStarted
  until InterventionCompleted. Paused while waiting on the customer: a ClarificationRequested
  pauses it, the customer's answer (the next revision's TicketSubmitted) or the intervention
  restarting resumes it — the clock spans revisions, so a question does not reset the
  promise. A longer timeline (a complex runbook, a data-centre step) extends its budget.

Each clock fires SlaWarning at ``warning_fraction`` (80 %) of its budget and SlaBreached at
100 %, each once: an alert's id is fixed by what it is about, and fired ids are facts too.

Pages: an item an engineer must acknowledge — a new ticket, a manual step, a hardware
escalation. A page is closed by an acknowledgement, or resolved when the work no longer needs
a human (the automation took the ticket, the step was reported, the intervention ended).
An open page escalates every ``escalate_after`` to the next on-call tier (1, 2, ... up to
``tiers``, then the top tier again), until someone acknowledges. After an outage, only the
latest due level fires: its message names every tier up to it, so nobody is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from schemas.events import (
    AuthorizationRejected,
    ClarificationRequested,
    EngineerAcknowledged,
    Event,
    HardwareEscalated,
    InterventionCompleted,
    InterventionQueued,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
    TicketSubmitted,
)
from schemas.events import SlaClock as ClockName
from schemas.request import Language

Timeline = Literal["standard", "complex", "datacenter"]
TIMELINE_ORDER: dict[Timeline, int] = {"standard": 0, "complex": 1, "datacenter": 2}

FactKind = Literal[
    "submitted",
    "auth_rejected",
    "clarification",
    "intervention_started",
    "manual_step",
    "step_completed",
    "completed",
    "hardware",
    "acknowledged",
    "alert_fired",
    "queued",
    "queued_notice",
    "restored",  # the ledger's marker: an archived history was joined back (no clock moves)
]
PageKind = Literal["new_ticket", "manual_step", "hardware"]
AlertKind = Literal["sla_warning", "sla_breach", "escalation", "queued_notice"]

_ZERO = timedelta(0)


@dataclass(frozen=True, kw_only=True)
class SlaPolicy:
    initial_response: timedelta = timedelta(minutes=10)
    standard: timedelta = timedelta(minutes=60)
    complex: timedelta = timedelta(hours=4)
    datacenter: timedelta = timedelta(hours=24)
    warning_fraction: float = 0.8
    queued_notice_after: timedelta = timedelta(seconds=30)
    escalate_after: timedelta = timedelta(minutes=10)
    tiers: int = 3

    def budget(self, timeline: Timeline) -> timedelta:
        return {"standard": self.standard, "complex": self.complex,
                "datacenter": self.datacenter}[timeline]

    def tier_for(self, level: int) -> int:
        """The on-call tier an escalation level reaches: level 0 (the page itself) is tier 1."""
        return min(level + 1, self.tiers)


@dataclass(frozen=True, kw_only=True)
class Fact:
    """One thing that happened to a ticket, as far as clocks and pages care.

    ``fact_id`` is the event id (or, for ``alert_fired``, the alert id): a fact recorded twice
    counts once. Optional fields are set only for the kinds that carry them.
    """

    fact_id: str
    kind: FactKind
    at: datetime
    revision: int
    language: Language | None = None
    timeline: Timeline | None = None
    automated: bool = False
    step_id: str | None = None
    method: str | None = None
    page_id: str | None = None
    alert_id: str | None = None
    level: int | None = None
    # For the metrics projection (services/notifier/metrics.py): the ticket's category on
    # ``submitted`` (InterventionCompleted does not carry it), the chat channel on
    # ``acknowledged``. Both small enums, never free text.
    category: str | None = None
    channel: str | None = None
    # ``queued``: the executor's place in line and expected start (InterventionQueued).
    position: int | None = None
    expected_start: datetime | None = None


def _fact(event: Event, kind: FactKind, **details: Any) -> Fact:
    return Fact(fact_id=str(event.event_id), kind=kind, at=event.occurred_at,
                revision=event.revision, **details)


def fact_of(event: Event) -> Fact | None:
    """The fact an event contributes to its ticket's history, or None if it changes nothing."""
    match event:
        case TicketSubmitted():
            return _fact(event, "submitted", language=event.language, category=event.category)
        case AuthorizationRejected():
            return _fact(event, "auth_rejected")
        case ClarificationRequested():
            return _fact(event, "clarification")
        case InterventionQueued():
            return _fact(event, "queued", position=event.position,
                         expected_start=event.expected_start_at)
        case InterventionStarted():
            return _fact(event, "intervention_started", timeline=event.timeline,
                         automated=event.mode == "automated", method=event.access_method)
        case ManualStepRequested():
            return _fact(event, "manual_step", step_id=event.step_id, method=event.method)
        case ManualStepCompleted():
            return _fact(event, "step_completed", step_id=event.step_id)
        case InterventionCompleted():
            return _fact(event, "completed")
        case HardwareEscalated():
            return _fact(event, "hardware")
        case EngineerAcknowledged():
            return _fact(event, "acknowledged", page_id=str(event.acknowledged_event_id),
                         channel=event.channel)
    return None


# --- clocks --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SlaClock:
    """One running promise: a budget of *active* time, which pauses do not consume."""

    name: ClockName
    revision: int
    cause_id: str  # the event that started the clock: the cause of its alerts
    started_at: datetime
    budget: timedelta
    timeline: Timeline | None = None
    paused_since: datetime | None = None
    paused_by_revision: int | None = None
    paused_total: timedelta = _ZERO
    stopped_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"r{self.revision}:{self.name}"

    @property
    def running(self) -> bool:
        return self.stopped_at is None and self.paused_since is None

    @property
    def paused(self) -> bool:
        return self.stopped_at is None and self.paused_since is not None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def elapsed(self, now: datetime) -> timedelta:
        """Active time consumed up to ``now``."""
        end = self.stopped_at or self.paused_since or now
        return max(_ZERO, min(end, now) - self.started_at - self.paused_total)

    def due_at(self, fraction: float) -> datetime | None:
        """When ``fraction`` of the budget will have been used; None while paused or stopped."""
        if not self.running:
            return None
        return self.started_at + self.paused_total + self.budget * fraction

    @property
    def deadline(self) -> datetime:
        """The deadline as it stands (for a paused clock: were it resumed at the pause)."""
        return self.started_at + self.paused_total + self.budget

    def pause(self, at: datetime, *, by_revision: int) -> SlaClock:
        if not self.running:
            return self
        return replace(self, paused_since=max(at, self.started_at),
                       paused_by_revision=by_revision)

    def resume(self, at: datetime) -> SlaClock:
        if not self.paused or self.paused_since is None:
            return self
        waited = max(_ZERO, at - self.paused_since)
        return replace(self, paused_since=None, paused_by_revision=None,
                       paused_total=self.paused_total + waited)

    def stop(self, at: datetime) -> SlaClock:
        if self.stopped:
            return self
        clock = self.resume(at) if self.paused else self
        return replace(clock, stopped_at=max(at, self.started_at))

    def extend_to(self, timeline: Timeline, policy: SlaPolicy) -> SlaClock:
        """A longer timeline raises the budget; a shorter one never lowers it."""
        if self.timeline is not None and TIMELINE_ORDER[timeline] <= TIMELINE_ORDER[self.timeline]:
            return self
        return replace(self, timeline=timeline, budget=max(self.budget, policy.budget(timeline)))


# --- pages ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Page:
    page_id: str  # the event id of what is paged (TicketSubmitted, ManualStepRequested, ...)
    kind: PageKind
    revision: int
    opened_at: datetime
    step_id: str | None = None
    closed_at: datetime | None = None
    closed_by: Literal["acknowledged", "resolved"] | None = None
    closed_cause: FactKind | None = None
    escalation_level: int = 0

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def close(self, at: datetime, how: Literal["acknowledged", "resolved"], cause: FactKind
              ) -> Page:
        if not self.open:
            return self
        return replace(self, closed_at=at, closed_by=how, closed_cause=cause)


# --- alerts --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Alert:
    """Something the sweeper must do once: an SLA warning or breach, or an escalation."""

    alert_id: str
    kind: AlertKind
    ticket_id: str
    revision: int
    due_at: datetime
    cause_id: str
    clock: SlaClock | None = None
    page: Page | None = None
    level: int = 0  # escalation level (1, 2, ...)
    queued: Fact | None = None  # queued_notice: the executor's InterventionQueued fact


def sla_alert_id(ticket_id: str, clock: SlaClock, kind: AlertKind) -> str:
    suffix = "warning" if kind == "sla_warning" else "breach"
    return f"{ticket_id}:{clock.key}:{suffix}"


def escalation_alert_id(ticket_id: str, page_id: str, level: int) -> str:
    return f"{ticket_id}:page:{page_id}:escalation:{level}"


def queued_notice_id(ticket_id: str, revision: int) -> str:
    """One "queued" update per revision, however often the executor announces it."""
    return f"{ticket_id}:r{revision}:initial_response:queued"


def fired_fact(alert: Alert, at: datetime) -> Fact:
    """The fact recording that ``alert`` fired (so the fold never offers it again); a
    ``queued_notice`` fact also answers the initial-response clocks it covers."""
    kind: FactKind = "queued_notice" if alert.kind == "queued_notice" else "alert_fired"
    return Fact(fact_id=alert.alert_id, kind=kind, at=at, revision=alert.revision,
                alert_id=alert.alert_id, page_id=alert.page.page_id if alert.page else None,
                level=alert.level if alert.kind == "escalation" else None)


# --- the fold ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TicketState:
    ticket_id: str
    language: Language | None = None
    latest_revision: int = 0
    clocks: tuple[SlaClock, ...] = ()
    pages: tuple[Page, ...] = ()
    fired: frozenset[str] = field(default_factory=frozenset)
    queued: tuple[Fact, ...] = ()  # the latest InterventionQueued of each revision

    def clock(self, name: ClockName, revision: int | None = None) -> SlaClock | None:
        """The newest clock of that name (of that start revision, if given)."""
        found = [c for c in self.clocks
                 if c.name == name and (revision is None or c.revision == revision)]
        return found[-1] if found else None

    def page(self, page_id: str) -> Page | None:
        return next((p for p in self.pages if p.page_id == page_id), None)

    def open_pages(self) -> tuple[Page, ...]:
        return tuple(p for p in self.pages if p.open)

    def pending(self, policy: SlaPolicy) -> list[Alert]:
        """Every alert that has not fired, with the time it falls due (the next one per page)."""
        alerts: list[Alert] = []
        for clock in self.clocks:
            thresholds: tuple[tuple[AlertKind, float], ...] = (
                ("sla_warning", policy.warning_fraction), ("sla_breach", 1.0))
            for kind, fraction in thresholds:
                alert_id = sla_alert_id(self.ticket_id, clock, kind)
                when = clock.due_at(fraction)
                if when is not None and alert_id not in self.fired:
                    alerts.append(Alert(alert_id=alert_id, kind=kind,
                                        ticket_id=self.ticket_id, revision=clock.revision,
                                        due_at=when, cause_id=clock.cause_id, clock=clock))
        for page in self.open_pages():
            level = page.escalation_level + 1
            alerts.append(self._escalation(page, level, policy))
        alerts += self._queued_notices(policy)
        return sorted(alerts, key=lambda a: a.due_at)

    def _queued_notices(self, policy: SlaPolicy) -> list[Alert]:
        """For each queued revision still unanswered: the customer's "queued" update, due
        ``queued_notice_after`` after the queueing (a start meanwhile answers the clock and
        it is never sent), at the latest at the warning point of the oldest clock it
        answers."""
        alerts: list[Alert] = []
        for queued in self.queued:
            alert_id = queued_notice_id(self.ticket_id, queued.revision)
            waiting = [c for c in self.clocks if c.name == "initial_response" and c.running
                       and c.revision <= queued.revision]
            if alert_id in self.fired or not waiting:
                continue
            clock = waiting[0]
            warning = clock.due_at(policy.warning_fraction) or queued.at
            due_at = max(queued.at, min(queued.at + policy.queued_notice_after, warning))
            alerts.append(Alert(alert_id=alert_id, kind="queued_notice",
                                ticket_id=self.ticket_id, revision=queued.revision,
                                due_at=due_at, cause_id=queued.fact_id, clock=clock,
                                queued=queued))
        return alerts

    def due(self, now: datetime, policy: SlaPolicy) -> list[Alert]:
        """The alerts to fire at ``now``, in due order: each clock's warning and breach, and
        for each open page the *latest* escalation level reached. A due "queued" update
        answers the initial-response clocks it covers, so their warning and breach (due at
        the same sweep, after an outage) are not fired with it."""
        due = [a for a in self.pending(policy) if a.kind != "escalation" and a.due_at <= now]
        answered = {c.key for a in due if a.kind == "queued_notice"
                    for c in self.clocks if c.name == "initial_response"
                    and c.revision <= a.revision}
        due = [a for a in due if a.kind == "queued_notice" or a.kind == "escalation"
               or a.clock is None or a.clock.key not in answered]
        for page in self.open_pages():
            reached = (now - page.opened_at) // policy.escalate_after
            if reached > page.escalation_level:
                due.append(self._escalation(page, int(reached), policy))
        return sorted(due, key=lambda a: a.due_at)

    def next_due(self, policy: SlaPolicy) -> datetime | None:
        pending = self.pending(policy)
        return pending[0].due_at if pending else None

    def _escalation(self, page: Page, level: int, policy: SlaPolicy) -> Alert:
        return Alert(
            alert_id=escalation_alert_id(self.ticket_id, page.page_id, level),
            kind="escalation", ticket_id=self.ticket_id, revision=page.revision,
            due_at=page.opened_at + policy.escalate_after * level, cause_id=page.page_id,
            page=page, level=level,
        )


def fold(ticket_id: str, facts: Iterable[Fact], policy: SlaPolicy) -> TicketState:
    """The ticket's state after ``facts``, applied in time order (ties in recorded order).

    Events reach the notifier on different topics, so they may be recorded out of order;
    ordering by ``at`` makes the result independent of that.
    """
    seen: set[str] = set()
    ordered: list[Fact] = []
    for fact in facts:
        if fact.fact_id not in seen:
            seen.add(fact.fact_id)
            ordered.append(fact)
    ordered.sort(key=lambda f: f.at)  # stable: same-instant facts keep their recorded order

    builder = _Builder(ticket_id, policy)
    for fact in ordered:
        builder.apply(fact)
    return builder.state()


class _Builder:
    def __init__(self, ticket_id: str, policy: SlaPolicy) -> None:
        self.ticket_id = ticket_id
        self.policy = policy
        self.language: Language | None = None
        self.latest_revision = 0
        self.clocks: list[SlaClock] = []
        self.pages: list[Page] = []
        self.fired: set[str] = set()
        self.queued: dict[int, Fact] = {}

    def state(self) -> TicketState:
        return TicketState(ticket_id=self.ticket_id, language=self.language,
                           latest_revision=self.latest_revision, clocks=tuple(self.clocks),
                           pages=tuple(self.pages), fired=frozenset(self.fired),
                           queued=tuple(self.queued[r] for r in sorted(self.queued)))

    def apply(self, fact: Fact) -> None:
        at, rev = fact.at, fact.revision
        match fact.kind:
            case "submitted":
                if rev >= self.latest_revision:
                    self.latest_revision = rev
                    self.language = fact.language or self.language
                if not any(c.name == "initial_response" and c.revision == rev
                           for c in self.clocks):
                    self.clocks.append(SlaClock(
                        name="initial_response", revision=rev, cause_id=fact.fact_id,
                        started_at=at, budget=self.policy.initial_response))
                self._open(fact, "new_ticket")
                # The customer answered: an intervention paused for their answer goes on.
                self._update_intervention(
                    lambda c: c.resume(at) if c.paused and (c.paused_by_revision or 0) < rev
                    else c)
            case "auth_rejected":
                self._respond(at, rev)
                self._resolve(fact, ("new_ticket",))
            case "clarification":
                self._respond(at, rev)
                self._resolve(fact, ("new_ticket",))
                self._update_intervention(lambda c: c.pause(at, by_revision=rev))
            case "intervention_started":
                self._respond(at, rev)
                self._start_intervention(fact)
                if fact.automated:
                    self._resolve(fact, ("new_ticket",))
            case "manual_step":
                self._open(fact, "manual_step")
                if fact.method == "datacenter":
                    self._update_intervention(lambda c: c.extend_to("datacenter", self.policy))
            case "step_completed":
                self.pages = [p.close(at, "resolved", fact.kind) if p.kind == "manual_step"
                              and p.step_id == fact.step_id and p.revision <= rev else p
                              for p in self.pages]
            case "completed":
                self._respond(at, rev)
                self._update_intervention(lambda c: c.stop(at))
                self._resolve(fact, ("new_ticket", "manual_step"))
            case "hardware":
                self._respond(at, rev)
                self._open(fact, "hardware")
            case "acknowledged":
                page = next((p for p in self.pages if p.page_id == fact.page_id), None)
                if page is not None:
                    self.pages = [p.close(at, "acknowledged", fact.kind) if p is page else p
                                  for p in self.pages]
                self._respond(at, page.revision if page is not None else rev)
            case "queued":
                self.queued[rev] = fact  # in time order: the latest estimate wins
            case "queued_notice":
                if fact.alert_id is not None:
                    self.fired.add(fact.alert_id)
                self._respond(at, rev)
            case "alert_fired":
                if fact.alert_id is not None:
                    self.fired.add(fact.alert_id)
                if fact.level is not None and fact.page_id is not None:
                    self.pages = [replace(p, escalation_level=max(p.escalation_level, fact.level))
                                  if p.page_id == fact.page_id else p for p in self.pages]

    def _open(self, fact: Fact, kind: PageKind) -> None:
        if not any(p.page_id == fact.fact_id for p in self.pages):
            self.pages.append(Page(page_id=fact.fact_id, kind=kind, revision=fact.revision,
                                   opened_at=fact.at, step_id=fact.step_id))

    def _respond(self, at: datetime, revision: int) -> None:
        self.clocks = [c.stop(at) if c.name == "initial_response" and c.revision <= revision
                       and not c.stopped else c for c in self.clocks]

    def _resolve(self, fact: Fact, kinds: tuple[PageKind, ...]) -> None:
        self.pages = [p.close(fact.at, "resolved", fact.kind)
                      if p.kind in kinds and p.revision <= fact.revision else p
                      for p in self.pages]

    def _current_intervention(self) -> int | None:
        for i in range(len(self.clocks) - 1, -1, -1):
            clock = self.clocks[i]
            if clock.name == "intervention" and not clock.stopped:
                return i
        return None

    def _update_intervention(self, change: Callable[[SlaClock], SlaClock]) -> None:
        index = self._current_intervention()
        if index is not None:
            self.clocks[index] = change(self.clocks[index])

    def _start_intervention(self, fact: Fact) -> None:
        timeline: Timeline = fact.timeline or "standard"
        index = self._current_intervention()
        if index is None:
            self.clocks.append(SlaClock(
                name="intervention", revision=fact.revision, cause_id=fact.fact_id,
                started_at=fact.at, budget=self.policy.budget(timeline), timeline=timeline))
            return
        # The same intervention going on (after the customer's answer, or a re-plan):
        # one promise, resumed and possibly extended, never restarted.
        self.clocks[index] = self.clocks[index].resume(fact.at).extend_to(timeline, self.policy)


def timeline_extension(before: TicketState, after: TicketState) -> Timeline | None:
    """The longer timeline a fact moved the current intervention to, if it did: the customer
    is told when a longer timeline applies."""
    new = after.clock("intervention")
    if new is None or new.stopped or new.timeline is None:
        return None
    old = before.clock("intervention", new.revision)
    if old is None:
        return None  # a fresh intervention: its "started" message states the timeline
    if old.timeline is None or TIMELINE_ORDER[new.timeline] > TIMELINE_ORDER[old.timeline]:
        return new.timeline
    return None
