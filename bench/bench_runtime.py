"""What durable handling costs per message, against the real FerretDB and Kafka.

Prints, for N messages:
- the idempotency check (``seen`` on a new key + ``mark``) and a duplicate's check
  (``seen`` hit), against a baseline store round trip (``ping``) measured in the same run;
- end-to-end consume throughput through ``services.runtime.consumer.subscribe`` (decode,
  dedupe, handler, mark, commit per message) against a plain aiokafka consumer reading the
  same N messages with auto-commit.

Usage: ``python bench/bench_runtime.py [N]`` with the local stack up (``intervene up``), or
KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI pointing elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

from schemas.events import TicketUpdated
from schemas.registry import encode
from schemas.topics import TopicSpec
from services.runtime.consumer import Delivery, subscribe
from services.runtime.idempotency import ProcessedEvents
from services.runtime.kafka_admin import ensure_topics
from services.runtime.service import ServiceRuntime, event_decoder
from services.runtime.settings import RuntimeSettings

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGO = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")


def _stats(name: str, samples: list[float]) -> float:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[int(len(ms) * 0.95) - 1]
    print(f"  {name:<34} mean {statistics.mean(ms):7.3f} ms  p50 {statistics.median(ms):7.3f}"
          f" ms  p95 {p95:7.3f} ms")
    return statistics.mean(ms)


async def bench_idempotency(n: int) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(MONGO)
    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    db = client[db_name]
    processed = ProcessedEvents(db)
    await processed.ensure_indexes()
    try:
        ping, new, dup = [], [], []
        keys = [str(uuid.uuid4()) for _ in range(n)]
        for key in keys:
            t0 = time.perf_counter()
            await db.command("ping")
            t1 = time.perf_counter()
            assert not await processed.seen("bench", key)
            await processed.mark("bench", key, ticket_id="HD-BENCH")
            t2 = time.perf_counter()
            assert await processed.seen("bench", key)
            t3 = time.perf_counter()
            ping.append(t1 - t0)
            new.append(t2 - t1)
            dup.append(t3 - t2)
        print(f"idempotency check, {n} messages (FerretDB at {MONGO}):")
        base = _stats("baseline: store round trip (ping)", ping)
        first = _stats("new message: seen + mark", new)
        again = _stats("duplicate: seen (hit)", dup)
        print(f"  ratio new/ping {first / base:.1f}x, duplicate/ping {again / base:.1f}x")
    finally:
        await client.drop_database(db_name)
        await client.close()


async def bench_consume(n: int) -> None:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    topic = "bench-consume"
    await ensure_topics(BOOTSTRAP, specs=[TopicSpec(name=prefix + topic, partitions=1),
                                          TopicSpec(name=prefix + topic + ".dlq", partitions=1)])
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True)
    await producer.start()
    events = [TicketUpdated.new(ticket_id=f"HD-B-{i}", revision=1, kind="other",
                                message="bench", language="en") for i in range(n)]
    for event in events:
        await producer.send(prefix + topic, encode(event), key=event.ticket_id.encode())
    await producer.flush()
    await producer.stop()

    # Baseline: a plain consumer with auto-commit reading the same messages.
    consumer = AIOKafkaConsumer(prefix + topic, bootstrap_servers=BOOTSTRAP,
                                group_id=f"plain-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest")
    await consumer.start()
    t0 = time.perf_counter()
    got = 0
    while got < n:
        batch = await consumer.getmany(timeout_ms=1000)
        got += sum(len(v) for v in batch.values())
    plain = time.perf_counter() - t0
    await consumer.stop()

    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    settings = RuntimeSettings(kafka_bootstrap_servers=BOOTSTRAP, kafka_topic_prefix=prefix,
                               mongodb_uri=MONGO, mongodb_database=db_name)
    runtime = ServiceRuntime("bench", settings)
    done = asyncio.Event()
    count = 0
    first_at: list[float] = []

    async def handle(event: TicketUpdated, delivery: Delivery) -> None:
        nonlocal count
        if not first_at:
            first_at.append(time.perf_counter())
        count += 1
        if count == n:
            done.set()

    subscribe(runtime, topic, handle, decoder=event_decoder(TicketUpdated))
    await runtime.start()
    await asyncio.wait_for(done.wait(), timeout=600)
    durable = time.perf_counter() - first_at[0]
    await runtime.stop()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(MONGO)
    await client.drop_database(db_name)
    await client.close()
    print(f"consume {n} messages from Kafka at {BOOTSTRAP}:")
    print(f"  baseline: aiokafka, auto-commit       {n / plain:9.0f} msg/s")
    print(f"  runtime.subscribe (dedupe+mark+commit) {n / durable:9.0f} msg/s "
          f"({durable / n * 1000:.2f} ms/msg)")
    print(f"  ratio durable/baseline time per message: {durable / plain:.1f}x")


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    await bench_idempotency(n)
    await bench_consume(n)


if __name__ == "__main__":
    asyncio.run(main())
