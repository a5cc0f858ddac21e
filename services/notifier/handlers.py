"""The notifier's use cases: what each event and each due alert leads to.

For every consumed event, in this order:

1. the customer's TicketUpdated(s) (:mod:`.updates`), ids derived from the event, so a
   redelivery re-publishes the same ids. A new ticket's acknowledgement goes first of all:
   it is the initial response the customer waits for;
2. the event's fact in the ticket's ledger (:mod:`.ledger`), from which clocks and pages are
   computed; its one insert also carries the ticket's next deadline and board entry
   (:mod:`.views`), and returns the history just before and after it, so nothing here
   reads the history back;
3. pages for engineers (a new ticket, a manual step, a hardware escalation) into the chat
   outbox, and pages the automation no longer needs resolved (compare-and-set against an
   engineer's ack, :mod:`.acks`);
4. the domain metrics (:mod:`.metrics`), last: a failure there is logged, never allowed to
   fail the event.

Chat is only ever *enqueued* here (:mod:`.delivery`): a chat platform that is down never
delays a ticket update. For every due alert (the sweeper calls :meth:`Notifier.fire`):
SlaWarning / SlaBreached published, the on-call room told, the customer told when the
intervention passed its expected timeline; an escalation posted to the next tier; or, for a
verified ticket the executor queued and has not started, the customer's "queued" update (its
initial response under load, :func:`services.notifier.sla.TicketState.due`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from opentelemetry import propagate

from schemas.envelope import EventEnvelope
from schemas.events import (
    AuthorizationRejected,
    ClarificationRequested,
    Event,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
    SlaBreached,
    SlaWarning,
    TicketRejected,
    TicketSubmitted,
)
from schemas.request import Language
from services.notifier.acks import Closure, EngineerDesk, EngineerDirectory, PageIndex, PageRecord
from services.notifier.bots.base import ChatAction, ChatPost, Mention
from services.notifier.deadlines import Deadlines, FireResult
from services.notifier.delivery import Outbox
from services.notifier.ids import derived_id
from services.notifier.ledger import Recorded, TicketLedger
from services.notifier.metrics import TicketProjection
from services.notifier.sla import (
    Alert,
    FactKind,
    Page,
    PageKind,
    SlaPolicy,
    TicketState,
    fact_of,
    fold,
    timeline_extension,
)
from services.notifier.templates import chat
from services.notifier.updates import (
    CustomerUpdate,
    customer_updates,
    overdue_update,
    queued_update,
    ticket_updated,
    ticket_updated_for,
)
from services.runtime.consumer import Delivery

log = logging.getLogger(__name__)

Publish = Callable[[EventEnvelope], Awaitable[None]]
Redact = Callable[[str], str]
Clock = Callable[[], datetime]


@dataclass(frozen=True, kw_only=True)
class Collaborators:
    publish: Publish
    ledger: TicketLedger
    deadlines: Deadlines
    pages: PageIndex
    directory: EngineerDirectory
    outbox: Outbox
    policy: SlaPolicy
    clock: Clock
    redact: Redact = lambda text: text
    language_wait: timedelta = timedelta(seconds=5)
    projection: TicketProjection | None = None  # metrics and the open-ticket board


@dataclass(frozen=True)
class ClosedPages:
    """The desk's ``on_closed``: when a page is closed (ack or resolve), edit its chat
    message to say who and how. Built before the desk and the notifier, so neither needs
    the other to exist first."""

    outbox: Outbox

    async def __call__(self, page: PageRecord, closure: Closure) -> None:
        await self.outbox.enqueue(ChatPost(
            post_id=f"{page.post_id}:closed", ticket_id=page.ticket_id, page_id=page.page_id,
            text=chat.closed(page.text, closure.describe()), edit_of=page.post_id,
            actions=_actions(page, acknowledged=True)))


class Notifier:
    def __init__(self, parts: Collaborators, *, desk: EngineerDesk) -> None:
        self.parts = parts
        self.desk = desk

    # -- events --------------------------------------------------------------------------------

    async def acknowledge(self, event: TicketSubmitted | TicketRejected, delivery: Delivery
                          ) -> None:
        """Tell the customer their request arrived (or why it was refused): the initial
        response. Consumed in a group of its own, so this never waits behind the SLA and
        paging work of earlier tickets (see :func:`services.notifier.app.build`)."""
        minutes = int(self.parts.policy.initial_response.total_seconds() // 60)
        await self._publish_updates(event, delivery, customer_updates(
            event, initial_response_minutes=minutes))

    async def handle(self, event: Event, delivery: Delivery) -> None:
        """Record an event's fact (with the deadline it leads to), page engineers, and tell
        the customer what this step means for them (idempotent: every effect is keyed by the
        event). A new ticket's and a refused request's updates are :meth:`acknowledge`'s."""
        p = self.parts
        fact = fact_of(event)
        if fact is None:
            return
        recorded = await p.ledger.record(event.ticket_id, fact)
        before = fold(event.ticket_id, recorded.before, p.policy)
        after = fold(event.ticket_id, recorded.after, p.policy)
        if not isinstance(event, TicketSubmitted):  # a new revision cannot extend a timeline
            language = after.language or await self._language(event.ticket_id)
            await self._publish_updates(event, delivery, customer_updates(
                event, language=language, extended_to=timeline_extension(before, after)))
        match event:
            case TicketSubmitted():
                await self._open_page(event, "new_ticket", chat.new_ticket(event))
            case ManualStepRequested():
                await self._open_page(event, "manual_step", chat.manual_step(event))
            case HardwareEscalated():
                await self._open_page(event, "hardware", chat.hardware(event))
            case ManualStepCompleted():
                await self._step_reported(event)
        await self._resolve_closed(recorded, before, after, event)
        await self._project(event, recorded)

    async def _publish_updates(self, cause: Event, delivery: Delivery,
                               updates: Sequence[CustomerUpdate]) -> None:
        for update in updates:
            await self.parts.publish(ticket_updated_for(
                update, cause, event_id=delivery.derive_event_id(f"ticket-updated:{update.key}"),
                occurred_at=self.parts.clock()))

    async def _language(self, ticket_id: str) -> Language | None:
        """The ticket's language from its TicketSubmitted, waiting briefly for it: events
        arrive on different topics, so a verdict can overtake its ticket. Usually this
        process records the TicketSubmitted, so what it knows is looked at every tick; the
        store (another replica's record) once a second: each look there is a miss that
        scans the ledger, and a burst has many tickets waiting at once."""
        p = self.parts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + p.language_wait.total_seconds()
        ticks = 0
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            ticks += 1
            from_store = ticks % 10 == 0 or loop.time() + 0.1 >= deadline  # and last
            state = (await p.deadlines.state(ticket_id) if from_store
                     else fold(ticket_id, p.ledger.known(ticket_id), p.policy))
            if state.language is not None:
                return state.language
        log.warning("ticket %s: no TicketSubmitted seen; answering in the default language",
                    ticket_id)
        return None

    # -- pages ---------------------------------------------------------------------------------

    async def _open_page(self, event: EventEnvelope, kind: PageKind, text: str) -> None:
        p = self.parts
        page_id = str(event.event_id)
        post_id = f"page:{page_id}"
        step_id = event.step_id if isinstance(event, ManualStepRequested) else None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the handler's span: acks and reports continue this trace
        record = PageRecord(page_id=page_id, ticket_id=event.ticket_id, revision=event.revision,
                            kind=kind, step_id=step_id, post_id=post_id, text=p.redact(text),
                            trace_carrier=carrier)
        await p.pages.add(record)
        await p.outbox.enqueue(ChatPost(
            post_id=post_id, ticket_id=event.ticket_id, text=record.text, page_id=page_id,
            actions=_actions(record, acknowledged=False),
            mentions=await self._mentions(p.policy.tier_for(0))))

    async def _step_reported(self, event: ManualStepCompleted) -> None:
        page = await self.parts.pages.get(str(event.causation_id)) if event.causation_id else None
        if page is None:
            return
        closure = await self.desk.closure(page.page_id)
        if closure is None or closure.how != "acknowledged":
            return  # the page is resolved by the report itself: that edit says it all
        text = chat.closed(chat.closed(page.text, closure.describe()),
                           f"reported {event.status} by {event.display_name} via {event.channel}")
        await self.parts.outbox.enqueue(ChatPost(
            post_id=f"{page.post_id}:reported", ticket_id=page.ticket_id, page_id=page.page_id,
            text=self.parts.redact(text), edit_of=page.post_id))

    async def _resolve_closed(self, recorded: Recorded, before: TicketState,
                              after: TicketState, event: Event) -> None:
        """Pages the automation no longer needs: close them unless an engineer acknowledged
        first. Events race across topics, so the fact that resolves a page may be recorded
        before the page's own; whichever of the two is handled second does the closing."""
        fact = recorded.fact
        for page in after.pages:
            if page.closed_by != "resolved" or page.closed_cause is None:
                continue
            closed_here = page.closed_cause == fact.kind and page.closed_at == fact.at
            if not closed_here and page.page_id != fact.fact_id:
                continue
            earlier = before.page(page.page_id)
            if recorded.recorded and earlier is not None and not earlier.open:
                # Already closed before this append (an earlier fact arriving late only
                # moved the cause): its closing was done then. A redelivery (nothing
                # recorded) still tries, for a handler that died before closing it.
                continue
            record = await self.parts.pages.get(page.page_id)
            if record is not None:
                reason = _reason(event) if closed_here else RESOLVED[page.closed_cause]
                await self.desk.resolve(record, reason)

    async def _mentions(self, tier: int) -> tuple[Mention, ...]:
        engineers = await self.parts.directory.up_to_tier(tier)
        return tuple(Mention(channel=channel, identity=identity, display_name=e.display_name)
                     for e in engineers for channel, identity in e.identities.items())

    # -- alerts --------------------------------------------------------------------------------

    async def fire(self, alert: Alert, state: TicketState, now: datetime) -> FireResult:
        if alert.kind == "queued_notice":
            return await self._tell_queued(alert, state, now)
        if alert.kind == "escalation":
            result = await self._escalate(alert, now)
            if result == "fired":
                await self._project_alert(alert)
            return result
        p = self.parts
        clock = alert.clock
        assert clock is not None
        model = SlaWarning if alert.kind == "sla_warning" else SlaBreached
        await p.publish(model.new(
            ticket_id=alert.ticket_id, revision=alert.revision,
            causation_id=UUID(alert.cause_id), event_id=derived_id(alert.alert_id),
            occurred_at=now, clock=clock.name, deadline=clock.deadline,
            elapsed_seconds=int(clock.elapsed(now).total_seconds()),
        ))
        if alert.kind == "sla_breach" and clock.name == "intervention":
            await p.publish(ticket_updated(
                overdue_update(alert.ticket_id, state.language), ticket_id=alert.ticket_id,
                revision=alert.revision, causation_id=derived_id(alert.alert_id),
                event_id=derived_id(f"{alert.alert_id}:customer"), occurred_at=now))
        tier = 1 if alert.kind == "sla_warning" else p.policy.tier_for(1)
        await p.outbox.enqueue(ChatPost(
            post_id=f"alert:{alert.alert_id}", ticket_id=alert.ticket_id,
            text=p.redact(chat.sla_alert(alert, clock, now)),
            mentions=await self._mentions(tier)))
        await self._project_alert(alert)
        return "fired"

    async def _tell_queued(self, alert: Alert, state: TicketState, now: datetime
                           ) -> FireResult:
        """The initial response of a ticket waiting for a free executor. Its id derives from
        the alert (one per revision), its cause is the executor's InterventionQueued."""
        assert alert.queued is not None
        language = state.language or await self._language(alert.ticket_id)
        await self.parts.publish(ticket_updated(
            queued_update(alert.ticket_id, language, alert.queued, now),
            ticket_id=alert.ticket_id, revision=alert.revision,
            causation_id=UUID(alert.cause_id), event_id=derived_id(f"{alert.alert_id}:customer"),
            occurred_at=now))
        return "fired"

    async def recorded(self, entry: Recorded) -> None:
        """After the sweeper recorded what it fired: a "queued" update answered a clock, so
        the initial-response milestone counts now, not at the ticket's next event (the
        board moved with the fact's own document)."""
        # A lost count, never a lost update.
        await self._count(lambda p: p.count_milestones(entry),
                          "metrics projection failed for ticket %s", entry.ticket_id)

    # -- metrics: never allowed to fail or delay what the customer and the engineers see ------

    async def _count(self, call: Callable[[TicketProjection], Awaitable[None]],
                     failure: str, *args: object) -> None:
        """Run one metrics call on the projection, if any; a failure is logged, never
        raised (a lost count, never a lost update, alert or event)."""
        if self.parts.projection is None:
            return
        try:
            await call(self.parts.projection)
        except Exception:
            log.exception(failure, *args)

    async def _project(self, event: Event, recorded: Recorded) -> None:
        # The next event of the ticket refreshes it.
        await self._count(lambda p: p.observe(event, recorded),
                          "metrics projection failed for ticket %s", event.ticket_id)

    async def _project_alert(self, alert: Alert) -> None:
        await self._count(lambda p: p.alert_fired(alert), "counting alert %s failed",
                          alert.alert_id)

    async def _escalate(self, alert: Alert, now: datetime) -> FireResult:
        page = alert.page
        assert page is not None
        desk = self.desk
        if await desk.closure(page.page_id) is not None:
            # Closed by an ack whose EngineerAcknowledged is not in the ledger yet: it will
            # be in a moment (or, if its winner died before publishing it, once the claim's
            # lease runs out and this finishes it), and then no escalation is due at all.
            await desk.finish(page.page_id)
            return "deferred"
        p = self.parts
        tier = p.policy.tier_for(alert.level)
        engineers = await p.directory.up_to_tier(tier)
        record = await p.pages.get(page.page_id)
        await p.outbox.enqueue(ChatPost(
            post_id=f"alert:{alert.alert_id}", ticket_id=alert.ticket_id, page_id=page.page_id,
            text=chat.escalation(alert, tier=tier, names=[e.display_name for e in engineers],
                                 now=now),
            actions=_actions(record, acknowledged=False) if record else (),
            mentions=await self._mentions(tier)))
        return "fired"


def _actions(page: PageRecord | Page, *, acknowledged: bool) -> tuple[ChatAction, ...]:
    actions: list[ChatAction] = []
    if not acknowledged:
        actions.append(ChatAction(kind="ack", label="Acknowledge", page_id=page.page_id))
    if page.kind == "manual_step":
        actions += [ChatAction(kind="step_done", label="Done", page_id=page.page_id),
                    ChatAction(kind="step_failed", label="Failed", page_id=page.page_id)]
    return tuple(actions)


RESOLVED: dict[FactKind, str] = {
    "auth_rejected": "authorization refused; the customer was told why",
    "clarification": "waiting for the customer's answer to a question",
    "intervention_started": "the automation took the ticket",
    "step_completed": "the step was reported",
    "completed": "the intervention completed",
}


def _reason(event: Event) -> str:
    match event:
        case AuthorizationRejected():
            return "authorization refused; the customer was told why"
        case ClarificationRequested():
            return "waiting for the customer's answer to a question"
        case InterventionStarted():
            return f"the automation took the ticket ({event.access_method})"
        case ManualStepCompleted():
            return f"step reported {event.status} by {event.display_name}"
        case InterventionCompleted():
            return f"intervention completed ({event.outcome})"
    return event.EVENT_TYPE
