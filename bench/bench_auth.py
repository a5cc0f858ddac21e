"""Verdict throughput of the auth service, end to end through the real broker and store.

Run from the repository root with the stack up (``intervene up --no-services``)::

    python bench/bench_auth.py [--tickets 500] [--servers 50]

One auth service runs in this process on a throwaway topic prefix and database (dropped
afterwards), with a throwaway key set. After a warm-up ticket (the consumer group join is
not measured), N TicketSubmitted events are published at once and the clock stops when the
N-th verdict is on the verdict topics: tickets/s = N / elapsed. Each ticket costs auth a
dedupe lookup, three inventory/history reads, the audit append (hash chain), an idempotent
``acks=all`` publish, the history write, the processed-mark and the offset commit.

The baseline is the pure part alone - ``decide()`` + building the event + Ed25519 ``sign()``
for the same tickets - so the ratio says how much of a verdict's cost is I/O.
Uses ``KAFKA_BOOTSTRAP_SERVERS`` and ``MONGODB_URI`` (local defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script
sys.path.insert(0, str(ROOT / "tests" / "unit" / "auth"))  # the tests' ticket factory

from auth_factories import server, ticket  # noqa: E402

from schemas import (  # noqa: E402
    AuthorizationRejected,
    AuthorizationVerified,
    ClarificationRequested,
    TicketSubmitted,
    encode,
    topic_for,
)
from schemas.topics import physical  # noqa: E402
from services.auth.app import build  # noqa: E402
from services.auth.settings import AuthSettings  # noqa: E402
from services.auth.signing import VerdictSigner  # noqa: E402
from services.auth.verdict import Facts, decide, to_event  # noqa: E402
from services.runtime.facts import sign_fact  # noqa: E402
from services.runtime.kafka_admin import ensure_topics  # noqa: E402
from services.runtime.keys import KeySetPaths, init_keys, load_signing_key  # noqa: E402

VERDICT_TOPICS = [topic_for(m) for m in (AuthorizationVerified, AuthorizationRejected,
                                         ClarificationRequested)]


def make_tickets(n: int, servers: int) -> list[TicketSubmitted]:
    now = datetime.now(UTC)
    return [
        ticket(ticket_id=f"HD-BENCH-{i:06d}", at=now, account_id="ACC-1",
               server={"service_id": f"SRV-{i % servers:04d}"})
        for i in range(n)
    ]


def pure_rate(tickets: list[TicketSubmitted], signer: VerdictSigner, servers: int) -> float:
    records = {f"SRV-{i:04d}": server(service_id=f"SRV-{i:04d}", ips=f"10.0.{i // 250}.{i % 250}")
               for i in range(servers)}
    settings = AuthSettings()
    policy = settings.policy()
    began = time.perf_counter()
    for t in tickets:
        facts = Facts(candidates=(records[t.server.value],), prior_interventions=1)
        now = datetime.now(UTC)
        event = to_event(t, decide(t, facts, now=now, policy=policy), event_id=uuid.uuid4(),
                         now=now)
        assert isinstance(event, AuthorizationVerified)
        signer.sign(event)
    return len(tickets) / (time.perf_counter() - began)


async def end_to_end_rate(tickets: list[TicketSubmitted], servers: int,
                          keys: KeySetPaths) -> float:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    run = uuid.uuid4().hex[:8]
    prefix = f"bench{run}."
    await ensure_topics(bootstrap, prefix=prefix)
    settings = AuthSettings(
        kafka_bootstrap_servers=bootstrap, kafka_topic_prefix=prefix,
        mongodb_uri=os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017"),
        mongodb_database=f"bench_auth_{run}", auth_signing_key=keys.signing_private,
        auth_intake_verify_keys=str(keys.intake_signing_public),
        auth_review_threshold=1000,
    )
    service = build(settings)
    # Signed as intake signs them (part of intake's cost, not auth's): auth verifies each.
    intake = load_signing_key(keys.intake_signing_private)
    tickets = [sign_fact(t, intake) for t in tickets]
    await service.inventory.upsert([
        server(service_id=f"SRV-{i:04d}", ips=f"10.0.{i // 250}.{i % 250}")
        for i in range(servers)
    ])
    await service.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(physical(t, prefix), p) for t in VERDICT_TOPICS
                 for p in consumer.partitions_for_topic(physical(t, prefix)) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        submitted = physical(topic_for(TicketSubmitted), prefix)

        arrivals: list[float] = []

        async def verdicts(expect: int) -> None:
            arrivals.clear()
            while len(arrivals) < expect:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                arrivals.extend(now for records in batch.values() for _ in records)

        warm_up = sign_fact(ticket(ticket_id=f"HD-WARM-{run}", at=datetime.now(UTC),
                                   account_id="ACC-1", server={"service_id": "SRV-0000"}),
                            intake)
        await producer.send_and_wait(submitted, encode(warm_up), key=warm_up.ticket_id.encode())
        await asyncio.wait_for(verdicts(1), 60)

        payloads = [(encode(t), t.ticket_id.encode()) for t in tickets]
        began = time.perf_counter()
        sent = [await producer.send(submitted, value, key=key) for value, key in payloads]
        await asyncio.gather(*sent)
        published = time.perf_counter() - began
        await asyncio.wait_for(verdicts(len(tickets)), 600)
        elapsed = time.perf_counter() - began
        print(f"  published {len(tickets)} tickets in {published:.2f} s; "
              f"last verdict after {elapsed:.2f} s")
        # A rate that falls from the first to the last quarter would mean a lookup that
        # grows with the data (a collection scan on FerretDB).
        quarter = len(arrivals) // 4
        if quarter > 1:
            rates = [quarter / (arrivals[min(len(arrivals), (q + 1) * quarter) - 1]
                                - (arrivals[q * quarter - 1] if q else began))
                     for q in range(4)]
            print("  per quarter:              " + "  ".join(f"{r:.1f}" for r in rates)
                  + " tickets/s")
        return len(tickets) / elapsed
    finally:
        await consumer.stop()
        await producer.stop()
        await service.stop()  # first: a running consumer would re-create the database
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(settings.mongodb_uri)
        await client.drop_database(settings.mongodb_database)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=500)
    parser.add_argument("--servers", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = init_keys(Path(tmp))
        signer = VerdictSigner(load_signing_key(keys.signing_private))
        tickets = make_tickets(args.tickets, args.servers)
        print(f"auth benchmark: {args.tickets} tickets over {args.servers} servers")
        pure = pure_rate(tickets, signer, args.servers)
        print(f"  pure decide()+sign():     {pure:10.0f} verdicts/s")
        e2e = asyncio.run(end_to_end_rate(tickets, args.servers, keys))
        print(f"  end to end (Kafka+store): {e2e:10.1f} tickets/s")
        print(f"  ratio pure / end to end:  {pure / e2e:10.0f}x  (the rest: broker and store I/O)")


if __name__ == "__main__":
    main()
