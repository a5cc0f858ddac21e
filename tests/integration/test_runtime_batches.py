"""Group commit against the real Kafka broker and FerretDB: key-ordered concurrency inside a
batch, the batch's bookkeeping in bulk, and a consumer process SIGKILLed mid-batch that
loses nothing and re-runs only what its last, uncommitted batch had begun."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polling import eventually

from schemas.events import TicketUpdated
from schemas.registry import encode
from schemas.topics import TopicSpec
from services.runtime.consumer import Delivery, subscribe
from services.runtime.kafka_admin import ensure_topics
from services.runtime.service import ServiceRuntime, event_decoder
from services.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.integration

PROCESS = Path(__file__).with_name("batch_consumer_process.py")


def _update(ticket: str, n: int) -> TicketUpdated:
    return TicketUpdated.new(ticket_id=ticket, revision=1, kind="acknowledgement",
                             message=f"update {n}", language="en")


@pytest.fixture
async def topic(kafka_bootstrap: str, topic_prefix: str, unique: str) -> str:
    name = f"batches-{unique}"
    await ensure_topics(kafka_bootstrap, specs=[
        TopicSpec(name=f"{topic_prefix}{name}", partitions=1),
        TopicSpec(name=f"{topic_prefix}{name}.dlq", partitions=1)])
    return name


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str, database_name: str,
             real_parts: Any) -> RuntimeSettings:
    return RuntimeSettings(kafka_bootstrap_servers=kafka_bootstrap,
                           kafka_topic_prefix=topic_prefix,
                           mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name)


async def _publish(runtime: ServiceRuntime, topic: str, events: list[TicketUpdated]) -> None:
    physical = f"{runtime.settings.kafka_topic_prefix}{topic}"
    futures = [await runtime.broker.publish(encode(e), topic=physical,
                                            key=e.ticket_id.encode(), no_confirm=True)
               for e in events]
    await asyncio.gather(*futures)


async def _queue_behind_gate(runtime: ServiceRuntime, topic: str, unique: str,
                             first_seen: asyncio.Event) -> list[str]:
    """Publish a "gate" message the handler holds, then, while that first batch is held,
    ten tickets x three updates that queue up behind it (the next batch)."""
    gate_event = TicketUpdated.new(ticket_id=f"HD-{unique}-gate", revision=1,
                                   kind="acknowledgement", message="gate", language="en")
    await _publish(runtime, topic, [gate_event])
    await asyncio.wait_for(first_seen.wait(), 30)
    tickets = [f"HD-{unique}-{t}" for t in range(10)]
    await _publish(runtime, topic, [_update(t, n) for n in range(3) for t in tickets])
    await asyncio.sleep(0.5)
    return tickets


async def test_a_batch_runs_tickets_concurrently_each_in_order_with_bulk_bookkeeping(
        settings: RuntimeSettings, topic: str, unique: str) -> None:
    runtime = ServiceRuntime(f"batches-{unique}", settings)
    gate = asyncio.Event()
    log: list[tuple[str, str, int, float]] = []
    first_seen = asyncio.Event()

    async def handle(event: TicketUpdated, delivery: Delivery) -> None:
        if event.message == "gate":
            first_seen.set()
            await gate.wait()
            return
        n = int(event.message.split()[-1])
        log.append(("start", event.ticket_id, n, time.monotonic()))
        await asyncio.sleep(0.2)
        log.append(("end", event.ticket_id, n, time.monotonic()))

    subscribe(runtime, topic, handle, decoder=event_decoder(TicketUpdated))
    await runtime.start()
    try:
        tickets = await _queue_behind_gate(runtime, topic, unique, first_seen)
        before = dict(runtime.store_round_trips.totals)
        began = time.monotonic()
        gate.set()

        async def all_ended() -> bool:
            return sum(1 for e in log if e[0] == "end") == 30

        await eventually(all_ended, 30, interval=0.05)
        elapsed = time.monotonic() - began
        after = runtime.store_round_trips.totals
    finally:
        await runtime.stop()
    # Each ticket's three updates ran one after the other, in order...
    for ticket in tickets:
        mine = [e for e in log if e[1] == ticket]
        assert [(kind, n) for kind, n in ((e[0], e[2]) for e in mine)] == [
            ("start", 0), ("end", 0), ("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    # ...and the ten tickets side by side: 30 runs of 0.2 s in about three rounds, not 6 s.
    assert elapsed < 3.0, f"30 handler runs of 0.2 s took {elapsed:.1f}s: not concurrent"
    # The bookkeeping of the 30 messages: marks in bulk, one insert per batch, no read.
    marks = {k: n - before.get(k, 0) for k, n in after.items()
             if k[1].startswith("processed_events") and n - before.get(k, 0)}
    assert sum(marks.values()) <= 2, marks  # one or two batches, one insert each
    assert all(op == "insert" for op, _ in marks), marks


async def test_a_batch_writes_its_handlers_deferred_audit_records_in_one_insert(
        settings: RuntimeSettings, topic: str, unique: str) -> None:
    runtime = ServiceRuntime(f"batches-{unique}", settings)
    gate = asyncio.Event()
    first_seen = asyncio.Event()
    handled: list[str] = []

    async def handle(event: TicketUpdated, delivery: Delivery) -> None:
        if event.message == "gate":
            first_seen.set()
            await gate.wait()
            return
        await runtime.audit.append_later(
            event.ticket_id, record_id=f"seen:{event.event_id}", kind="seen",
            actor=f"batches-{unique}:test", data={"message": event.message})
        handled.append(event.message)

    subscribe(runtime, topic, handle, decoder=event_decoder(TicketUpdated))
    await runtime.start()
    try:
        tickets = await _queue_behind_gate(runtime, topic, unique, first_seen)
        before = dict(runtime.store_round_trips.totals)
        gate.set()

        async def all_recorded() -> bool:
            counts = [len(await runtime.audit.records(t)) for t in tickets]
            return counts == [3] * 10

        await eventually(all_recorded, 30, interval=0.1)
        after = dict(runtime.store_round_trips.totals)
        # Each ticket's records in the order its messages were handled.
        for ticket in tickets:
            records = await runtime.audit.records(ticket)
            assert [r.data["message"] for r in records] == [
                f"update {n}" for n in range(3)]
    finally:
        await runtime.stop()
    assert len(handled) == 30
    inserts = {k: n - before.get(k, 0) for k, n in after.items()
               if k == ("insert", "audit") and n - before.get(k, 0)}
    # 30 records in one insert per batch (one or two batches), not one insert each.
    assert 1 <= sum(inserts.values()) <= 2, inserts


async def test_a_message_reaching_an_idle_consumer_is_handled_without_waiting_out_the_linger(
        settings: RuntimeSettings, topic: str, unique: str) -> None:
    """FastStream's batch subscriber slept the linger after every empty poll; a message
    arriving meanwhile waited for it (up to 2 s here). The poll itself returns as soon as a
    record arrives, so each message is handled well within the linger."""
    runtime = ServiceRuntime(f"batches-{unique}", settings.model_copy(
        update={"consumer_batch_linger_ms": 2000}))
    handled: dict[str, float] = {}

    async def handle(event: TicketUpdated, delivery: Delivery) -> None:
        handled[event.message] = time.monotonic()

    subscribe(runtime, topic, handle, decoder=event_decoder(TicketUpdated))
    await runtime.start()
    try:
        await asyncio.sleep(3)  # idle: at least one empty poll has come back
        sent: dict[str, float] = {}
        for n in range(10):  # spread over the poll's wait and what was its sleep
            sent[f"update {n}"] = time.monotonic()
            await _publish(runtime, topic, [_update(f"HD-{unique}-idle", n)])

            async def seen(message: str = f"update {n}") -> bool:
                return message in handled

            await eventually(seen, 10, interval=0.01)
            await asyncio.sleep(0.45)
    finally:
        await runtime.stop()
    waits = {m: handled[m] - sent[m] for m in sent}
    assert max(waits.values()) < 0.7, waits


def _start(settings: RuntimeSettings, topic: str, group: str, effects: str,
           seconds: float) -> subprocess.Popen[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
           "MONGODB_URI": settings.mongodb_uri, "MONGODB_DATABASE": settings.mongodb_database,
           "CONSUMER_BATCH_MAX_RECORDS": "40", "OTEL_TRACES_EXPORTER": "none"}
    process = subprocess.Popen([sys.executable, str(PROCESS), topic, group, effects,
                                str(seconds)], env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip() == "ready", line
    return process


async def test_a_consumer_killed_mid_batch_loses_nothing_and_reruns_only_its_open_batch(
        settings: RuntimeSettings, topic: str, unique: str,
        mongo_db: AsyncDatabase[dict[str, object]]) -> None:
    effects = f"effects_{unique}"
    group = f"killed-{unique}"
    publisher = ServiceRuntime(f"publisher-{unique}", settings)
    await publisher.broker.start()
    events = [_update(f"HD-{unique}-{t}", n) for n in range(6) for t in range(20)]
    first = _start(settings, topic, group, effects, 0.05)
    try:
        await _publish(publisher, topic, events)

        async def some_effects() -> bool:
            return await mongo_db[effects].count_documents({}) >= 45

        await eventually(some_effects, 60, interval=0.05)
        os.kill(first.pid, signal.SIGKILL)  # mid-batch: no commit, no goodbye
        first.wait(10)
        killed_at = await mongo_db[effects].count_documents({})
        second = _start(settings, topic, group, effects, 0.05)
        try:
            async def every_event_ran() -> bool:
                ran = {d["event_id"] for d in await mongo_db[effects].find().to_list()}
                return ran >= {str(e.event_id) for e in events}

            await eventually(every_event_ran, 90, interval=0.2)
            await asyncio.sleep(1.0)  # a wrong extra run would show by now
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        await publisher.broker.stop()
        await publisher.mongo.close()
    assert killed_at < len(events), "the kill came after the last message"
    docs = await mongo_db[effects].find().to_list()
    runs = Counter(str(d["event_id"]) for d in docs)
    assert set(runs) == {str(e.event_id) for e in events}  # nothing lost
    twice = [event for event, n in runs.items() if n > 1]
    assert all(n <= 2 for n in runs.values())
    # Only messages of the batch in flight at the kill ran again (a batch is at most 40):
    # every finished batch was committed, and is never re-run.
    assert len(twice) <= 40, f"{len(twice)} re-runs after a kill with {killed_at} effects"
    rerun_pids = {d["pid"] for d in docs if str(d["event_id"]) in twice}
    assert rerun_pids <= {first.pid, second.pid}
    # Per ticket, the order held in the second process too.
    for t in range(20):
        ticket = f"HD-{unique}-{t}"
        # ObjectIds made by one process increase: the order of its inserts.
        mine = sorted((d for d in docs if d["ticket_id"] == ticket and d["pid"] == second.pid),
                      key=lambda d: d["_id"])
        offsets = [d["offset"] for d in mine]
        assert offsets == sorted(offsets)


async def test_a_failing_check_dead_letters_its_message_and_a_failing_batch_is_tried_again(
        settings: RuntimeSettings, topic: str, unique: str, read_topic: Any) -> None:
    runtime = ServiceRuntime(f"batches-{unique}", settings.model_copy(
        update={"handler_retry_backoff_s": 0.01}))
    handled: list[str] = []

    async def verify(event: TicketUpdated) -> None:
        if event.message == "update 1":
            raise RuntimeError("the checker itself broke")

    async def handle(event: TicketUpdated, delivery: Delivery) -> None:
        handled.append(event.message)

    # The runtime's own bookkeeping fails once (say, a store error that is no outage): the
    # batch is not committed past, it is taken up again.
    begin = runtime.processed.begin
    failures = [RuntimeError("bookkeeping broke")]

    async def flaky_begin(*args: Any, **kwargs: Any) -> set[str]:
        if failures:
            raise failures.pop()
        return await begin(*args, **kwargs)

    runtime.processed.begin = flaky_begin  # type: ignore[method-assign]
    subscribe(runtime, topic, handle, decoder=event_decoder(TicketUpdated), verify=verify)
    await runtime.start()
    try:
        await _publish(runtime, topic, [_update(f"HD-{unique}", n) for n in range(3)])

        async def two_handled() -> bool:
            return len(handled) >= 2

        await eventually(two_handled, 30, interval=0.05)
        dlq = await read_topic(f"{settings.kafka_topic_prefix}{topic}.dlq", expect=1)
    finally:
        await runtime.stop()
    assert not failures  # the failure happened, and the batch went through afterwards
    assert handled == ["update 0", "update 2"]
    assert len(dlq) == 1
    assert dlq[0][2]["x-dlq-reason"] == "handler"
    assert dlq[0][2]["x-dlq-error-class"] == "RuntimeError"
