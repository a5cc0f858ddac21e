"""Latency of the customer's initial response: TicketSubmitted published -> TicketUpdated seen.

Run from the repository root with the stack up (``intervene up --no-services``)::

    python bench/bench_notifier.py [--tickets 300] [--interval-ms 100 20]

One notifier runs in this process on a throwaway topic prefix and database (dropped
afterwards). Once its consumers have joined their groups and ten warm-up tickets are
answered, N tickets are published one every ``interval`` (an open loop, like a helpdesk's
traffic, not a burst; one run per interval given, by default 10/s and an overload of 50/s,
past what FerretDB absorbs for the whole pipeline on a shared machine): each
ticket's latency is from just before its ``send`` (acks=all, as intake publishes) to the
moment a reader of ``intervention.ticket-updated`` sees the acknowledgement caused by it.
On that path the notifier does a dedupe lookup, renders the template, appends the event to
the audit hash chain (three store round trips), publishes with acks=all, and only then
records the ticket's SLA facts, page and deadline.

The baseline is the broker alone, measured in the same run the same way: a raw produce
(acks=all) -> consume round trip on a topic of its own, so the difference is the notifier.
Uses ``KAFKA_BOOTSTRAP_SERVERS`` and ``MONGODB_URI`` (local defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script
sys.path.insert(0, str(ROOT / "tests" / "unit" / "notifier"))  # the tests' event factory

from notifier_factories import submitted  # type: ignore[import-not-found]  # noqa: E402

from schemas import TicketSubmitted, TicketUpdated, encode, parse_event, topic_for  # noqa: E402
from schemas.topics import DEFAULT_PARTITIONS, TopicSpec, physical  # noqa: E402
from services.notifier.app import NotifierService, build  # noqa: E402
from services.notifier.settings import NotifierSettings  # noqa: E402
from services.runtime.kafka_admin import ensure_topics  # noqa: E402


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return (f"p50 {pick(0.50):7.1f} ms   p90 {pick(0.90):7.1f} ms   p99 {pick(0.99):7.1f} ms   "
            f"max {ordered[-1] * 1000:7.1f} ms   mean {statistics.fmean(ordered) * 1000:6.1f} ms")


async def assigned_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=100)
    await consumer.start()
    deadline = time.monotonic() + 30
    parts: list[TopicPartition] = []
    while not parts:  # a topic created a moment ago may not be in the metadata yet
        if time.monotonic() > deadline:
            raise SystemExit(f"topic {topic} has no partitions in the broker's metadata")
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not parts:
            await asyncio.sleep(0.2)
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    return consumer


async def baseline(bootstrap: str, prefix: str, n: int, interval: float) -> list[float]:
    """Raw produce (acks=all) -> consume round trips on a topic of their own."""
    topic = f"{prefix}bench.round-trip"
    await ensure_topics(bootstrap, specs=[TopicSpec(name=topic)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    consumer = await assigned_consumer(bootstrap, topic)
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def read() -> None:
        while len(latencies) < n:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    if record.value in sent:
                        latencies.append(now - sent[record.value])
        done.set()

    reader = asyncio.create_task(read())
    try:
        for i in range(n):
            value = f"round-trip-{i}".encode()
            sent[value] = time.perf_counter()
            await producer.send_and_wait(topic, value, key=f"HD-{i % 97}".encode())
            await asyncio.sleep(interval)
        await asyncio.wait_for(done.wait(), 60)
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()
    return latencies


async def settled(service: NotifierService, topic: str, timeout: float = 60.0) -> None:
    """Wait until the new-ticket consumers have joined their group and split its
    partitions: the one-off rebalances at start are not what is measured."""
    # FastStream's Kafka subscribers expose their aiokafka consumer and topics (not typed on
    # the generic subscriber type the broker lists).
    consumers = [getattr(sub, "consumer", None) for sub in service.runtime.broker.subscribers
                 if topic in [t.name for t in getattr(sub, "topics", ())]]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assigned = [len(c.assignment()) if c is not None else 0 for c in consumers]
        if sum(assigned) >= DEFAULT_PARTITIONS and all(assigned[:DEFAULT_PARTITIONS]):
            return
        await asyncio.sleep(0.2)
    raise SystemExit("the notifier's consumers did not settle")


async def notifier_latency(bootstrap: str, prefix: str, n: int, interval: float
                           ) -> list[float]:
    mongodb_uri = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
    settings = NotifierSettings(kafka_bootstrap_servers=bootstrap, kafka_topic_prefix=prefix,
                                mongodb_uri=mongodb_uri,
                                mongodb_database=f"bench_notifier_{prefix.strip('.')}")
    service = build(settings, serve_http=False)
    await service.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=0)
    await producer.start()
    consumer = await assigned_consumer(bootstrap, physical(topic_for(TicketUpdated), prefix))
    submitted_topic = physical(topic_for(TicketSubmitted), prefix)
    sent: dict[uuid.UUID, float] = {}
    arrived: dict[uuid.UUID, float] = {}

    async def read() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    update = parse_event(record.value)
                    if update.causation_id is not None:
                        arrived.setdefault(update.causation_id, now)

    async def until(count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if len(arrived) >= count or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)

    reader = asyncio.create_task(read())
    try:
        await settled(service, submitted_topic)
        for _ in range(10):  # warm-up: connections, caches, the first fetches
            warm_up = submitted(at=datetime.now(UTC))
            await producer.send_and_wait(submitted_topic, encode(warm_up),
                                         key=warm_up.ticket_id.encode())
        await until(10, 60)
        arrived.clear()
        tickets = [submitted(at=datetime.now(UTC), language="it" if i % 2 else "en")
                   for i in range(n)]
        payloads = [(t.event_id, encode(t), t.ticket_id.encode()) for t in tickets]
        for event_id, value, key in payloads:
            sent[event_id] = time.perf_counter()
            await producer.send_and_wait(submitted_topic, value, key=key)
            await asyncio.sleep(interval)
        await until(n, 120)
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()
        await service.stop()  # first: its consumers would recreate the database
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
        await client.drop_database(settings.mongodb_database)
        await client.close()
    missing = [i for i in sent if i not in arrived]
    if missing:
        raise SystemExit(f"{len(missing)} of {n} tickets got no TicketUpdated")
    return [arrived[i] - sent[i] for i in sent]


async def run(n: int, intervals: list[float]) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    for interval in intervals:
        prefix = f"bench{uuid.uuid4().hex[:8]}."
        await ensure_topics(bootstrap, prefix=prefix)
        print(f"notifier benchmark: {n} tickets, one every {interval * 1000:.0f} ms "
              f"({1 / interval:.0f} tickets/s)")
        raw = await baseline(bootstrap, prefix, n, interval)
        print(f"  broker round trip (baseline):             {percentiles(raw)}")
        measured = await notifier_latency(bootstrap, prefix, n, interval)
        print(f"  TicketSubmitted -> initial TicketUpdated: {percentiles(measured)}")
        overhead = statistics.median(measured) - statistics.median(raw)
        print(f"  the notifier's share of the median:       {overhead * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, nargs="+", default=[100.0, 20.0],
                        help="one run per pace (default: 10/s, then an overload of 50/s)")
    args = parser.parse_args()
    asyncio.run(run(args.tickets, [i / 1000 for i in args.interval_ms]))


if __name__ == "__main__":
    main()
