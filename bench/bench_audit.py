"""What an audit append costs: the per-ticket chain of before issue 17 (read the head,
insert, move the head; four services contending for one chain) against the per-(ticket,
producer) chains of now (one insert, head in memory), in the same run on the same store.

Printed, each before and after: latency of one append, store round trips per append
(counted with the services' own PyMongo command listener), four "services" appending to
one ticket at once (throughput, seq conflicts, round trips), the same after a history of
``--history`` records is in the store, and ``append_many`` (one round trip per batch). Then
what signing and anchoring add, and the verifier's speed.

Run from the repository root with the store up (``intervene up --no-services``)::

    python bench/bench_audit.py [--appends 300] [--writers 4] [--history 20000]

Uses ``MONGODB_URI`` (default ``mongodb://127.0.0.1:27017``) and a throwaway database that
is dropped afterwards. Each concurrent writer has its own client, standing in for a
separate service process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from services.runtime.audit import (
    AUDIT_SIGNATURE_CONTEXT,
    GENESIS_HASH,
    AuditEntry,
    AuditLog,
    AuditRecord,
    AuditSigner,
    check_signature,
    new_record,
    normalise_at,
    record_key,
    storable_data,
    verify_chain,
)
from services.runtime.audit_anchors import AnchorBook
from services.runtime.crypto import SigningKey
from services.runtime.store_metrics import StoreRoundTrips

Client = AsyncMongoClient[dict[str, Any]]
Db = AsyncDatabase[dict[str, Any]]
SERVICES = ("intake", "auth", "executor", "notifier")

# A typical executor step: the command, some redacted output, its status and duration.
PAYLOAD: dict[str, Any] = {
    "command": "systemctl restart ssh.service",
    "output": "Job for ssh.service finished.\n" * 8,
    "exit_status": 0,
    "duration_ms": 184.2,
}


class Identity:
    def redact(self, obj: Any) -> Any:
        return obj


class PerTicketChain:
    """The append of before issue 17, reimplemented as the baseline: one chain per ticket
    for every service; read the head (``<collection>_heads``), insert ``seq + 1``, move the
    head forward (``$max``); a refused insert re-reads the head, and when the head does not
    move, the records. Same record layout, hashing and indexes as it had."""

    def __init__(self, db: Db, collection: str) -> None:
        self.records = db[collection]
        self.heads = db[f"{collection}_heads"]
        self.seq_conflicts = 0
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    async def ensure_indexes(self) -> None:
        await self.records.create_index([("ticket_id", 1), ("seq", 1)], unique=True,
                                        name="ticket_seq_unique")
        await self.records.create_index([("ticket_id", 1), ("record_id", 1)], unique=True,
                                        name="ticket_record_id_unique")

    async def _head(self, ticket: str) -> tuple[int, str]:
        head = await self.heads.find_one({"_id": ticket})
        return (head["seq"], head["head"].partition(":")[2]) if head else (0, GENESIS_HASH)

    async def append(self, ticket: str, *, record_id: str, kind: str, actor: str,
                     data: dict[str, Any]) -> AuditRecord:
        at = normalise_at(datetime.now(UTC))
        stored = storable_data(data, Identity())
        lock = self._locks.get(ticket)
        if lock is None:
            lock = self._locks[ticket] = asyncio.Lock()
        async with lock:
            seq, prev = await self._head(ticket)
            for attempt in range(50):
                record = new_record(ticket_id=ticket, seq=seq + 1, prev_hash=prev,
                                    record_id=record_id, kind=kind, actor=actor, at=at,
                                    data=stored)
                doc = {**record.to_document(), "_id": record_key(ticket, None, record.seq)}
                doc.pop("producer")
                try:
                    await self.records.insert_one(doc)
                except DuplicateKeyError:
                    self.seq_conflicts += 1
                    head = await self._head(ticket)
                    if head[0] >= record.seq:
                        seq, prev = head
                        continue
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                    if attempt >= 2:  # the head is not moving: read the records' tail
                        tail = await self.records.find_one({"ticket_id": ticket},
                                                           sort=[("seq", -1)])
                        seq, prev = (tail["seq"], tail["hash"]) if tail else (0, GENESIS_HASH)
                    continue
                await self.heads.update_one(
                    {"_id": ticket},
                    {"$max": {"seq": record.seq, "head": f"{record.seq:020d}:{record.hash}"}},
                    upsert=True)
                return record
        raise RuntimeError(f"{ticket}: lost every race")


Appender = PerTicketChain | AuditLog


def latency_summary(label: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    mean = statistics.fmean(ordered)
    p50 = ordered[len(ordered) // 2]
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(f"  {label:<44} mean {mean * 1e3:6.2f} ms   p50 {p50 * 1e3:6.2f} ms   "
          f"p95 {p95 * 1e3:6.2f} ms   (n={len(ordered)})")
    return mean


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - start)
    return samples


class Trips:
    """Round trips of a phase, over all the benchmark's clients."""

    def __init__(self, listeners: Sequence[StoreRoundTrips]) -> None:
        self._listeners = listeners
        self._start = 0

    def __enter__(self) -> Trips:
        self._start = sum(t.total() for t in self._listeners)
        return self

    def __exit__(self, *exc: object) -> None:
        self.count = sum(t.total() for t in self._listeners) - self._start


