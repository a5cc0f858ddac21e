"""Engineers answering from chat: who they are, acknowledgements, manual-step reports.

Lessons from paging tools: an acknowledgement is a compare-and-set (an ack racing an
auto-resolve re-opened incidents elsewhere). Here closing a page is one fire-once claim
``close:<page_id>`` (:mod:`services.notifier.claims`) that an engineer's ack and the
automation's resolve compete for: the first wins, the loser changes nothing. Only the
winning ack publishes EngineerAcknowledged (audited by ``runtime.publish``), with an id
derived from the page, so it is published once even if the winner crashed midway and a
later ack finished the job. A late or duplicate ack is answered politely with who was first.

A manual-step report is the same pattern on ``step:<page_id>``: ManualStepCompleted is
published once, whoever reports first.

Identities: an ack counts only from a chat identity mapped to an engineer record
(``notifier_engineer_identities``: ``_id = "<channel>:<identity>"`` -> engineer id; Matrix
``@alice:example.org``, Slack user id, Telegram user id), so EngineerAcknowledged names a
real engineer, never a free-form chat name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from opentelemetry import propagate, trace
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.envelope import EventEnvelope
from schemas.events import ChatChannel, EngineerAcknowledged, ManualStepCompleted
from services.notifier.claims import Claim, Claims
from services.notifier.ids import derived_id
from services.notifier.sla import PageKind, TicketState
from services.runtime.group_commit import GroupInsert
from services.runtime.telemetry import TICKET_ID_ATTRIBUTE

log = logging.getLogger(__name__)

ENGINEERS = "notifier_engineers"
IDENTITIES = "notifier_engineer_identities"
PAGES = "notifier_pages"
CLOSURES = "notifier_page_closures"
STEP_REPORTS = "notifier_step_reports"

Clock = Callable[[], datetime]
Publish = Callable[[EventEnvelope], Awaitable[None]]
StateOf = Callable[[str], Awaitable[TicketState]]


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- engineers -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Engineer:
    engineer_id: str
    display_name: str
    tier: int = 1
    identities: Mapping[ChatChannel, str] = field(default_factory=dict)


class EngineerDirectory:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], *,
                 roster_ttl: timedelta = timedelta(seconds=5)) -> None:
        self._engineers = db[ENGINEERS]
        self._identities = db[IDENTITIES]
        # Every page mentions the on-call tiers: the roster is read at most every few
        # seconds, not once per page (a registration shows up within ``roster_ttl``).
        self._roster_ttl = roster_ttl.total_seconds()
        self._roster: tuple[float, list[Engineer]] | None = None
        # The read under way, shared: a batch of tickets paged at once when the roster
        # expired would otherwise read it once each (a burst measured 0.24 per ticket).
        self._reading: asyncio.Future[list[Engineer]] | None = None

    async def register(self, engineer: Engineer) -> None:
        """Add or update an engineer and claim their chat identities.

        An identity already mapped to another engineer is refused: one chat account acting
        as two engineers would make the audit trail name the wrong person.
        """
        for channel, identity in engineer.identities.items():
            key = f"{channel}:{identity}"
            found = await self._identities.find_one({"_id": key})
            if found is not None and found["engineer_id"] != engineer.engineer_id:
                raise ValueError(f"{channel} identity {identity!r} already belongs to "
                                 f"engineer {found['engineer_id']}")
        await self._engineers.replace_one(
            {"_id": engineer.engineer_id},
            {"display_name": engineer.display_name, "tier": engineer.tier,
             "identities": dict(engineer.identities)},
            upsert=True,
        )
        for channel, identity in engineer.identities.items():
            with contextlib.suppress(DuplicateKeyError):
                await self._identities.insert_one({"_id": f"{channel}:{identity}",
                                                   "engineer_id": engineer.engineer_id})
        self._roster = None

    async def get(self, engineer_id: str) -> Engineer | None:
        doc = await self._engineers.find_one({"_id": engineer_id})
        return None if doc is None else _engineer(doc)

    async def by_identity(self, channel: ChatChannel, identity: str) -> Engineer | None:
        link = await self._identities.find_one({"_id": f"{channel}:{identity}"})
        return None if link is None else await self.get(str(link["engineer_id"]))

    async def all(self) -> list[Engineer]:
        # A handful of documents: the scan FerretDB does for a full read costs nothing here.
        return [_engineer(doc) async for doc in self._engineers.find({})]

    async def up_to_tier(self, tier: int) -> list[Engineer]:
        now = time.monotonic()
        if self._roster is None or now - self._roster[0] > self._roster_ttl:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self.all())
            reading = self._reading
            try:
                engineers = await asyncio.shield(reading)
            finally:
                if self._reading is reading and reading.done():
                    self._reading = None
            self._roster = (now, engineers)
        return [e for e in self._roster[1] if e.tier <= tier]


def _engineer(doc: Mapping[str, Any]) -> Engineer:
    return Engineer(engineer_id=str(doc["_id"]), display_name=str(doc["display_name"]),
                    tier=int(doc.get("tier", 1)), identities=dict(doc.get("identities") or {}))


# --- pages -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PageRecord:
    """What a button or reaction naming only a page needs: its ticket, kind and post."""

    page_id: str
    ticket_id: str
    revision: int
    kind: PageKind
    step_id: str | None
    post_id: str
    text: str
    # The trace context of the event that opened the page: what an engineer does about the
    # page (an acknowledgement, a manual-step report) continues the ticket's trace.
    trace_carrier: Mapping[str, str] = field(default_factory=dict)


class PageIndex:
    """Pages by id. A page never changes once indexed, so a process remembers the pages it
    indexed or read (the handler that resolves a ticket's page usually indexed it moments
    before): the ticket path does not read this collection, which grows with history."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, remember: int = 10_000) -> None:
        self._coll = db[PAGES]
        self._inserts = GroupInsert(self._coll)  # a burst's new pages: one round trip
        self._known: OrderedDict[str, PageRecord] = OrderedDict()
        self._remember = remember

    async def add(self, record: PageRecord) -> None:
        with contextlib.suppress(DuplicateKeyError):
            await self._inserts.insert({"_id": record.page_id, "ticket_id": record.ticket_id,
                                         "revision": record.revision, "kind": record.kind,
                                         "step_id": record.step_id, "post_id": record.post_id,
                                         "text": record.text,
                                         "trace_carrier": dict(record.trace_carrier)})
            # Only the inserter's record is remembered: after a duplicate, the stored one
            # (a redelivery's, text and trace identical or older) is what get() must return.
            self._keep(record)

    async def get(self, page_id: str) -> PageRecord | None:
        if (known := self._known.get(page_id)) is not None:
            return known
        doc = await self._coll.find_one({"_id": page_id})
        if doc is None:
            return None
        record = PageRecord(page_id=page_id, ticket_id=str(doc["ticket_id"]),
                            revision=int(doc["revision"]), kind=doc["kind"],
                            step_id=doc.get("step_id"), post_id=str(doc["post_id"]),
                            text=str(doc["text"]),
                            trace_carrier=dict(doc.get("trace_carrier") or {}))
        self._keep(record)
        return record

    def _keep(self, record: PageRecord) -> None:
        self._known[record.page_id] = record
        self._known.move_to_end(record.page_id)
        while len(self._known) > self._remember:
            self._known.popitem(last=False)


