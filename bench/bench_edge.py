"""What trust at the edge costs per request, next to an unchecked baseline in the same run.

Run from the repository root with Kafka and the store up (``intervene up --no-services``)::

    python bench/bench_edge.py [--requests 300] [--concurrency 16]

1. **Signature check alone** (CPU, no I/O): parse the headers and verify the HMAC-SHA256 of
   a typical ticket request, against the baseline of parsing that request's JSON - what the
   unsigned path did with every body anyway.
2. **The whole door**: ``POST /v1/tickets`` through one in-process intake (ASGI transport,
   real broker and store: validated, sealed, claimed, audited, published), with the edge's
   checks (signature, nonce insert, account map, ticket ownership) and then with
   ``EdgeGuard.authenticate`` replaced by one that trusts the headers - the same requests,
   the same process, the same run. The difference is what the checks cost per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from services.intake import signing
from services.intake.accounts import AccountMap
from services.intake.accounts import Mapping as AccountRow
from services.intake.bootstrap import IntakeService
from services.intake.edge import Caller
from services.intake.examples import example_request
from services.intake.http import create_app
from services.intake.integrations import IntegrationKeyFile, IntegrationRegistry
from services.intake.settings import IntakeSettings
from services.runtime.kafka_admin import delete_topics_with_prefix, ensure_topics
from services.runtime.keys import init_keys


def micro(n: int) -> tuple[float, float]:
    body = json.dumps(example_request(ticket_id="HD-1")).encode()
    secret = signing.Signer(integration="bench", secret="osi_" + "x" * 43,
                            customer="portal:ACC-1001")
    headers = [secret.headers("POST", "/v1/tickets", body) for _ in range(n)]
    began = time.perf_counter()
    for h in headers:
        signed = signing.read_headers(h)
        signing.verify(signed, secret.secret, method="POST", path="/v1/tickets", body=body)
    check_us = (time.perf_counter() - began) / n * 1e6
    began = time.perf_counter()
    for _ in range(n):
        json.loads(body)
    parse_us = (time.perf_counter() - began) / n * 1e6
    return check_us, parse_us


async def door(service: IntakeService, app: Any, signer: signing.Signer, n: int,
               concurrency: int, label: str) -> tuple[float, list[float]]:
    run = uuid.uuid4().hex[:6]
    tag = "c" if label.startswith("signed") else "u"
    documents = [example_request(ticket_id=f"BE-{tag}-{run}-{i}", account_id="ACC-1001",
                                 credentials={"username": "root",
                                              "password": f"Pw-{uuid.uuid4().hex}"})
                 for i in range(n)]
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://intake.bench") as http:
        async def one(document: dict[str, Any]) -> None:
            body = json.dumps(document).encode()
            async with gate:
                began = time.perf_counter()
                answer = await http.post("/v1/tickets", content=body,
                                         headers=signer.headers("POST", "/v1/tickets", body))
                latencies.append(time.perf_counter() - began)
            if answer.status_code != 202:
                raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")

        await one(documents[0])  # warm-up
        latencies.clear()
        began = time.perf_counter()
        await asyncio.gather(*(one(d) for d in documents[1:]))
        elapsed = time.perf_counter() - began
    return elapsed, latencies


def report(label: str, runs: list[tuple[float, list[float]]]) -> tuple[float, float]:
    n = sum(len(lat) for _, lat in runs)
    rate = n / sum(elapsed for elapsed, _ in runs)
    ordered = sorted(x for _, lat in runs for x in lat)
    p50 = statistics.median(ordered)
    print(f"  {label:<38} {rate:7.1f} req/s   p50 {p50 * 1e3:6.1f} ms"
          f"   p95 {ordered[int(len(ordered) * 0.95)] * 1e3:6.1f} ms", flush=True)
    return rate, p50


async def main(args: argparse.Namespace) -> None:
    check_us, parse_us = micro(20_000)
    print("signature check alone (20000 requests, one core):")
    print(f"  read headers + HMAC-SHA256 verify       {check_us:7.1f} us/request")
    print(f"  baseline: json.loads of the same body    {parse_us:7.1f} us/request "
          f"(check = {check_us / parse_us:.2f} x the parse)")

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    mongodb_uri = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
    run = uuid.uuid4().hex[:8]
    prefix, database = f"benchedge{run}.", f"bench_edge_{run}"
    keys = Path(tempfile.mkdtemp(prefix="edge-bench-")) / "keys"
    init_keys(keys)
    await ensure_topics(bootstrap, prefix=prefix)
    service = IntakeService(IntakeSettings(
        kafka_bootstrap_servers=bootstrap, kafka_topic_prefix=prefix, mongodb_uri=mongodb_uri,
        mongodb_database=database, intervention_keys_dir=str(keys),
        intake_rate_limit_per_minute=10_000_000, intake_rate_limit_burst=10_000_000))
    app = create_app(service)
    try:
        async with app.router.lifespan_context(app):
            key = IntegrationKeyFile(keys, create=True)
            _, secret = await IntegrationRegistry(service.runtime.db, key).add(
                "bench", kind="api", scopes=("submit",))
            await AccountMap(service.runtime.db, key).upsert(
                "bench", [AccountRow(customer="portal:ACC-1001", account_id="ACC-1001")])
            signer = signing.Signer(integration="bench", secret=secret,
                                    customer="portal:ACC-1001")
            print(f"the whole door: POST /v1/tickets x {args.requests} each way, concurrency "
                  f"{args.concurrency}, real broker and store, {args.rounds} alternating "
                  "rounds:")
            guard = service.guard
            integration = await guard.registry.get("bench")
            assert integration is not None
            checking = guard.authenticate

            async def trusting(headers: Any, **_: Any) -> Caller:
                return Caller(integration=integration,
                              customer=signing.read_headers(headers).customer)

            per_round = max(2, args.requests // args.rounds)
            runs: dict[str, list[tuple[float, list[float]]]] = {"c": [], "u": []}
            for _ in range(args.rounds):
                guard.authenticate = checking  # type: ignore[method-assign]
                runs["c"].append(await door(service, app, signer, per_round,
                                            args.concurrency, "signed"))
                guard.authenticate = trusting  # type: ignore[method-assign]
                runs["u"].append(await door(service, app, signer, per_round,
                                            args.concurrency, "unchecked"))
            checked = report("signed, every edge check", runs["c"])
            unchecked = report("baseline: signature not checked", runs["u"])
    finally:
        await delete_topics_with_prefix(bootstrap, prefix)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
        await client.drop_database(database)
        await client.close()
    print("summary:")
    print(f"  throughput with checks = {checked[0] / unchecked[0]:.3f} x the baseline; "
          f"p50 +{(checked[1] - unchecked[1]) * 1e3:.1f} ms per request "
          f"(the nonce insert is the one added store round trip)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
