"""Intake throughput over HTTP and over Kafka, each next to a baseline from the same run.

Run from the repository root with Kafka and the store up (``intervene up --no-services``)::

    python bench/bench_intake.py [--requests 300] [--concurrency 16]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` / ``MONGODB_URI`` (defaults 127.0.0.1), a throwaway topic
prefix, database and key set, all removed afterwards. One intake runs in this process (its
FastAPI app with lifespan: HTTP plus the helpdesk-topic consumer), as in production.

- HTTP: ``POST /v1/tickets`` through the in-process ASGI transport (no sockets), each with
  its own ticket and plaintext password, so every request is validated, classified,
  sealed, claimed, audited and published. Baseline: a FastAPI endpoint answering 202 at
  once through the same transport (what the framework alone costs).
- Kafka: the same number of sealed requests published on the helpdesk topic, timed until
  every TicketSubmitted is on its topic. Baseline: a bare relay (consume, re-publish, no
  work) of messages of the same size through the same broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI, Response
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from schemas.topics import HELPDESK_REQUESTS, TopicSpec, event_topic
from services.intake.accounts import AccountMap
from services.intake.accounts import Mapping as AccountRow
from services.intake.bootstrap import IntakeService
from services.intake.examples import example_request
from services.intake.http import create_app
from services.intake.integrations import IntegrationKeyFile, IntegrationRegistry
from services.intake.sealing import load_recipient, seal_request
from services.intake.settings import IntakeSettings
from services.intake.signing import Signer
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import init_keys, key_set_paths


def summary(label: str, n: int, seconds: float, latencies: list[float] | None = None) -> float:
    rate = n / seconds
    line = f"  {label:<44} {rate:8.1f} req/s  ({n} in {seconds:.2f} s)"
    if latencies:
        ordered = sorted(latencies)
        p50 = ordered[len(ordered) // 2]
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        line += f"   p50 {p50 * 1e3:.1f} ms  p95 {p95 * 1e3:.1f} ms"
    print(line, flush=True)
    return rate


async def hammer(n: int, concurrency: int, call: Callable[[int], Awaitable[None]]
                 ) -> tuple[float, list[float]]:
    """Run ``call(0..n-1)`` with at most ``concurrency`` in flight; elapsed and latencies."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            began = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - began, latencies