# --- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Answer:
    """What the bot tells the engineer; ``changed`` is False for a polite no-op."""

    changed: bool
    text: str


@dataclass(frozen=True, kw_only=True)
class Closure:
    """How a page ended, as its claim records it."""

    how: Literal["acknowledged", "resolved"]
    at: datetime
    engineer_id: str | None = None
    display_name: str | None = None
    channel: ChatChannel | None = None
    reason: str | None = None

    @classmethod
    def from_claim(cls, data: Mapping[str, Any]) -> Closure:
        at = data.get("at") or data.get("claimed_at") or utc_now()
        return cls(how=data.get("how", "acknowledged"),
                   at=at if at.tzinfo else at.replace(tzinfo=UTC),
                   engineer_id=data.get("engineer_id"), display_name=data.get("display_name"),
                   channel=data.get("channel"), reason=data.get("reason"))

    def describe(self) -> str:
        when = self.at.astimezone(UTC).strftime("%H:%M UTC")
        if self.how == "acknowledged":
            return f"acknowledged by {self.display_name} via {self.channel} at {when}"
        return f"resolved at {when}: {self.reason}"


OnClosed = Callable[[PageRecord, Closure], Awaitable[None]]


async def _nothing(page: PageRecord, closure: Closure) -> None:
    return None