class Sequential:
    """One variant of the sequential measurement: its samples and round trips."""

    def __init__(self, label: str, op: Callable[[int], Awaitable[object]]) -> None:
        self.label = label
        self.op = op
        self.samples: list[float] = []
        self.trips = 0
        self.done = 0

    def report(self) -> float:
        mean = latency_summary(self.label, self.samples)
        print(f"  {'':<44} {self.trips / self.done:.2f} round trips per append")
        return mean


async def interleaved(variants: Sequence[Sequential], appends: int,
                      trips: Sequence[StoreRoundTrips], rounds: int = 10) -> None:
    """Every variant's appends, alternating in rounds, so that the shared store's drift
    (other work on the machine) hits them alike."""
    for _ in range(rounds):
        for v in variants:
            first = v.done
            with Trips(trips) as counted:
                v.samples += await timed(appends // rounds, lambda i: v.op(first + i))  # noqa: B023 - awaited at once
            v.trips += counted.count
            v.done += appends // rounds


def appends_to(log: Appender, ticket: str) -> Callable[[int], Awaitable[object]]:
    return lambda i: log.append(ticket, record_id=f"evt-{i}", kind="command",
                                actor="executor", data=PAYLOAD)


async def contended(label: str, logs: Sequence[Appender], ticket: str, per_writer: int,
                    trips: Sequence[StoreRoundTrips]) -> None:
    """Every writer (a service: own client, own log) appends to one ticket at once."""
    before = sum(log.seq_conflicts for log in logs)

    async def writer(w: int) -> None:
        for i in range(per_writer):
            await logs[w].append(ticket, record_id=f"{SERVICES[w % 4]}-{w}-{i}", kind="event",
                                 actor=f"{SERVICES[w % 4]}:w{w}", data=PAYLOAD)

    with Trips(trips) as counted:
        start = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(len(logs))))
        took = time.perf_counter() - start
    n = len(logs) * per_writer
    conflicts = sum(log.seq_conflicts for log in logs) - before
    print(f"  {label:<44} {n / took:8.1f} appends/s   {conflicts / n:5.2f} seq conflicts "
          f"per append   {counted.count / n:5.2f} round trips per append")


async def fill_history(db: Db, collection: str, records: int, *, per_ticket: bool) -> None:
    """``records`` finished tickets' worth of audit records (5 per ticket) and, for the
    per-ticket chain, their head documents: what months of operation leave behind."""
    tickets = records // 5
    batch: list[dict[str, Any]] = []
    heads: list[dict[str, Any]] = []
    for t in range(tickets):
        for seq in range(1, 6):
            producer = None if per_ticket else SERVICES[seq % 4]
            batch.append({"_id": record_key(f"OLD-{t}", producer, seq), "ticket_id": f"OLD-{t}",
                          "seq": seq, "record_id": f"r{seq}", "kind": "event",
                          "actor": producer or "intake", "data": PAYLOAD,
                          "prev_hash": GENESIS_HASH, "hash": GENESIS_HASH,
                          **({} if producer is None else {"producer": producer})})
        if per_ticket:
            heads.append({"_id": f"OLD-{t}", "seq": 5, "head": f"{5:020d}:{GENESIS_HASH}"})
        if len(batch) >= 1000:
            await db[collection].insert_many(batch)
            batch = []
    if batch:
        await db[collection].insert_many(batch)
    for i in range(0, len(heads), 1000):
        await db[f"{collection}_heads"].insert_many(heads[i:i + 1000])


