"""What an audit append costs, against a plain ``insert_one`` on the same store, and what
signing each record with the service's audit key and noting its head for the Kafka anchors
adds (unsigned and signed appends measured in the same run, alternating in rounds so that
the store's drift hits both alike).

Run from the repository root with the store up (``intervene up --no-services``)::

    python bench/bench_audit.py [--appends 300] [--writers 4]

Uses ``MONGODB_URI`` (default ``mongodb://127.0.0.1:27017``) and a throwaway database that
is dropped afterwards. Each concurrent writer has its own client, standing in for a
separate service process (in one process the audit log serialises a ticket's appends).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from services.runtime.audit import (
    AUDIT_SIGNATURE_CONTEXT,
    AuditLog,
    AuditSigner,
    check_signature,
    verify_chain,
)
from services.runtime.audit_anchors import AnchorBook
from services.runtime.crypto import SigningKey

Client = AsyncMongoClient[dict[str, Any]]

# A typical executor step: the command, some redacted output, its status and duration.
PAYLOAD: dict[str, Any] = {
    "command": "systemctl restart ssh.service",
    "output": "Job for ssh.service finished.\n" * 8,
    "exit_status": 0,
    "duration_ms": 184.2,
}


def latency_summary(label: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    mean = statistics.fmean(ordered)
    p50 = ordered[len(ordered) // 2]
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(f"  {label:<34} mean {mean * 1e3:6.2f} ms   p50 {p50 * 1e3:6.2f} ms   "
          f"p95 {p95 * 1e3:6.2f} ms   (n={len(ordered)})")
    return mean


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - start)
    return samples


async def throughput(writers: int, per_writer: int,
                     op: Callable[[int, int], Awaitable[object]]) -> float:
    """Operations per second with ``writers`` concurrent writers, each sequential."""
    async def writer(w: int) -> None:
        for i in range(per_writer):
            await op(w, i)

    start = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return writers * per_writer / (time.perf_counter() - start)


async def keyed_cost(db: Any, appends: int) -> None:
    """Per-append cost before (unsigned) and after (signed + anchor noted), same run."""
    signer = AuditSigner(service="executor",
                         key=SigningKey.generate(key_id_prefix="audit-executor"))

    async def nowhere(ticket: str, value: bytes) -> None:
        return None

    book = AnchorBook(service="executor", signer=signer, publish=nowhere)
    plain = AuditLog(db, collection="audit_keyed")
    keyed = AuditLog(db, collection="audit_keyed", signer=signer, on_append=book.note)
    await plain.ensure_indexes()
    before: list[float] = []
    after: list[float] = []
    rounds = 10
    for r in range(rounds):  # alternate, so both see the same store state
        before += await timed(appends // rounds, lambda i, r=r: plain.append(
            f"UNSIGNED-{r}", record_id=f"e{i}", kind="command", actor="executor:b",
            data=PAYLOAD))
        after += await timed(appends // rounds, lambda i, r=r: keyed.append(
            f"SIGNED-{r}", record_id=f"e{i}", kind="command", actor="executor:b",
            data=PAYLOAD))
    print("keyed records (one writer, sequential, same run):")
    unsigned = latency_summary("append, unsigned (before)", before)
    signed = latency_summary("append, signed + anchor noted (after)", after)
    print(f"  added per append: {(signed - unsigned) * 1e3:+.3f} ms "
          f"({(signed / unsigned - 1) * 100:+.1f} %)")
    n = 2000
    start = time.perf_counter()
    for i in range(n):
        signer.sign(f"intervention-audit-record:v1:{i:064d}".encode())
    sign_us = (time.perf_counter() - start) / n * 1e6
    records = await keyed.records("SIGNED-0")
    keys = {signer.key.key_id: ("executor", signer.key.verify_key)}
    start = time.perf_counter()
    for record in records:
        check_signature(AUDIT_SIGNATURE_CONTEXT + record.hash.encode(), record.key_id,
                        record.signature, keys)
    verify_us = (time.perf_counter() - start) / len(records) * 1e6
    print(f"  Ed25519 signature alone: {sign_us:.1f} us per record to sign, "
          f"{verify_us:.1f} us to verify")
    report_start = time.perf_counter()
    report = await verify_chain(db, collection="audit_keyed", keys=keys)
    took = time.perf_counter() - report_start
    unsigned_tickets = sum(1 for b in report.broken if "unsigned" in b.reason)
    print(f"  verify with keys: {report.records_checked} records in {took:.2f} s "
          f"({report.records_checked / took:.0f} records/s); {unsigned_tickets} unsigned "
          "ticket(s) named, as expected")


async def main(uri: str, appends: int, writers: int) -> None:
    db_name = f"bench_audit_{uuid.uuid4().hex[:8]}"
    clients: list[Client] = [AsyncMongoClient(uri) for _ in range(writers)]
    db = clients[0][db_name]
    try:
        info = await db.command("buildInfo")
        print(f"store {uri} version {info.get('version')} "
              f"({'FerretDB' if 'ferretdb' in str(info).lower() else 'MongoDB'}), db {db_name}")
        logs = [AuditLog(c[db_name], collection="audit") for c in clients]
        for log in logs:
            await log.ensure_indexes()
        plain = db["plain"]
        await plain.create_index([("ticket_id", 1), ("seq", 1)])  # a comparable index load
        # Warm-up: connections, collections and SQLite tables exist before timing.
        await logs[0].append("warm", record_id="w", kind="bench", actor="bench", data=PAYLOAD)
        await plain.insert_one({"ticket_id": "warm", "seq": 0, "data": PAYLOAD})

        print("sequential (one writer, one ticket):")
        chain = latency_summary("audit append", await timed(appends, lambda i: logs[0].append(
            "SEQ-1", record_id=f"evt-{i}", kind="command", actor="executor", data=PAYLOAD)))
        base = latency_summary("plain insert_one (baseline)", await timed(
            appends, lambda i: plain.insert_one({"ticket_id": "SEQ-1", "seq": i,
                                                 "data": dict(PAYLOAD)})))
        print(f"  ratio chain/baseline: {chain / base:.2f}x latency")

        await keyed_cost(clients[0][db_name], appends)

        per_writer = max(1, appends // writers)
        print(f"{writers} concurrent writers ({writers} clients), {per_writer} each:")
        before = sum(log.seq_conflicts for log in logs)
        one = await throughput(writers, per_writer, lambda w, i: logs[w].append(
            "ONE-1", record_id=f"w{w}-{i}", kind="command", actor=f"svc{w}", data=PAYLOAD))
        conflicts = sum(log.seq_conflicts for log in logs) - before
        many = await throughput(writers, per_writer, lambda w, i: logs[w].append(
            f"MANY-{w}", record_id=f"evt-{i}", kind="command", actor=f"svc{w}", data=PAYLOAD))
        base_rate = await throughput(writers, per_writer, lambda w, i: clients[w][db_name][
            "plain"].insert_one({"ticket_id": f"MANY-{w}", "seq": i, "data": dict(PAYLOAD)}))
        print(f"  audit, one ticket        {one:8.1f} appends/s  "
              f"({conflicts} seq conflicts retried, "
              f"{conflicts / (writers * per_writer):.2f} per append)")
        print(f"  audit, distinct tickets  {many:8.1f} appends/s")
        print(f"  plain insert_one         {base_rate:8.1f} inserts/s (baseline)")
        print(f"  ratio chain/baseline: one ticket {base_rate / one:.2f}x slower, "
              f"distinct tickets {base_rate / many:.2f}x slower")

        start = time.perf_counter()
        report = await verify_chain(db, collection="audit")
        took = time.perf_counter() - start
        print(f"verify all: ok={report.ok} tickets={report.tickets_checked} "
              f"records={report.records_checked} in {took:.2f} s "
              f"({report.records_checked / took:.0f} records/s)")
        if not report.ok:
            raise SystemExit(f"chain broken after the benchmark: {report.first_broken}")
    finally:
        await clients[0].drop_database(db_name)
        for c in clients:
            await c.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--appends", type=int, default=300, help="appends per measurement")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writers")
    args = parser.parse_args()
    asyncio.run(main(os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017"),
                     args.appends, args.writers))