class EngineerDesk:
    """The use cases engineers trigger from chat, whichever adapter they use."""

    def __init__(
        self,
        *,
        directory: EngineerDirectory,
        pages: PageIndex,
        closures: Claims,
        step_reports: Claims,
        state_of: StateOf,
        publish: Publish,
        on_closed: OnClosed = _nothing,
        clock: Clock = utc_now,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.directory = directory
        self.pages = pages
        self._closures = closures
        self._steps = step_reports
        self._state_of = state_of
        self._publish = publish
        self.on_closed = on_closed
        self._clock = clock
        self._tracer = tracer or trace.get_tracer(__name__)

    async def _publish_for(self, page: PageRecord, span_name: str, event: EventEnvelope,
                           engineer_id: str) -> None:
        """Publish what an engineer did about ``page`` inside the ticket's trace: a span
        whose parent is the event that opened the page (chat callbacks carry no context)."""
        parent = propagate.extract(dict(page.trace_carrier))
        with self._tracer.start_as_current_span(span_name, context=parent, attributes={
                TICKET_ID_ATTRIBUTE: page.ticket_id, "intervention.page_kind": page.kind,
                "intervention.engineer_id": engineer_id}):
            await self._publish(event)

    # -- acknowledgements --------------------------------------------------------------------

    async def acknowledge_page(self, page_id: str, *, channel: ChatChannel, identity: str
                               ) -> Answer:
        engineer = await self.directory.by_identity(channel, identity)
        if engineer is None:
            return _not_registered(channel, identity)
        page = await self.pages.get(page_id)
        if page is None:
            return Answer(changed=False, text="That message is not a page I can acknowledge.")
        return await self._acknowledge(page, engineer, channel)

    async def acknowledge_ticket(self, ticket_id: str, *, channel: ChatChannel, identity: str
                                 ) -> Answer:
        """Acknowledge every open page of the ticket (usually one)."""
        engineer = await self.directory.by_identity(channel, identity)
        if engineer is None:
            return _not_registered(channel, identity)
        state = await self._state_of(ticket_id)
        if not state.pages:
            return Answer(changed=False, text=f"I know no ticket {ticket_id}.")
        open_pages = state.open_pages() or state.pages[-1:]
        answers = []
        for page_state in open_pages:
            page = await self.pages.get(page_state.page_id)
            if page is not None:
                answers.append(await self._acknowledge(page, engineer, channel))
        if not answers:
            return Answer(changed=False, text=f"Nothing to acknowledge on {ticket_id}.")
        return Answer(changed=any(a.changed for a in answers),
                      text="\n".join(a.text for a in answers))

    async def _acknowledge(self, page: PageRecord, engineer: Engineer, channel: ChatChannel
                           ) -> Answer:
        now = self._clock()
        claim = await self._closures.claim(
            f"close:{page.page_id}", now=now,
            data={"how": "acknowledged", "at": now, "engineer_id": engineer.engineer_id,
                  "display_name": engineer.display_name, "channel": channel,
                  "ticket_id": page.ticket_id},
        )
        closure = Closure.from_claim(claim.data)
        if claim.mine and closure.how == "acknowledged":
            # The winner (or whoever finishes for a winner that crashed midway) publishes
            # the *winner's* acknowledgement, under the one id derived from the page.
            await self._publish_ack(page, closure, claim)
            if closure.engineer_id == engineer.engineer_id and claim.outcome == "won":
                return Answer(changed=True, text=(
                    f"{_what(page)} acknowledged: it is yours, {engineer.display_name}."))
        if claim.outcome == "taken_over" and closure.how == "resolved":
            await self._closures.complete(claim.key)
        if closure.engineer_id == engineer.engineer_id and closure.how == "acknowledged":
            return Answer(changed=False, text=(
                f"You already acknowledged {_what(page)} "
                f"({closure.at.astimezone(UTC):%H:%M UTC}); nothing changed."))
        return Answer(changed=False, text=(
            f"Thanks, {engineer.display_name} — {_what(page)} was already "
            f"{closure.describe()}. Nothing changed."))

    async def _publish_ack(self, page: PageRecord, closure: Closure, claim: Claim) -> None:
        assert closure.engineer_id is not None
        assert closure.display_name is not None
        assert closure.channel is not None
        event = EngineerAcknowledged.new(
            ticket_id=page.ticket_id, revision=page.revision,
            causation_id=_uuid(page.page_id), event_id=derived_id(f"{page.page_id}:ack"),
            occurred_at=closure.at, engineer_id=closure.engineer_id,
            display_name=closure.display_name, channel=closure.channel,
            acknowledged_event_id=_uuid(page.page_id),
        )
        await self._publish_for(page, "engineer acknowledgement", event, closure.engineer_id)
        await self._closures.complete(claim.key)
        await self.on_closed(page, closure)

    async def resolve(self, page: PageRecord, reason: str) -> bool:
        """The automation no longer needs a human on ``page``: close it unless an engineer
        acknowledged it first. True when this call closed it."""
        now = self._clock()
        # Inserted done: a resolve publishes nothing, and a take-over of a resolve only ever
        # completed it (the chat edit below is not redone), so "claimed" would protect nothing.
        claim = await self._closures.claim(
            f"close:{page.page_id}", now=now, done=True,
            data={"how": "resolved", "at": now, "reason": reason, "ticket_id": page.ticket_id},
        )
        if claim.outcome != "won":
            return False
        await self.on_closed(page, Closure.from_claim(claim.data))
        return True

    async def finish(self, page_id: str) -> None:
        """Finish an acknowledgement whose winner stopped before publishing it (found by the
        sweeper: the page is closed, yet no EngineerAcknowledged came back)."""
        page = await self.pages.get(page_id)
        if page is None or await self._closures.get(f"close:{page_id}") is None:
            return
        claim = await self._closures.claim(f"close:{page_id}", now=self._clock())
        closure = Closure.from_claim(claim.data)
        if claim.outcome == "taken_over":
            if closure.how == "acknowledged":
                await self._publish_ack(page, closure, claim)
            else:
                await self._closures.complete(claim.key)

    async def closure(self, page_id: str) -> Closure | None:
        doc = await self._closures.get(f"close:{page_id}")
        return None if doc is None else Closure.from_claim(doc)

    # -- manual steps ------------------------------------------------------------------------

    async def report_step(
        self, ticket_id: str, step_id: str, *, status: Literal["done", "failed"], notes: str,
        channel: ChatChannel, identity: str,
    ) -> Answer:
        engineer = await self.directory.by_identity(channel, identity)
        if engineer is None:
            return _not_registered(channel, identity)
        state = await self._state_of(ticket_id)
        steps = [p for p in state.pages if p.kind == "manual_step" and p.step_id == step_id]
        if not steps:
            return Answer(changed=False,
                          text=f"I know no manual step {step_id} on ticket {ticket_id}.")
        page = await self.pages.get(steps[-1].page_id)
        if page is None:
            return Answer(changed=False, text=f"Step {step_id} of {ticket_id} is not indexed.")
        return await self._report(page, engineer, status=status, notes=notes, channel=channel)

    async def report_step_page(
        self, page_id: str, *, status: Literal["done", "failed"], notes: str,
        channel: ChatChannel, identity: str,
    ) -> Answer:
        engineer = await self.directory.by_identity(channel, identity)
        if engineer is None:
            return _not_registered(channel, identity)
        page = await self.pages.get(page_id)
        if page is None or page.kind != "manual_step" or page.step_id is None:
            return Answer(changed=False, text="That message is not a manual step.")
        return await self._report(page, engineer, status=status, notes=notes, channel=channel)

    async def _report(self, page: PageRecord, engineer: Engineer, *,
                      status: Literal["done", "failed"], notes: str, channel: ChatChannel
                      ) -> Answer:
        assert page.step_id is not None
        now = self._clock()
        claim = await self._steps.claim(
            f"step:{page.page_id}", now=now,
            data={"status": status, "notes": notes[:5000], "at": now, "channel": channel,
                  "engineer_id": engineer.engineer_id, "display_name": engineer.display_name},
        )
        data = claim.data
        if claim.mine:
            event = ManualStepCompleted.new(
                ticket_id=page.ticket_id, revision=page.revision,
                causation_id=_uuid(page.page_id),
                event_id=derived_id(f"{page.page_id}:completed"),
                occurred_at=data["at"] if data["at"].tzinfo else data["at"].replace(tzinfo=UTC),
                step_id=page.step_id, status=data["status"], notes=data["notes"],
                engineer_id=data["engineer_id"], display_name=data["display_name"],
                channel=data["channel"],
            )
            await self._publish_for(page, "manual step report", event, data["engineer_id"])
            await self._steps.complete(claim.key)
            if claim.outcome == "won":
                return Answer(changed=True, text=(
                    f"Recorded: step {page.step_id} of {page.ticket_id} {status}. "
                    f"Thanks, {engineer.display_name}."))
        return Answer(changed=False, text=(
            f"Step {page.step_id} of {page.ticket_id} was already reported "
            f"{data.get('status')} by {data.get('display_name')}. Nothing changed."))


def _what(page: PageRecord) -> str:
    if page.kind == "manual_step":
        return f"step {page.step_id} of {page.ticket_id}"
    if page.kind == "hardware":
        return f"the hardware escalation on {page.ticket_id}"
    return page.ticket_id


def _not_registered(channel: ChatChannel, identity: str) -> Answer:
    log.warning("ack from an unregistered %s identity refused", channel)
    return Answer(changed=False, text=(
        f"Sorry, your {channel} account ({identity}) is not registered as an engineer, so I "
        "cannot record that. Ask an admin to add it (intervene engineers add)."))


def _uuid(value: str) -> UUID:
    return UUID(value)