async def consume_until(bootstrap: str, topic: str, keys: set[bytes], *, ready: asyncio.Event,
                        timeout: float = 300) -> float:
    """Wait until a record with each of ``keys`` is on ``topic``; the time it happened."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for part in parts:  # resolve the lazy seek now, before anything is published
            await consumer.position(part)
        ready.set()
        missing = set(keys)
        deadline = time.monotonic() + timeout
        while missing:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} of {len(keys)} records never arrived")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    missing.discard(record.key)
        return time.perf_counter()
    finally:
        await consumer.stop()


async def helpdesk(service: IntakeService, keys_dir: Path) -> Signer:
    """The benchmark's helpdesk: a registered integration whose portal customers
    ``portal:ACC-<i>`` are the accounts ``ACC-<i>`` (as ``intervene accounts import``)."""
    key = IntegrationKeyFile(keys_dir, create=True)
    _, secret = await IntegrationRegistry(service.runtime.db, key).add(
        "bench-desk", kind="api", scopes=("submit",))
    await AccountMap(service.runtime.db, key).upsert(
        "bench-desk", [AccountRow(customer=f"portal:ACC-{i}", account_id=f"ACC-{i}")
                       for i in range(50)])
    return Signer(integration="bench-desk", secret=secret)


def as_customer(signer: Signer, document: dict[str, Any]) -> Signer:
    return Signer(integration=signer.integration, secret=signer.secret,
                  customer=f"portal:{document['account_id']}")


async def bench_http(service: IntakeService, app: FastAPI, n: int, concurrency: int,
                     signer: Signer) -> tuple[float, float]:
    run = uuid.uuid4().hex[:6]
    documents = [example_request(
        ticket_id=f"BH-{run}-{i}", account_id=f"ACC-{i % 50}",
        credentials={"username": "root", "password": f"Pw-{uuid.uuid4().hex}"},
    ) for i in range(n)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://intake.bench") as http:
        async def submit(i: int) -> None:
            body = json.dumps(documents[i]).encode()
            response = await http.post("/v1/tickets", content=body, headers=as_customer(
                signer, documents[i]).headers("POST", "/v1/tickets", body))
            if response.status_code != 202:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")

        await submit(0)  # warm-up outside the timing (connections, first compile)
        documents[0] = example_request(ticket_id=f"BH-{run}-warm")
        elapsed, latencies = await hammer(n - 1, concurrency, lambda i: submit(i + 1))
    intake_rate = summary("intake POST /v1/tickets", n - 1, elapsed, latencies)

    bare = FastAPI()

    @bare.post("/v1/tickets", status_code=202)
    async def accept() -> Response:
        return Response(b'{"status":"submitted"}', status_code=202,
                        media_type="application/json")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bare),
                                 base_url="http://bare.bench") as http:
        async def post(i: int) -> None:
            await http.post("/v1/tickets", json=documents[i])

        elapsed, latencies = await hammer(n - 1, concurrency, lambda i: post(i + 1))
    bare_rate = summary("baseline: FastAPI endpoint answering 202", n - 1, elapsed, latencies)
    return intake_rate, bare_rate


async def bench_kafka(service: IntakeService, keys_dir: Path, n: int, bootstrap: str,
                      prefix: str, signer: Signer) -> tuple[float, float]:
    run = uuid.uuid4().hex[:6]
    recipient = load_recipient(key_set_paths(keys_dir).sealing_public)
    bodies = {
        f"BK-{run}-{i}".encode(): json.dumps(seal_request(
            example_request(ticket_id=f"BK-{run}-{i}", account_id=f"ACC-{i % 50}"),
            recipient=recipient)).encode()
        for i in range(n)
    }
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                linger_ms=5)
    await producer.start()
    try:
        ready = asyncio.Event()
        waiter = asyncio.create_task(consume_until(
            bootstrap, prefix + event_topic("TicketSubmitted"), set(bodies), ready=ready))
        await ready.wait()
        began = time.perf_counter()
        sends = [await producer.send(
            prefix + HELPDESK_REQUESTS, body, key=key,
            headers=as_customer(signer, json.loads(body)).kafka_headers(HELPDESK_REQUESTS, body))
            for key, body in bodies.items()]
        await asyncio.gather(*sends)
        done = await waiter
        intake_rate = summary("intake helpdesk topic -> TicketSubmitted", n, done - began)

        # Baseline: a relay that does no work, over the same broker, same sizes.
        source, sink = f"{prefix}bench.relay-in", f"{prefix}bench.relay-out"
        await ensure_topics(bootstrap, specs=[TopicSpec(name=source), TopicSpec(name=sink)])
        relay = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"relay-{run}",
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        await relay.start()

        async def pump() -> None:
            while True:
                batch = await relay.getmany(timeout_ms=100)
                for records in batch.values():
                    for record in records:
                        await producer.send_and_wait(sink, record.value, key=record.key)
                if batch:
                    await relay.commit()

        relaying = asyncio.create_task(pump())
        try:
            ready = asyncio.Event()
            waiter = asyncio.create_task(consume_until(bootstrap, sink, set(bodies),
                                                       ready=ready))
            await ready.wait()
            began = time.perf_counter()
            sends = [await producer.send(source, body, key=key) for key, body in bodies.items()]
            await asyncio.gather(*sends)
            done = await waiter
        finally:
            relaying.cancel()
            await asyncio.gather(relaying, return_exceptions=True)
            await relay.stop()
        relay_rate = summary("baseline: bare relay (consume + publish)", n, done - began)
    finally:
        await producer.stop()
    return intake_rate, relay_rate


async def main(args: argparse.Namespace) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    mongodb_uri = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
    run = uuid.uuid4().hex[:8]
    prefix, database = f"bench{run}.", f"bench_{run}"
    keys_dir = Path(tempfile.mkdtemp(prefix="intake-bench-")) / "keys"
    init_keys(keys_dir)
    await ensure_topics(bootstrap, prefix=prefix)
    service = IntakeService(IntakeSettings(
        kafka_bootstrap_servers=bootstrap, kafka_topic_prefix=prefix, mongodb_uri=mongodb_uri,
        mongodb_database=database, intervention_keys_dir=str(keys_dir),
        intake_rate_limit_per_minute=10_000_000, intake_rate_limit_burst=10_000_000,
    ))
    app = create_app(service)
    print(f"intake benchmark: {args.requests} requests, HTTP concurrency {args.concurrency}, "
          f"broker {bootstrap}, store {mongodb_uri}", flush=True)
    results: dict[str, Any] = {}
    try:
        async with app.router.lifespan_context(app):
            signer = await helpdesk(service, keys_dir)
            print("HTTP (in-process ASGI):")
            results["http"] = await bench_http(service, app, args.requests, args.concurrency,
                                               signer)
            print("Kafka:")
            results["kafka"] = await bench_kafka(service, keys_dir, args.requests, bootstrap,
                                                 prefix, signer)
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([t for t in await admin.list_topics()
                                       if t.startswith(prefix)])
        finally:
            await admin.close()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
        await client.drop_database(database)
        await client.close()
    (http_rate, bare_rate), (kafka_rate, relay_rate) = results["http"], results["kafka"]
    print("summary:")
    print(f"  HTTP : {http_rate:.1f} req/s = {http_rate / bare_rate:.3f} x the bare endpoint "
          f"({bare_rate:.1f} req/s)")
    print(f"  Kafka: {kafka_rate:.1f} req/s = {kafka_rate / relay_rate:.3f} x the bare relay "
          f"({relay_rate:.1f} msg/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
