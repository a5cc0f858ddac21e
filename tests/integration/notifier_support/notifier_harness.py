"""A notifier running in-process against the real Kafka broker and FerretDB, for tests.

Each test module gets its own topic prefix (under the session's) and its own database, so
its notifier sees only its own events and its counts are exact. :class:`Bus` reads every
record of the notifier's output topics from the beginning and indexes them by ticket.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

from schemas import encode, parse_event, topic_for
from schemas.envelope import EventEnvelope
from schemas.events import (
    EngineerAcknowledged,
    Event,
    ManualStepCompleted,
    SignedEvent,
    SlaBreached,
    SlaWarning,
    TicketUpdated,
)
from schemas.topics import physical
from services.notifier.app import NotifierService, build
from services.notifier.bots.base import ChatBot, ChatPost, DeliveryError, Sent
from services.notifier.settings import NotifierSettings
from services.runtime.crypto import SigningKey
from services.runtime.facts import sign_fact
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import init_keys, load_signing_key

OUTPUTS = (TicketUpdated, EngineerAcknowledged, ManualStepCompleted, SlaWarning, SlaBreached)


class FakeClock:
    """The injected clock: time moves only when a test says so."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@dataclass
class Bus:
    bootstrap: str
    prefix: str
    by_ticket: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _consumer: AIOKafkaConsumer | None = None
    _producer: AIOKafkaProducer | None = None
    _task: asyncio.Task[None] | None = None
    notifier_key: SigningKey | None = None
    """Signs the notifier's own facts published here, as the notifier does (unset: as is)."""

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await self._producer.start()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(physical(topic_for(m), self.prefix), p) for m in OUTPUTS
                 for p in consumer.partitions_for_topic(physical(topic_for(m), self.prefix))
                 or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        self._consumer = consumer
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    event = parse_event(record.value)
                    self.by_ticket[event.ticket_id].append(event)
            if batch:
                self.arrived.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, event: EventEnvelope) -> None:
        """Publish as the producing service does: keyed by ticket id, the notifier's facts
        signed with its key (a forger's copy goes through :meth:`publish_as_is`)."""
        if (isinstance(event, SignedEvent) and event.producer == "notifier"
                and event.signature is None and self.notifier_key is not None):
            event = sign_fact(event, self.notifier_key)
        await self.publish_as_is(event)

    async def publish_as_is(self, event: EventEnvelope) -> None:
        """Publish exactly ``event``, as anyone who can write the bus could."""
        assert self._producer is not None
        await self._producer.send_and_wait(physical(topic_for(event), self.prefix),
                                           encode(event), key=event.ticket_id.encode())

    def of(self, ticket_id: str, model: type[EventEnvelope] | None = None) -> list[Any]:
        return [e for e in self.by_ticket[ticket_id] if model is None or isinstance(e, model)]

    async def wait(self, ticket_id: str, model: type[EventEnvelope] | None = None, n: int = 1,
                   *, timeout: float = 20.0) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = self.of(ticket_id, model)
            if len(got) >= n:
                return got
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                name = model.__name__ if model else "events"
                raise AssertionError(f"{ticket_id}: {len(got)} of {n} {name} in {timeout}s")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))

    async def settle(self, seconds: float = 1.0) -> None:
        """Give a wrong extra record time to show up before counting."""
        await asyncio.sleep(seconds)


class RecordingBot:
    """A chat adapter that keeps what it is asked to post (or fails on demand)."""

    def __init__(self, channel: str = "webhook", *, failing: bool = False) -> None:
        self._channel = channel
        self.failing = failing
        self.posts: list[ChatPost] = []
        self.edits: list[tuple[Sent, ChatPost]] = []
        self.attempts = 0

    @property
    def channel(self) -> Any:
        return self._channel

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def post(self, post: ChatPost) -> Sent:
        self.attempts += 1
        if self.failing:
            raise DeliveryError("chat platform down")
        self.posts.append(post)
        return Sent(ref=f"msg-{len(self.posts)}")

    async def edit(self, sent: Sent, post: ChatPost) -> None:
        self.attempts += 1
        if self.failing:
            raise DeliveryError("chat platform down")
        self.edits.append((sent, post))

    def texts(self, ticket_id: str) -> list[str]:
        return [p.text for p in self.posts if p.ticket_id == ticket_id]


@dataclass
class Stack:
    service: NotifierService
    bus: Bus
    settings: NotifierSettings


@asynccontextmanager
async def module_topics(bootstrap: str, session_prefix: str) -> AsyncIterator[str]:
    prefix = f"{session_prefix}n{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix=prefix)
    yield prefix


def settings_for(bootstrap: str, mongodb_uri: str, prefix: str, database: str,
                 **overrides: Any) -> NotifierSettings:
    fields: dict[str, Any] = {
        # The notifier signs the facts it publishes with its own key: a fresh set per stack.
        "intervention_keys_dir": str(init_keys(Path(tempfile.mkdtemp(prefix="nkeys-"))
                                               / "keys").directory),
        "kafka_bootstrap_servers": bootstrap, "kafka_topic_prefix": prefix,
        "mongodb_uri": mongodb_uri, "mongodb_database": database,
        "handler_retry_backoff_s": 0.05, "notifier_delivery_backoff_s": 0.01,
        "notifier_delivery_round_delay_s": 0.05, "notifier_delivery_attempts": 3,
        # Three consumers of new tickets join their group one after another at start (a
        # rebalance each, ~6 s); the service module runs with the default to cover it.
        "notifier_ticket_consumers": 1,
    }
    fields.update(overrides)
    return NotifierSettings(**fields)


@asynccontextmanager
async def notifier_stack(
    settings: NotifierSettings, *, bots: Sequence[ChatBot] = (), clock: Any = None,
    run_sweeper: bool = False, service_name: str = "notifier", drop: bool = True,
) -> AsyncIterator[Stack]:
    """A started notifier and a bus on its topics; the database is dropped afterwards."""
    kwargs: dict[str, Any] = {"bots": bots, "run_sweeper": run_sweeper, "serve_http": False,
                              "service_name": service_name}
    if clock is not None:
        kwargs["clock"] = clock
    service = build(settings, **kwargs)
    bus = Bus(settings.kafka_bootstrap_servers, settings.kafka_topic_prefix,
              notifier_key=load_signing_key(settings.signing_key_path))
    await service.start()
    await bus.start()
    try:
        yield Stack(service=service, bus=bus, settings=settings)
    finally:
        await bus.stop()
        await service.stop()
        if drop:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri)
            await client.drop_database(settings.mongodb_database)
            await client.close()