async def keyed_cost(db: Db, appends: int) -> None:
    """Per-append cost unsigned and signed + anchor noted, alternating in rounds."""
    signer = AuditSigner(service="executor",
                         key=SigningKey.generate(key_id_prefix="audit-executor"))

    async def nowhere(key: str, value: bytes) -> None:
        return None

    book = AnchorBook(service="executor", signer=signer, publish=nowhere)
    plain = AuditLog(db, collection="audit_keyed")
    keyed = AuditLog(db, collection="audit_keyed", signer=signer, on_append=book.note)
    await plain.ensure_indexes()
    unsigned: list[float] = []
    signed: list[float] = []
    rounds = 10

    def on(log: AuditLog, ticket: str) -> Callable[[int], Awaitable[AuditRecord]]:
        return lambda i: log.append(ticket, record_id=f"e{i}", kind="command",
                                    actor="executor:b", data=PAYLOAD)

    for r in range(rounds):  # alternate, so both see the same store state
        unsigned += await timed(appends // rounds, on(plain, f"UNSIGNED-{r}"))
        signed += await timed(appends // rounds, on(keyed, f"SIGNED-{r}"))
    print("keyed records (one writer, sequential, same run):")
    mean_unsigned = latency_summary("append, unsigned", unsigned)
    mean_signed = latency_summary("append, signed + anchor noted", signed)
    print(f"  added per append: {(mean_signed - mean_unsigned) * 1e3:+.3f} ms")
    records = await keyed.records("SIGNED-0")
    keys = {signer.key.key_id: ("executor", signer.key.verify_key)}
    start = time.perf_counter()
    for record in records:
        check_signature(AUDIT_SIGNATURE_CONTEXT + record.hash.encode(), record.key_id,
                        record.signature, keys)
    verify_us = (time.perf_counter() - start) / len(records) * 1e6
    print(f"  Ed25519 verify alone: {verify_us:.1f} us per record")


async def main(uri: str, appends: int, writers: int, history: int) -> None:
    db_name = f"bench_audit_{uuid.uuid4().hex[:8]}"
    listeners = [StoreRoundTrips() for _ in range(writers)]
    clients: list[Client] = [AsyncMongoClient(uri, event_listeners=[t]) for t in listeners]
    dbs = [c[db_name] for c in clients]
    db = dbs[0]
    try:
        info = await db.command("buildInfo")
        print(f"store {uri} version {info.get('version')} "
              f"({'FerretDB' if 'ferretdb' in str(info).lower() else 'MongoDB'}), db {db_name}")
        olds = [PerTicketChain(d, "audit_old") for d in dbs]
        news = [AuditLog(d, collection="audit", redactor=Identity()) for d in dbs]
        await olds[0].ensure_indexes()
        for log in news:  # index set-up is not part of any append measured below
            await log.ensure_indexes()
        plain = db["plain"]
        # Warm-up: connections, collections and SQLite tables exist before timing.
        await olds[0].append("warm", record_id="w", kind="bench", actor="bench", data=PAYLOAD)
        await news[0].append("warm", record_id="w", kind="bench", actor="bench", data=PAYLOAD)
        await plain.insert_one({"ticket_id": "warm", "data": PAYLOAD})

        variants = [
            Sequential("before: per-ticket chain (head, insert, head)",
                       appends_to(olds[0], "SEQ-1")),
            Sequential("after: per-producer chain (one insert)", appends_to(news[0], "SEQ-1")),
            Sequential("plain insert_one (floor)", lambda i: plain.insert_one(
                {"ticket_id": "SEQ-1", "seq": i, "data": dict(PAYLOAD)})),
        ]
        if history:
            await fill_history(db, "hist_old", history, per_ticket=True)
            await fill_history(db, "hist_new", history, per_ticket=False)
            new_h = AuditLog(db, collection="hist_new", redactor=Identity())
            await new_h.ensure_indexes()
            variants += [
                Sequential(f"before, {history} records of history",
                           appends_to(PerTicketChain(db, "hist_old"), "NEW-1")),
                Sequential(f"after, {history} records of history", appends_to(new_h, "NEW-1")),
            ]
        print(f"one writer, one ticket, sequential appends (variants alternating in rounds; "
              f"history: {history // 5} finished tickets, 5 records each):")
        await interleaved(variants, appends, listeners)
        means = [v.report() for v in variants]
        print(f"  after/before latency {means[1] / means[0]:.2f}x; "
              f"after/floor {means[1] / means[2]:.2f}x")
        if history:
            print(f"  with history, of its fresh-store latency: before {means[3] / means[0]:.2f}x,"
                  f" after {means[4] / means[1]:.2f}x")

        per_writer = max(1, appends // writers)
        print(f"{writers} services (own clients) appending to ONE ticket at once, "
              f"{per_writer} each:")
        await contended("before: one chain for the ticket", olds, "ONE-1", per_writer,
                        listeners)
        await contended("after: one chain per producer", news, "ONE-1", per_writer, listeners)

        batch = 10
        print(f"append_many: batches of {batch} records over {batch} tickets (one writer):")
        with Trips(listeners) as counted:
            samples = await timed(appends // batch, lambda i: news[0].append_many([
                AuditEntry(ticket_id=f"BATCH-{t}", record_id=f"b{i}", kind="event",
                           actor="notifier", data=PAYLOAD) for t in range(batch)]))
        mean = statistics.fmean(samples)
        print(f"  {'append_many(10)':<44} mean {mean * 1e3:6.2f} ms per batch = "
              f"{mean / batch * 1e3:.2f} ms per record; "
              f"{counted.count / (len(samples) * batch):.2f} round trips per record")

        await keyed_cost(db, appends)

        start = time.perf_counter()
        report = await verify_chain(db, collection="audit")
        took = time.perf_counter() - start
        print(f"verify all: ok={report.ok} tickets={report.tickets_checked} "
              f"chains={report.chains_checked} records={report.records_checked} in {took:.2f} s "
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
    parser.add_argument("--history", type=int, default=20000,
                        help="records of finished tickets put in the store for the last "
                             "measurement (0: skip)")
    args = parser.parse_args()
    asyncio.run(main(os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017"),
                     args.appends, args.writers, args.history))
