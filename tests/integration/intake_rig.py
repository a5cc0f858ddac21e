"""One intake in this process (FastAPI app with its lifespan, so HTTP and the helpdesk-topic
consumer run as in production) on this run's topic prefix and database, a tap on its output
topics and the helpdesk DLQ, and a registered helpdesk integration whose client signs.
Shared by the intake flow and edge-attack suites (each module gets its own intake).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from signed_requests import Registered, register

from schemas import parse_event
from schemas.topics import DLQ_SUFFIX, HELPDESK_REQUESTS, event_topic
from services.intake.bootstrap import IntakeService
from services.intake.examples import example_request
from services.intake.http import create_app
from services.intake.sealing import load_recipient, seal_request
from services.intake.settings import IntakeSettings
from services.runtime.keys import init_keys, key_set_paths

SUBMITTED = event_topic("TicketSubmitted")
REJECTED = event_topic("TicketRejected")
DLQ = HELPDESK_REQUESTS + DLQ_SUFFIX


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]


@dataclass
class Tap:
    """Everything on intake's output topics and the helpdesk DLQ since the module started."""

    prefix: str
    records: list[Rec] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, topic: str, ticket_id: str | None = None) -> list[Rec]:
        return [r for r in self.records if r.topic == self.prefix + topic
                and (ticket_id is None or r.key == ticket_id.encode())]

    async def wait(self, check: Callable[[], list[Rec]], n: int = 1, timeout: float = 30
                   ) -> list[Rec]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got := check()) < n:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{len(got)} of {n} records after {timeout}s")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))
        return got

    async def event(self, topic: str, ticket_id: str) -> Any:
        (rec, *_) = await self.wait(lambda: self.on(topic, ticket_id))
        return parse_event(rec.value)


@dataclass
class Intake:
    service: IntakeService
    app: FastAPI
    http: httpx.AsyncClient
    tap: Tap
    producer: AIOKafkaProducer
    keys: Path
    spans: InMemorySpanExporter
    desk: Registered

    def unsigned(self) -> httpx.AsyncClient:
        """A client that signs nothing: what an outsider who reaches the port has."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                 base_url="http://intake.test")

    @property
    def prefix(self) -> str:
        return self.service.settings.kafka_topic_prefix

    async def publish(self, body: bytes, key: str, *, signed: bool = True
                      ) -> tuple[int, int]:
        """Publish as the helpdesk does: signed by its integration, in Kafka headers."""
        headers = await self.desk.topic_headers(body) if signed else []
        meta = await self.producer.send_and_wait(self.prefix + HELPDESK_REQUESTS, body,
                                                 key=key.encode(), headers=headers)
        return meta.partition, meta.offset

    def sealed(self, **changes: Any) -> dict[str, Any]:
        return seal_request(example_request(**changes),
                            recipient=load_recipient(key_set_paths(self.keys).sealing_public))


async def assigned(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    for _ in range(50):  # topics just created: wait until the metadata lists them all
        await consumer._client.force_metadata_update()
        if all(consumer.partitions_for_topic(t) for t in topics):
            break
        await asyncio.sleep(0.1)
    return [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]


async def start_intake(
    kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
    tmp_path_factory: pytest.TempPathFactory, keys: Path | None = None,
) -> AsyncIterator[Intake]:
    """An intake with its tap and a signing client, until the generator is closed. ``keys``:
    a key set shared with the services downstream (auth checks intake's signature), else
    a fresh one."""
    if keys is None:
        keys = tmp_path_factory.mktemp("intake") / "keys"
        init_keys(keys)
    settings = IntakeSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=topic_prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,
        intervention_keys_dir=str(keys), handler_retry_backoff_s=0.05,
        intake_rate_limit_per_minute=1_000_000, intake_rate_limit_burst=1_000_000,
    )
    spans = InMemorySpanExporter()
    service = IntakeService(settings, span_exporter=spans)
    app = create_app(service)
    tap = Tap(prefix=topic_prefix)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await consumer.start()
    await producer.start()
    parts = await assigned(consumer, [topic_prefix + t for t in (SUBMITTED, REJECTED, DLQ)])
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)

    async def pump() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                tap.records.extend(
                    Rec(r.topic, r.partition, r.offset, r.key, r.value,
                        {k: v.decode() for k, v in r.headers}) for r in records)
            if batch:
                tap.arrived.set()

    task = asyncio.create_task(pump())
    async with app.router.lifespan_context(app):
        desk = await register(service.runtime.db, keys, f"desk-{uuid.uuid4().hex[:8]}")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://intake.test", auth=desk.auth()) as http:
            yield Intake(service=service, app=app, http=http, tap=tap, producer=producer,
                         keys=keys, spans=spans, desk=desk)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await consumer.stop()
    await producer.stop()


