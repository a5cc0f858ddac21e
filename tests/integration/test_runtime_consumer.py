"""The shared runtime's delivery guarantees, against the real Kafka broker and FerretDB.

- two deliveries of one event have one effect, also across a consumer restart;
- a poison message lands in ``<topic>.dlq`` with the reason in its headers, the next flows;
- a handler failing for good is retried with backoff, then DLQ'd; a transient failure is not;
- a secret the process knows never reaches the DLQ headers, the logs or the spans.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polling import eventually

from schemas.events import TicketUpdated
from schemas.registry import encode
from schemas.topics import TopicSpec
from services.runtime.consumer import DLQ_HEADERS, Delivery, subscribe
from services.runtime.kafka_admin import ensure_topics
from services.runtime.redaction import RedactingFilter, Redactor
from services.runtime.service import ServiceRuntime, event_decoder
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import JsonLogFormatter, setup_telemetry

pytestmark = pytest.mark.integration

ReadTopic = Callable[..., Awaitable[list[tuple[bytes | None, bytes, dict[str, str]]]]]


def _update(ticket: str, text: str = "We are looking at it.") -> TicketUpdated:
    return TicketUpdated.new(ticket_id=ticket, revision=1, kind="acknowledgement",
                             message=text, language="en")


@dataclass
class Harness:
    runtime: ServiceRuntime
    topic: str
    seen: list[str] = field(default_factory=list)
    spans: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)


@pytest.fixture
async def make_runtime(
    kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: object, unique: str,
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    started: list[ServiceRuntime] = []
    topic = f"runtime-{unique}"
    await ensure_topics(kafka_bootstrap, specs=[
        TopicSpec(name=f"{topic_prefix}{topic}", partitions=1),
        TopicSpec(name=f"{topic_prefix}{topic}.dlq", partitions=1),
    ])

    async def make(handler: Callable[[TicketUpdated, Delivery], Awaitable[None]] | None = None,
                   *, redactor: Redactor | None = None) -> Harness:
        settings = RuntimeSettings(
            kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=topic_prefix,
            mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,  # type: ignore[attr-defined]
            handler_max_attempts=3, handler_retry_backoff_s=0.05,
        )
        spans = InMemorySpanExporter()
        runtime = ServiceRuntime(f"test-{unique}", settings, redactor=redactor,
                                 telemetry=setup_telemetry(f"test-{unique}", span_exporter=spans))
        harness = Harness(runtime=runtime, topic=topic, spans=spans)

        async def record(event: TicketUpdated, delivery: Delivery) -> None:
            harness.seen.append(str(event.event_id))
            effects = runtime.db[f"effects_{unique}"]
            await effects.insert_one({"event_id": str(event.event_id), "message": event.message})

        subscribe(runtime, topic, handler or record,
                  decoder=event_decoder(TicketUpdated))
        await runtime.start()
        started.append(runtime)
        return harness

    yield make
    for runtime in started:
        await runtime.stop()


async def _publish_raw(harness: Harness, payload: bytes, key: bytes = b"HD-1") -> None:
    await harness.runtime.broker.publish(
        payload, topic=f"{harness.runtime.settings.kafka_topic_prefix}{harness.topic}", key=key)


async def test_two_deliveries_of_one_event_have_one_effect_across_restart(
    make_runtime: Callable[..., Awaitable[Harness]], mongo_db: AsyncDatabase[dict[str, object]],
    unique: str,
) -> None:
    first = await make_runtime()
    event, other = _update(f"HD-{unique}-1"), _update(f"HD-{unique}-2")
    await _publish_raw(first, encode(event))
    await _publish_raw(first, encode(event))  # the helpdesk retried, or a producer re-sent
    await _publish_raw(first, encode(other))
    effects = mongo_db[f"effects_{unique}"]
    await eventually(lambda: _count(effects, {}, 2), 30, interval=0.2)
    await asyncio.sleep(1)  # a wrong second effect would show up by now
    assert await effects.count_documents({"event_id": str(event.event_id)}) == 1
    assert sorted(first.seen) == sorted([str(event.event_id), str(other.event_id)])

    # A restarted consumer in the same group gets the same event again: still one effect.
    await first.runtime.stop()
    second = await make_runtime()
    await _publish_raw(second, encode(event))
    marker = _update(f"HD-{unique}-3")
    await _publish_raw(second, encode(marker))
    await eventually(lambda: _count(effects, {}, 3), 30, interval=0.2)
    assert await effects.count_documents({"event_id": str(event.event_id)}) == 1
    assert second.seen == [str(marker.event_id)]


async def _count(coll: object, query: dict[str, object], n: int) -> bool:
    return await coll.count_documents(query) >= n  # type: ignore[attr-defined, no-any-return]


async def test_poison_messages_go_to_dlq_with_reason_and_next_message_flows(
    make_runtime: Callable[..., Awaitable[Harness]], mongo_db: AsyncDatabase[dict[str, object]],
    read_topic: ReadTopic, unique: str,
) -> None:
    harness = await make_runtime()
    good = _update(f"HD-{unique}")
    await _publish_raw(harness, b"\xff\xfe not json at all")
    not_update = json.loads(encode(good))
    not_update["kind"] = "no-such-kind"
    await _publish_raw(harness, json.dumps(not_update).encode())
    await _publish_raw(harness, encode(good))

    effects = mongo_db[f"effects_{unique}"]
    await eventually(lambda: _count(effects, {}, 1), 30, interval=0.2)
    dlq = await read_topic(f"{harness.runtime.settings.kafka_topic_prefix}{harness.topic}.dlq",
                           expect=2)
    assert len(dlq) == 2
    assert [h["x-dlq-reason"] for _, _, h in dlq] == ["decode", "decode"]
    assert dlq[0][1] == b"\xff\xfe not json at all"  # the original bytes, for replay
    assert dlq[0][2]["x-dlq-error-class"] == "EventDecodeError.not_json"
    assert dlq[1][2]["x-dlq-error-class"] == "EventDecodeError.invalid"
    assert "kind" in dlq[1][2]["x-dlq-error-message"]
    for offset, (_, _, headers) in enumerate(dlq):
        assert set(DLQ_HEADERS) <= set(headers)
        assert headers["x-dlq-original-topic"].endswith(harness.topic)
        assert headers["x-dlq-original-partition"] == "0"
        assert headers["x-dlq-original-offset"] == str(offset)
    assert harness.seen == [str(good.event_id)]


async def test_failing_handler_is_retried_then_dead_lettered_and_transient_failure_recovers(
    make_runtime: Callable[..., Awaitable[Harness]], read_topic: ReadTopic, unique: str,
) -> None:
    calls: dict[str, int] = {}
    done: list[str] = []

    async def flaky(event: TicketUpdated, delivery: Delivery) -> None:
        calls[event.ticket_id] = calls.get(event.ticket_id, 0) + 1
        if event.ticket_id.endswith("-broken"):
            raise RuntimeError("downstream refused")
        if event.ticket_id.endswith("-transient") and calls[event.ticket_id] == 1:
            raise ConnectionError("blip")
        done.append(event.ticket_id)

    harness = await make_runtime(flaky)
    broken, transient, after = (f"HD-{unique}-broken", f"HD-{unique}-transient",
                                f"HD-{unique}-after")
    for ticket in (broken, transient, after):
        await _publish_raw(harness, encode(_update(ticket)), key=ticket.encode())

    async def all_done() -> bool:
        # Three tickets run concurrently: "after" may finish before the others' retries.
        return after in done and transient in done and calls.get(broken) == 3

    await eventually(all_done, 30, interval=0.2)
    assert calls == {broken: 3, transient: 2, after: 1}
    # Three tickets: handled concurrently, so "after" need not wait for the retries.
    assert sorted(done) == sorted([transient, after])
    dlq = await read_topic(f"{harness.runtime.settings.kafka_topic_prefix}{harness.topic}.dlq",
                           expect=1)
    assert len(dlq) == 1
    key, _, headers = dlq[0]
    assert key == broken.encode()
    assert headers["x-dlq-reason"] == "handler"
    assert headers["x-dlq-error-class"] == "RuntimeError"
    assert headers["x-dlq-attempts"] == "3"
    assert headers["x-dlq-error-message"] == "downstream refused"


async def test_known_secret_never_reaches_dlq_headers_logs_or_spans(
    make_runtime: Callable[..., Awaitable[Harness]], read_topic: ReadTopic, unique: str,
) -> None:
    canary = f"Canary-{uuid.uuid4().hex}"
    redactor = Redactor()
    redactor.add(canary)

    async def leaky(event: TicketUpdated, delivery: Delivery) -> None:
        logging.getLogger("test.leaky").warning("trying password %s on %s", canary,
                                                event.ticket_id)
        raise PermissionError(f"login with {canary} refused")

    harness = await make_runtime(leaky, redactor=redactor)
    # The handler a service installs (configure_logging does the same on stderr).
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLogFormatter("test"))
    handler.addFilter(RedactingFilter(redactor))
    logging.getLogger().addHandler(handler)
    try:
        await _publish_raw(harness, encode(_update(f"HD-{unique}")))
        dlq = await read_topic(
            f"{harness.runtime.settings.kafka_topic_prefix}{harness.topic}.dlq", expect=1)
    finally:
        logging.getLogger().removeHandler(handler)
    assert dlq, "the failing message reached the DLQ"
    assert canary not in json.dumps([h for _, _, h in dlq])
    assert "[REDACTED]" in dlq[0][2]["x-dlq-error-message"]
    logged = out.getvalue()
    assert "trying password [REDACTED]" in logged
    assert "handler failed 3 times" in logged  # with the traceback, whose text held the canary
    assert canary not in logged
    lines = [json.loads(line) for line in logged.splitlines()]
    assert any(line.get("ticket_id") == f"HD-{unique}" and "trace_id" in line for line in lines)
    spans = harness.spans.get_finished_spans()
    assert spans, "the consumer produced spans"
    assert canary not in "".join(repr((s.name, s.attributes, s.events, s.status)) for s in spans)


async def test_a_decoder_that_crashes_dead_letters_the_message_and_the_next_flows(
    make_runtime: Callable[..., Awaitable[Harness]], read_topic: ReadTopic, unique: str,
    mongo_db: AsyncDatabase[dict[str, object]],
) -> None:
    harness = await make_runtime()
    # Nesting deep enough to exhaust a recursive parser: the decoder raises RecursionError,
    # not a DecodeError.
    hostile = b"[" * 200_000 + b"]" * 200_000
    await _publish_raw(harness, hostile)
    good = _update(f"HD-{unique}")
    await _publish_raw(harness, encode(good))
    effects = mongo_db[f"effects_{unique}"]
    await eventually(lambda: _count(effects, {}, 1), 30, interval=0.2)
    dlq = await read_topic(f"{harness.runtime.settings.kafka_topic_prefix}{harness.topic}.dlq",
                           expect=1)
    assert len(dlq) == 1
    assert dlq[0][2]["x-dlq-reason"] == "decode"
    assert dlq[0][2]["x-dlq-original-offset"] == "0"
    assert harness.seen == [str(good.event_id)]
