"""Where each ticket is, read from the bus; and the live progress table of ``intervene demo``.

:class:`BusRecorder` reads every topic of one prefix (the catalogue and the DLQs) without a
consumer group, keeps every record, and folds the ``intervention.*`` events into one
:class:`TicketProgress` per ticket. The demo draws its table from it; the end-to-end tests
assert on the same records; the pipeline benchmark takes its timestamps from it.

A ticket's *phase* is what its latest meaningful event says; a phase is *settled* when
nothing more happens without someone outside the system (the customer, an engineer)
acting. A hand-over to rescue is not: the rescue automation ends it with an
InterventionCompleted, or with a manual step where an engineer has to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.events import (
    AuthorizationRejected,
    AuthorizationVerified,
    ClarificationRequested,
    EngineerAcknowledged,
    Event,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
    TicketRejected,
    TicketSubmitted,
    TicketUpdated,
)
from schemas.registry import EventDecodeError, parse_event
from schemas.topics import AUDIT_TOPICS, DLQ_SUFFIX, all_topics

Phase = Literal["waiting", "submitted", "rejected", "authorized", "refused", "clarification",
                "started", "rescue", "manual_step", "completed"]

# Phases where the system itself has nothing more to do for the revision.
SETTLED: frozenset[Phase] = frozenset(
    {"rejected", "refused", "clarification", "manual_step", "completed"})

# The events the notifier turns into a customer-facing TicketUpdated.
_ANSWERED = (TicketSubmitted, TicketRejected, AuthorizationRejected, ClarificationRequested,
             InterventionStarted, ManualStepRequested, InterventionCompleted, HardwareEscalated)

PHASE_LABELS: Mapping[Phase, str] = {
    "waiting": "waiting for intake",
    "submitted": "submitted",
    "rejected": "rejected by intake",
    "authorized": "authorized",
    "refused": "refused by auth",
    "clarification": "question to customer",
    "started": "intervention running",
    "rescue": "handed to rescue",
    "manual_step": "waiting for engineer",
    "completed": "completed",
}


@dataclass(frozen=True, kw_only=True)
class Record:
    topic: str  # catalogue name, prefix removed
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int  # the producer's create time
    arrived: float  # time.monotonic() when read


@dataclass
class TicketProgress:
    ticket_id: str
    events: list[Event] = field(default_factory=list)
    first_seen: float | None = None
    changed: float | None = None  # time.monotonic() of the last event

    def add(self, event: Event, arrived: float) -> None:
        if any(e.event_id == event.event_id for e in self.events):
            return  # a redelivered (re-published) event: same id, nothing new
        self.events.append(event)
        self.first_seen = self.first_seen or arrived
        self.changed = arrived

    def of(self, model: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, model)]

    @property
    def updates(self) -> list[TicketUpdated]:
        return self.of(TicketUpdated)

    @property
    def phase(self) -> Phase:
        phase: Phase = "waiting"
        for event in self.events:
            match event:
                case TicketSubmitted():
                    phase = "submitted" if phase == "waiting" else phase
                case TicketRejected():
                    phase = "rejected"
                case AuthorizationVerified():
                    phase = "authorized" if phase in ("waiting", "submitted") else phase
                case AuthorizationRejected():
                    phase = "refused"
                case ClarificationRequested():
                    phase = "clarification"
                case InterventionStarted():
                    if phase != "completed":
                        phase = "rescue" if event.access_method == "rescue" else "started"
                case ManualStepRequested():
                    if phase != "completed":
                        phase = "manual_step"
                case ManualStepCompleted():
                    if phase == "manual_step":
                        phase = "started"
                case InterventionCompleted():
                    phase = "completed"
        return phase

    @property
    def outcome(self) -> str | None:
        done = self.of(InterventionCompleted)
        return done[-1].outcome if done else None

    def settled(self) -> bool:
        """Nothing more happens by itself, and the customer has been told everything."""
        phase = self.phase
        # A clarification from the executor is followed by its InterventionCompleted; one
        # from auth is the last word until the customer answers.
        if phase == "clarification" and self.of(AuthorizationVerified):
            return False
        return phase in SETTLED and not self.untold()

    def untold(self) -> list[Event]:
        """Events the customer should hear about that no TicketUpdated answers yet.

        The notifier answers each of them with an update caused by it (§4: TicketUpdated),
        except an AuthorizationRejected for the paid-only scope alone, which was explained
        when the ticket arrived.
        """
        answered = {u.causation_id for u in self.updates}
        waiting: list[Event] = []
        for event in self.events:
            if not isinstance(event, _ANSWERED):
                continue
            if isinstance(event, AuthorizationRejected) and set(event.reasons) <= {
                    "scope_not_included"}:
                continue
            if event.event_id not in answered:
                waiting.append(event)
        return waiting

    def label(self) -> str:
        phase = self.phase
        text = PHASE_LABELS[phase]
        if phase == "completed" and self.outcome:
            text = f"completed: {self.outcome}"
        elif phase in ("started", "rescue"):
            started = self.of(InterventionStarted)[-1]
            text = f"{text} ({started.access_method}, {started.mode})"
        elif phase == "refused":
            text = f"{text}: {', '.join(self.of(AuthorizationRejected)[-1].reasons)}"
        hardware = self.of(HardwareEscalated)
        if hardware:
            text += f", {hardware[-1].component} escalated"
        acks = self.of(EngineerAcknowledged)
        if acks:
            text += f", acked by {acks[-1].display_name}"
        return text

    def last_event(self) -> str:
        return self.events[-1].event_type if self.events else "-"


class BusRecorder:
    """Every record of every topic under ``prefix``, from the start or from now on."""

    def __init__(self, bootstrap: str, prefix: str, *, from_beginning: bool = True) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.from_beginning = from_beginning
        self.records: list[Record] = []
        self.tickets: dict[str, TicketProgress] = {}
        self.undecodable = 0
        self.arrived = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Events only: the audit anchors are not events (`intervene audit verify` reads them).
        anchors = {spec.name for spec in all_topics(self.prefix)
                   if spec.name.removeprefix(self.prefix) in {a.name for a in AUDIT_TOPICS}}
        names = [spec.name for spec in all_topics(self.prefix) if spec.name not in anchors]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    group_id=None)
        await consumer.start()
        try:
            for _ in range(100):  # just-created topics reach the metadata a moment later
                await consumer._client.force_metadata_update()
                if all(consumer.partitions_for_topic(t) for t in names):
                    break
                await asyncio.sleep(0.1)
            parts = [TopicPartition(t, p) for t in names
                     for p in consumer.partitions_for_topic(t) or ()]
            consumer.assign(parts)
            if self.from_beginning:
                await consumer.seek_to_beginning(*parts)
            else:
                await consumer.seek_to_end(*parts)
                for part in parts:  # resolve "the end" now, before anything is submitted
                    await consumer.position(part)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._collect(consumer), name="bus-recorder")

    async def _collect(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batch.values():
                for r in records:
                    self._keep(Record(
                        topic=r.topic.removeprefix(self.prefix), key=r.key, value=r.value,
                        headers={k: v.decode(errors="replace") for k, v in r.headers},
                        timestamp_ms=r.timestamp, arrived=now))
            if batch:
                self.arrived.set()

    def _keep(self, record: Record) -> None:
        self.records.append(record)
        if not record.topic.startswith("intervention.") or record.topic.endswith(DLQ_SUFFIX):
            return
        try:
            event = parse_event(record.value)
        except EventDecodeError:
            self.undecodable += 1
            return
        progress = self.tickets.setdefault(event.ticket_id, TicketProgress(event.ticket_id))
        progress.add(event, record.arrived)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            # aiokafka logs a harmless warning for an unowned, group-less consumer's stop.
            quiet = logging.getLogger("aiokafka")
            quiet.setLevel(max(quiet.level, logging.ERROR))
            await self._consumer.stop()

    def ticket(self, ticket_id: str) -> TicketProgress:
        return self.tickets.setdefault(ticket_id, TicketProgress(ticket_id))

    def on(self, topic: str, ticket_id: str | None = None) -> list[Record]:
        """The records of one catalogue topic (optionally one ticket's), in arrival order."""
        key = ticket_id.encode() if ticket_id is not None else None
        return [r for r in self.records
                if r.topic == topic and (key is None or r.key == key)]

    async def wait_for(self, ticket_ids: Iterable[str], *, timeout: float) -> list[str]:
        """Wait until every ticket is settled; return those that are not at the timeout."""
        wanted = list(ticket_ids)
        deadline = time.monotonic() + timeout
        # A ticket is looked at again only once it has a new event: whether it is settled
        # depends on its events alone, and looking at a thousand unchanged tickets at every
        # arrival cost a benchmark's burst a tenth of the machine's CPU.
        looked: dict[str, int] = {}
        pending = set(wanted)
        while True:
            for ticket in list(pending):
                progress = self.ticket(ticket)
                if looked.get(ticket) == len(progress.events):
                    continue
                looked[ticket] = len(progress.events)
                if progress.settled():
                    pending.discard(ticket)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                return [t for t in wanted if t in pending]
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))
