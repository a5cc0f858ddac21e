"""N tickets through the whole pipeline, against the raw floor of four plain Kafka hops.

Run as root from the repository root, with Kafka and FerretDB up (``intervene up
--no-services``; started here and stopped again when nothing answers)::

    python bench/bench_pipeline.py [--tickets 200] [--hosts 4] [--ssh-hosts 8]

**Pipeline.** The four services run as real processes (``python -m services.<name>``) on
their own topic prefix and database. Tickets are sealed and published on
``helpdesk.ticket-requests`` (as a helpdesk integration does), so a ticket's completion
crosses four consumer hops: intake -> auth -> executor -> notifier. The executor runs a
no-op diagnostics runbook (``bench/noop_executor.py``): everything real — verdict
signature check, claim, SSH probe and access decision against one of ``--hosts`` real sshd
targets, engine, journal, outbox, audit chain — except the runbook's commands.
Timestamps are the Kafka create times of the events, against the time each request was
published: *initial response* is the customer's acknowledgement (TicketUpdated), *completed*
the InterventionCompleted, *told* the customer's completion TicketUpdated.

**Raw floor.** The same number of messages of the same size, published the same way and
relayed through four plain aiokafka consumer/producer hops on the same broker (idempotent
producers, one message at a time per relay, like a service's handler): the cost of Kafka
alone, to which the pipeline's *told* latency and throughput compare.

**SSH.** Diagnostics throughput of the real runbook against ``--ssh-hosts`` sshd targets,
measured by ``bench_executor.py``.

The table ends with the machine's core count. Everything started is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from devstack import localstack  # noqa: E402
from devstack.demo import targets  # noqa: E402
from devstack.demo.launch import (  # noqa: E402
    service_ports,
    start_services,
    stop_services,
    wait_healthy,
)
from devstack.demo.operator import intervene  # noqa: E402
from devstack.demo.progress import BusRecorder  # noqa: E402
from schemas.registry import parse_event  # noqa: E402
from schemas.topics import HELPDESK_REQUESTS, TopicSpec  # noqa: E402
from services.intake.sealing import seal_request  # noqa: E402
from services.intake.signing import Signer  # noqa: E402
from services.runtime.kafka_admin import (  # noqa: E402
    delete_topics_with_prefix,
    ensure_topics,
)
from services.runtime.keys import init_keys, load_sealing_public  # noqa: E402

HOPS = 4


@dataclass
class Percentiles:
    values: list[float] = field(default_factory=list)

    def at(self, q: float) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def text(self) -> str:
        return (f"{self.at(0.5) * 1000:7.0f} {self.at(0.95) * 1000:7.0f} "
                f"{self.at(0.99) * 1000:7.0f}")


def metrics_text(service: Any) -> str:
    """The service's /metrics page (Prometheus text)."""
    import urllib.request

    url = f"http://127.0.0.1:{service.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def store_round_trips(services: Sequence[Any],
                      series: str = "intervention_store_round_trips_total"
                      ) -> dict[str, dict[str, float]]:
    """Each service's ``intervention.store.round_trips`` counter (or, with ``series``
    ``db_client_operation_duration_seconds_sum``, the seconds those commands took), from
    its /metrics, by ``operation collection`` (services.runtime.store_metrics)."""
    counts: dict[str, dict[str, float]] = {}
    for service in services:
        mine = counts.setdefault(service.name, {})
        for line in metrics_text(service).splitlines():
            if not line.startswith(series + "{"):
                continue
            labels, value = line.rsplit(" ", 1)
            attrs = dict(part.split("=", 1) for part in
                         labels[labels.index("{") + 1:labels.rindex("}")].split(","))
            what = (f"{attrs.get('db_operation_name', '?').strip(chr(34))} "
                    f"{attrs.get('db_collection_name', '?').strip(chr(34))}")
            mine[what] = mine.get(what, 0.0) + float(value)
    return counts


BENCH_CPU, MACHINE_CPU, TARGETS_CPU = "this benchmark", "machine", "targets"


def cpu_seconds(services: Sequence[Any], hosts: Sequence[Any] = (),
                targets_cpu: Any = None) -> dict[str, float]:
    """CPU seconds used so far (user + system, from /proc) by each service process, by the
    local stack's Kafka and FerretDB when this machine runs them, and, as ``targets``, by
    the sshd targets and all they start (``bench_executor.SshdCpu``'s cgroup: logins,
    sessions, the sudo that checks the password again, shells). Without that cgroup, the
    daemons' reaped children only: a sudo orphaned when its session closes is reaped by
    init and missed."""
    pids = {service.name: service.process.pid for service in services}
    for comp in localstack.infrastructure():
        record = comp.record()
        if record is not None:
            pids[comp.name] = record.pid
    ticks = os.sysconf("SC_CLK_TCK")

    def stat(pid: int) -> list[str] | None:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None

    used: dict[str, float] = {}
    for name, pid in pids.items():
        fields = stat(pid)
        if fields is not None:
            used[name] = (int(fields[11]) + int(fields[12])) / ticks
    exact = targets_cpu.seconds() if targets_cpu is not None else None
    if exact is not None:
        used[TARGETS_CPU] = exact
    else:
        for host in hosts:
            fields = stat(host.pid) if host.pid else None
            if fields is not None:
                used[TARGETS_CPU] = used.get(TARGETS_CPU, 0.0) + (
                    int(fields[13]) + int(fields[14])) / ticks
    own = os.times()  # the benchmark itself: the publisher and the bus recorder
    used[BENCH_CPU] = own.user + own.system
    # The whole machine's busy time (all but idle and I/O wait), whoever spent it: what the
    # processes above do not account for is the kernel's own work (loopback networking,
    # softirqs, writeback) and anything else running.
    times = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    used[MACHINE_CPU] = (sum(times) - times[3] - times[4]) / ticks
    return used


def cpu_line(pipeline: Result, tickets: int, cores: int) -> str:
    """CPU per ticket by process, and the machine's: how busy its cores were over the burst,
    and how much of that no listed process accounts for."""
    per = {name: used / tickets * 1000 for name, used in pipeline.cpu.items()}
    machine = per.pop(MACHINE_CPU, None)
    line = "CPU per ticket (ms): " + ", ".join(
        f"{name} {ms:.1f}" for name, ms in sorted(per.items(), key=lambda item: -item[1]))
    if machine is not None and pipeline.throughput > 0:
        busy = pipeline.cpu[MACHINE_CPU] / (tickets / pipeline.throughput * cores)
        line += (f"; the machine {machine:.1f} ({busy:.0%} of its {cores} cores busy over the "
                 f"burst; kernel and unlisted {machine - sum(per.values()):.1f})")
    return line


@contextlib.contextmanager
def profiled(services: Sequence[Any], directory: Path | None, seconds: float) -> Iterator[None]:
    """py-spy records each service process for the burst (``--profile DIR``): collapsed
    stacks in ``DIR/<service>.txt``, for a flame graph or :func:`hottest`."""
    if directory is None:
        yield
        return
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    spies = [subprocess.Popen(
        ["py-spy", "record", "--pid", str(s.process.pid), "--format", "raw", "--nonblocking",
         "--duration", str(int(seconds)), "--rate", "50",
         "--output", str(directory / f"{s.name}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for s in services]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
        for spy in spies:
            spy.wait(60)


def hottest(path: Path, top: int = 6) -> list[tuple[str, float]]:
    """The project's functions most often on the stack (inclusive share of samples) in a
    py-spy raw profile: frames of the event loop, runpy and site-packages are left out, so
    what remains is where the service's own code spends its time (library calls it makes
    count towards the project frame that made them)."""
    totals: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples += int(count)
        for frame in set(stack.split(";")):
            if not any(part in frame for part in ("services/", "schemas/", "devstack/")):
                continue
            if "__main__.py" in frame or frame.startswith("run_service "):
                continue  # on every stack: the process itself
            totals[frame] = totals.get(frame, 0) + int(count)
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return [(frame, n / samples) for frame, n in ranked] if samples else []


def round_trip_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
                     ) -> dict[str, dict[str, float]]:
    return {name: {what: n - before.get(name, {}).get(what, 0.0)
                   for what, n in ops.items() if n - before.get(name, {}).get(what, 0.0) > 0}
            for name, ops in after.items()}


@dataclass
class Result:
    throughput: float
    initial: Percentiles
    completed: Percentiles
    told: Percentiles
    # submit -> each event of the pipeline, in order: where the time goes.
    stages: dict[str, Percentiles] = field(default_factory=dict)
    # Store round trips the burst cost, per service and "operation collection".
    round_trips: dict[str, dict[str, float]] = field(default_factory=dict)
    # Seconds those commands took (client side: the wire and the store), the same way.
    store_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    # Each service's mean event-loop lag during the burst, in seconds.
    loop_lag: dict[str, float] = field(default_factory=dict)
    # CPU seconds the burst cost, per process (services, Kafka, FerretDB).
    cpu: dict[str, float] = field(default_factory=dict)


STORE_SECONDS = "db_client_operation_duration_seconds_sum"
LAG = ("intervention_event_loop_lag_seconds_sum", "intervention_event_loop_lag_seconds_count")


def loop_lag(services: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Each service's event-loop lag histogram sum and count (services.runtime.loop_lag)."""
    found: dict[str, dict[str, float]] = {}
    for service in services:
        for line in metrics_text(service).splitlines():
            name, _, value = line.partition(" ")
            series = name.split("{")[0]
            if series in LAG:
                mine = found.setdefault(service.name, {})
                mine[series] = mine.get(series, 0.0) + float(value)
    return found


STAGES = ("TicketSubmitted:", "AuthorizationVerified:", "InterventionStarted:",
          "InterventionCompleted:", "TicketUpdated:completion")


# --- real parts -------------------------------------------------------------------------


@contextlib.contextmanager
def real_parts() -> Iterator[tuple[str, str]]:
    """Kafka and FerretDB: from the environment, or the local stack (started if needed)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("MONGODB_URI"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["MONGODB_URI"]
        return
    started = []
    try:
        for comp in localstack.infrastructure():
            if comp.record() is None and not comp.ready():
                print(comp.start())
                started.append(comp)
        yield localstack.kafka_bootstrap(), localstack.mongodb_uri()
    finally:
        for comp in reversed(started):
            print(comp.stop())


# --- the pipeline ---------------------------------------------------------------------------


def request(ticket: str, server: str, account: str, user: targets.ThrowawayUser,
            private_key: str | None = None
            ) -> dict[str, Any]:
    signed = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    return {
        "ticket_id": ticket, "revision": 1, "account_id": account,
        "department": "technical_issues", "channel": "api", "language": "en",
        "server": {"service_id": server}, "category": "diagnostics",
        "description": "Benchmark ticket: please run a health check on this server.",
        "credentials": ({"username": user.name, "private_key": private_key} if private_key
                        else {"username": user.name, "password": user.password}),
        "authorization": {
            "statement": "I authorize the provider's support to perform OS-level "
                         "intervention on this server.",
            "accepts_backup_responsibility": True, "accepts_service_interruption": True,
            "accepts_data_loss_disclaimer": True, "signed_by": "Bench Mark",
            "signed_at": signed},
    }


async def publish_all(bootstrap: str, topic: str, messages: Sequence[tuple[str, bytes]],
                      rate: float | None = None, signer: Signer | None = None
                      ) -> dict[str, float]:
    """Publish keyed messages — all at once, or ``rate`` per second — and return the send
    time of each; signed as the helpdesk's integration when ``signer`` is given."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    try:
        futures = []
        began = time.monotonic()
        for n, (key, value) in enumerate(messages):
            if rate:
                await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
            sent[key] = time.time()
            headers = signer.kafka_headers(HELPDESK_REQUESTS, value) if signer else None
            futures.append(await producer.send(topic, value, key=key.encode(),
                                               headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def run_pipeline(bootstrap: str, prefix: str, sealed: list[dict[str, Any]],
                       timeout: float, rate: float | None = None, *, signer: Signer) -> Result:
    recorder = BusRecorder(bootstrap, prefix, from_beginning=False)
    await recorder.start()
    try:
        tickets = [str(r["ticket_id"]) for r in sealed]
        sent = await publish_all(bootstrap, f"{prefix}helpdesk.ticket-requests",
                                 [(str(r["ticket_id"]), json.dumps(r).encode())
                                  for r in sealed], rate, signer)
        stalled = await recorder.wait_for(tickets, timeout=timeout)
        if stalled:
            raise RuntimeError(f"{len(stalled)} tickets did not settle, e.g. {stalled[0]}: "
                               f"{recorder.ticket(stalled[0]).label()}")
        for ticket in tickets:
            progress = recorder.ticket(ticket)
            if progress.outcome != "resolved":
                raise RuntimeError(f"{ticket}: {progress.label()}")
    finally:
        await recorder.stop()
    first: dict[tuple[str, str], float] = {}
    for record in recorder.records:
        if record.key is None or record.topic.endswith(".dlq"):
            continue
        ticket = record.key.decode()
        if ticket not in sent or not record.topic.startswith("intervention."):
            continue
        event = parse_event(record.value)
        what = f"{event.event_type}:{getattr(event, 'kind', '')}"
        first.setdefault((ticket, what), record.timestamp_ms / 1000)
    result = Result(throughput=0.0, initial=Percentiles(), completed=Percentiles(),
                    told=Percentiles())
    done_at = []
    for ticket, at in sent.items():
        result.initial.values.append(first[(ticket, "TicketUpdated:acknowledgement")] - at)
        result.completed.values.append(first[(ticket, "InterventionCompleted:")] - at)
        told = first[(ticket, "TicketUpdated:completion")]
        result.told.values.append(told - at)
        done_at.append(told)
        for stage in STAGES:
            result.stages.setdefault(stage, Percentiles()).values.append(
                first[(ticket, stage)] - at)
    result.throughput = len(sent) / (max(done_at) - min(sent.values()))
    return result


# --- history ---------------------------------------------------------------------------------

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OBJECT_ID = re.compile(rb"\x07_id\x00.{12}", re.DOTALL)
_HISTORY_NS = uuid.UUID("0b7c3f43-51d5-4a6c-9a35-1f0c8e0b9d11")


async def notifier_archived(mongodb_uri: str, database: str, ticket_prefix: str,
                            timeout: float = 60.0) -> None:
    """Wait until the notifier archived the burst's finished tickets (its live facts hold
    in-flight tickets only, services/notifier/archive.py)."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    live = client[database]["notifier_ticket_facts"]
    deadline = time.monotonic() + timeout
    try:
        while await live.count_documents({"ticket_id": {"$regex": f"^{ticket_prefix}"}}):
            if time.monotonic() > deadline:
                print("history: the notifier has not archived the burst yet; copying anyway",
                      flush=True)
                return
            await asyncio.sleep(1.0)
    finally:
        await client.close()


async def seed_history(mongodb_uri: str, database: str, ticket_prefix: str, burst: int,
                       tickets: int) -> int:
    """Make the store look as if ``tickets`` more tickets had been worked through: every
    document the burst's (finished) tickets left in any collection is copied with new
    ticket ids, event ids and object ids, in bulk. Documents that name no burst ticket
    (inventory, integrations, keys, markers) are left alone.

    Copies are made on the BSON bytes, with replacements of the same length (so every
    length prefix stays right): ``<prefix>t00017`` becomes ``<prefix>h<number>``, each
    UUID string another, each ObjectId ``_id`` a new one."""
    import bson
    from bson import ObjectId
    from bson.raw_bson import RawBSONDocument
    from pymongo import AsyncMongoClient
    from pymongo.errors import BulkWriteError

    ticket = re.compile(re.escape(ticket_prefix.encode()) + rb"(\d{5})")
    history = ticket_prefix[:-1].encode() + b"h"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    added = 0
    try:
        db = client[database]
        templates: dict[str, list[bytes]] = {}
        for name in await db.list_collection_names():
            raws = [bson.encode(d) for d in await db[name].find({}).to_list()]
            templates[name] = [r for r in raws if ticket_prefix.encode() in r]
        for k in range(-(-tickets // burst)):
            for name, raws in templates.items():
                docs = []
                for raw in raws:
                    raw = ticket.sub(lambda m, k=k: history + b"%05d" % (
                        k * burst + int(m[1])), raw)
                    raw = _UUID.sub(lambda m, k=k: str(uuid.uuid5(
                        _HISTORY_NS, f"{k}:{m[0].decode()}")).encode(), raw)
                    raw = _OBJECT_ID.sub(lambda _m: b"\x07_id\x00" + ObjectId().binary, raw)
                    docs.append(RawBSONDocument(raw))
                if not docs:
                    continue
                try:
                    await db[name].insert_many(docs, ordered=False)
                    # Counted from what was sent: PyMongo lists no inserted ids for raw
                    # BSON documents (the count printed 0 while the copies were there).
                    added += len(docs)
                except BulkWriteError as exc:
                    added += len(docs) - len(exc.details.get("writeErrors", []))
    finally:
        await client.close()
    return added


# --- the raw floor ------------------------------------------------------------------------------


async def relay(bootstrap: str, source: str, target: str, group: str, count: int) -> None:
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                linger_ms=0)
    await consumer.start()
    await producer.start()
    try:
        relayed = 0
        while relayed < count:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    await producer.send_and_wait(target, record.value, key=record.key)
                    relayed += 1
    finally:
        await producer.stop()
        await consumer.stop()


async def run_floor(bootstrap: str, prefix: str, messages: list[tuple[str, bytes]],
                    timeout: float, rate: float | None = None) -> Result:
    topics = [f"{prefix}raw.hop{i}" for i in range(HOPS + 1)]
    await ensure_topics(bootstrap, specs=[TopicSpec(name=t) for t in topics])
    count = len(messages)
    sink = AIOKafkaConsumer(topics[-1], bootstrap_servers=bootstrap,
                            group_id=f"{prefix}raw.sink", auto_offset_reset="earliest")
    await sink.start()
    relays = [asyncio.create_task(relay(bootstrap, topics[i], topics[i + 1],
                                        f"{prefix}raw.relay{i}", count)) for i in range(HOPS)]
    try:
        await asyncio.sleep(3)  # let the relays join their groups, as the services had
        sent = await publish_all(bootstrap, topics[0], messages, rate)
        arrived: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(arrived) < count and time.monotonic() < deadline:
            batch = await sink.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    arrived.setdefault(record.key.decode(), record.timestamp / 1000)
        if len(arrived) < count:
            raise RuntimeError(f"raw floor: {len(arrived)} of {count} arrived")
    finally:
        # Each relay stops by itself once it has relayed every message; cancelling one
        # while it leaves its group would leave its producer open.
        _done, late = await asyncio.wait(relays, timeout=15)
        for task in late:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        await sink.stop()
    latency = Percentiles([arrived[k] - sent[k] for k in sent])
    return Result(throughput=count / (max(arrived.values()) - min(sent.values())),
                  initial=Percentiles(), completed=Percentiles(), told=latency)


# --- the run --------------------------------------------------------------------------------------


def main() -> None:
    # Relays and the recorder outlive their topics by a moment at the end: not news.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=4, help="sshd targets for the pipeline")
    parser.add_argument("--ssh-hosts", type=int, default=8,
                        help="sshd targets for the SSH diagnostics throughput (0: skip)")
    parser.add_argument("--rate", type=float, default=None, metavar="PER_S",
                        help="publish this many tickets per second (default: all at once, "
                             "which measures throughput; a sustainable rate measures latency "
                             "without queueing)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--account", choices=("password", "key"), default="password",
                        help="the customer's credential in each ticket: the throwaway "
                             "account's password (sshd checks its yescrypt hash at every "
                             "login) or an ed25519 private key")
    parser.add_argument("--password-hash", dest="hash_method", choices=("default", "sha512"),
                        default="default",
                        help="the throwaway account's password hash on the targets: this "
                             "machine's default (yescrypt on Debian 12) or SHA-512-crypt (the "
                             "default of RHEL 8 and Ubuntu 20.04 servers)")
    parser.add_argument("--executor-concurrency", type=int, default=16, metavar="N",
                        help="EXECUTOR_CONCURRENCY: interventions one executor runs at once")
    parser.add_argument("--executor-lanes", type=int, default=None, metavar="N",
                        help="CONSUMER_LANES for the executor alone (default: the runtime's)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record each service with py-spy during the burst into DIR and "
                             "print its hottest functions")
    parser.add_argument("--history", type=int, default=20_000, metavar="TICKETS",
                        help="after the burst, add this many finished tickets' documents to "
                             "the store and run the burst again (0: skip)")
    args = parser.parse_args()
    reason = targets.available()
    if reason is not None:
        sys.exit(f"cannot start sshd targets: {reason}")
    with real_parts() as (bootstrap, mongodb_uri):
        asyncio.run(bench(args, bootstrap, mongodb_uri))


async def bench(args: argparse.Namespace, bootstrap: str, mongodb_uri: str) -> None:
    run = uuid.uuid4().hex[:6]
    prefix, database = f"bench{run}.", f"bench_{run}"
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{run}-"))
    import bench_executor

    user = targets.ThrowawayUser.create(sudo=True, prefix="ivb")
    if args.hash_method == "sha512":
        user.set_password(user.password, crypt_method="SHA512")
    targets_cpu = bench_executor.SshdCpu()
    private_key: str | None = None
    if args.account == "key":
        credential = bench_executor.key_account(user)
        private_key = credential.private_key.get_secret_value() if hasattr(
            credential.private_key, "get_secret_value") else str(credential.private_key)
    hosts: list[targets.Sshd] = []
    services: list[Any] = []
    try:
        for _ in range(args.hosts):
            hosts.append(targets.Sshd.start([user.name], listen=targets.loopback_address(),
                                            prefix="ivb"))
            if hosts[-1].pid is not None:
                targets_cpu.adopt(hosts[-1].pid)
        await ensure_topics(bootstrap, prefix=prefix)
        keys = init_keys(workdir / "keys")
        account = f"ACC-BENCH-{run}"
        inventory = workdir / "inventory.json"
        inventory.write_text(json.dumps([{
            "service_id": f"SRV-BENCH-{run}-{n}", "service_name": f"bench-{n}",
            "ips": [h.host], "account_id": account, "type": "dedicated", "os_family": "linux",
            "ipkvm": False, "rescue": False, "ssh_port": h.port,
            "ssh_host_key": h.host_key_line, "datacenter": "bench"} for n, h in
            enumerate(hosts)]))
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
            "MONGODB_URI": mongodb_uri, "MONGODB_DATABASE": database,
            "INTERVENTION_KEYS_DIR": str(keys.directory),
            # The benchmark sends from one account to a few servers: no rate limit, and no
            # "repeated interventions" review (both are measured elsewhere).
            "INTAKE_RATE_LIMIT_PER_MINUTE": "1000000", "INTAKE_RATE_LIMIT_BURST": "1000000",
            "AUTH_REVIEW_THRESHOLD": "1000",
            "EXECUTOR_CONCURRENCY": str(args.executor_concurrency),
            # Finished tickets leave the notifier's live facts within seconds (60 s in
            # production), so the history copied in below is archived history, as in a
            # store that has run for months, not a backlog the archiver would still move.
            "NOTIFIER_ARCHIVE_AFTER_S": "2",
        }
        done = intervene(["servers", "import", str(inventory)], env)
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        # The benchmark's helpdesk: a registered integration whose portal customer is the
        # account, as a provider sets one up.
        added = intervene(["integrations", "add", f"bench-{run}"], env)
        if added.returncode != 0:
            raise RuntimeError(added.stdout + added.stderr)
        accounts = workdir / "accounts.csv"
        accounts.write_text(f"customer,account_id\nportal:{account},{account}\n")
        done = intervene(["accounts", "import", str(accounts), "--integration", f"bench-{run}"],
                         env)
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        signer = Signer(integration=f"bench-{run}", secret=added.stdout.strip().splitlines()[-1],
                        customer=f"portal:{account}")
        services = start_services(
            env, log_dir=workdir / "logs", ports=service_ports(),
            commands={"executor": [
                *(["env", f"CONSUMER_LANES={args.executor_lanes}"]
                  if args.executor_lanes else []),
                sys.executable, str(ROOT / "bench" / "noop_executor.py")]})
        await asyncio.to_thread(wait_healthy, services)
        recipient = load_sealing_public(keys.directory / "executor-sealing.pub")

        def sealed(count: int, label: str) -> list[dict[str, Any]]:
            return [seal_request(request(f"BENCH-{run}-{label}{n:05d}",
                                         f"SRV-BENCH-{run}-{n % len(hosts)}", account, user,
                                         private_key),
                                 recipient=recipient) for n in range(count)]

        print(f"warming up ({len(hosts)} tickets) ...", flush=True)
        await run_pipeline(bootstrap, prefix, sealed(len(hosts), "w"), args.timeout,
                           signer=signer)
        tickets = sealed(args.tickets, "t")
        size = statistics.mean(len(json.dumps(t)) for t in tickets)
        print(f"pipeline: {args.tickets} tickets ...", flush=True)
        before = await asyncio.to_thread(store_round_trips, services)
        seconds_before = await asyncio.to_thread(store_round_trips, services, STORE_SECONDS)
        lag_before = await asyncio.to_thread(loop_lag, services)
        cpu_before = cpu_seconds(services, hosts, targets_cpu)
        with profiled(services, args.profile, args.timeout):
            pipeline = await run_pipeline(bootstrap, prefix, tickets, args.timeout,
                                          args.rate, signer=signer)
        pipeline.cpu = {name: used - cpu_before.get(name, 0.0)
                        for name, used in cpu_seconds(services, hosts, targets_cpu).items()}
        pipeline.round_trips = round_trip_delta(
            before, await asyncio.to_thread(store_round_trips, services))
        pipeline.store_seconds = round_trip_delta(
            seconds_before, await asyncio.to_thread(store_round_trips, services, STORE_SECONDS))
        lag_after = await asyncio.to_thread(loop_lag, services)
        pipeline.loop_lag = {
            name: (after.get(LAG[0], 0.0) - lag_before.get(name, {}).get(LAG[0], 0.0))
            / max(1.0, after.get(LAG[1], 0.0) - lag_before.get(name, {}).get(LAG[1], 0.0))
            for name, after in lag_after.items()}
        aged: Result | None = None
        if args.history:
            print(f"history: {args.history} finished tickets into the same store ...",
                  flush=True)
            await notifier_archived(mongodb_uri, database, f"BENCH-{run}-t")
            seeded = await seed_history(mongodb_uri, database, f"BENCH-{run}-t",
                                        args.tickets, args.history)
            print(f"history: {seeded} documents added", flush=True)
            print(f"pipeline after history: {args.tickets} tickets ...", flush=True)
            before = await asyncio.to_thread(store_round_trips, services)
            aged = await run_pipeline(bootstrap, prefix, sealed(args.tickets, "u"),
                                      args.timeout, args.rate, signer=signer)
            aged.round_trips = round_trip_delta(
                before, await asyncio.to_thread(store_round_trips, services))
        print(f"raw floor: {args.tickets} messages through {HOPS} aiokafka hops ...",
              flush=True)
        floor = await run_floor(bootstrap, prefix, [(str(t["ticket_id"]),
                                                     json.dumps(t).encode()) for t in tickets],
                                args.timeout, args.rate)
    finally:
        stop_services(services)
        for sshd in hosts:
            sshd.stop()
        targets_cpu.remove()
        user.remove()
        await delete_topics_with_prefix(bootstrap, prefix)
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
        await client.drop_database(database)
        await client.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ssh = await ssh_throughput(args.ssh_hosts) if args.ssh_hosts else None
    table(args, pipeline, floor, size, ssh, aged)


async def ssh_throughput(count: int) -> tuple[float, float, float]:
    """(hosts/s sequential, hosts/s at concurrency 8, p50 s per host) from bench_executor."""
    import bench_executor

    user = targets.ThrowawayUser.create(sudo=True, prefix="ivb")
    hosts: list[targets.Sshd] = []
    try:
        for _ in range(count):
            hosts.append(targets.Sshd.start([user.name]))
        await bench_executor.measure(hosts[:1], user, 1, 1)  # warm-up
        seq = await bench_executor.measure(hosts, user, 1, 1)
        par = await bench_executor.measure(hosts, user, 8, 2)
        return (len(seq.latencies) / seq.elapsed, len(par.latencies) / par.elapsed,
                statistics.median(par.latencies))
    finally:
        for sshd in hosts:
            sshd.stop()
        user.remove()


def table(args: argparse.Namespace, pipeline: Result, floor: Result, size: float,
          ssh: tuple[float, float, float] | None, aged: Result | None = None) -> None:
    cores = os.cpu_count()
    print()
    arrival = f"{args.rate:g}/s" if args.rate else "all at once"
    print(f"{args.tickets} tickets (~{size / 1024:.1f} KiB each, published {arrival}) on one "
          f"local Kafka broker and FerretDB; executor: no-op runbook, SSH probe against "
          f"{args.hosts} sshd targets, {args.account} login (password hash: "
          f"{args.hash_method}), executor concurrency "
          f"{args.executor_concurrency}")
    print(f"{'':34}{'pipeline':>24}{'raw floor':>24}{'ratio':>9}")
    print(f"{'':34}{'p50     p95     p99 ms':>24}{'p50     p95     p99 ms':>24}")
    print(f"{'throughput (tickets/s)':34}{pipeline.throughput:>24.1f}"
          f"{floor.throughput:>24.1f}{floor.throughput / pipeline.throughput:>8.1f}x")
    print(f"{'submit -> initial response':34}{pipeline.initial.text():>24}{'(2 hops)':>24}")
    print(f"{'submit -> InterventionCompleted':34}{pipeline.completed.text():>24}"
          f"{'(3 hops)':>24}")
    print(f"{'submit -> customer told (4 hops)':34}{pipeline.told.text():>24}"
          f"{floor.told.text():>24}"
          f"{pipeline.told.at(0.5) / floor.told.at(0.5):>8.1f}x")
    print("where the pipeline's time goes (submit -> event created, p50 / p95 ms): " + ", ".join(
        f"{stage.rstrip(':').split(':')[0]} {pipeline.stages[stage].at(0.5) * 1000:.0f}/"
        f"{pipeline.stages[stage].at(0.95) * 1000:.0f}" for stage in STAGES))
    if pipeline.round_trips:
        total = sum(sum(ops.values()) for ops in pipeline.round_trips.values())
        print(f"store round trips per ticket: {total / args.tickets:.1f} in all (" + ", ".join(
            f"{name} {sum(ops.values()) / args.tickets:.1f}"
            for name, ops in sorted(pipeline.round_trips.items())) + ")")
        for name, ops in sorted(pipeline.round_trips.items()):
            top = sorted(ops.items(), key=lambda item: -item[1])[:8]
            print(f"  {name}: " + ", ".join(f"{what} {n / args.tickets:.2f}" for what, n in top))
    if pipeline.store_seconds:
        spent = sorted(((f"{name}: {what}", n) for name, ops in pipeline.store_seconds.items()
                        for what, n in ops.items()), key=lambda item: -item[1])
        total = sum(n for _, n in spent)
        print(f"store time per ticket (ms, as the services waited for it): "
              f"{total / args.tickets * 1000:.1f} in all; most: " + ", ".join(
                  f"{what} {n / args.tickets * 1000:.1f}" for what, n in spent[:10]))
    if pipeline.loop_lag:
        print("event-loop lag during the burst, mean (ms): " + ", ".join(
            f"{name} {lag * 1000:.1f}" for name, lag in sorted(pipeline.loop_lag.items())))
    if pipeline.cpu:
        print(cpu_line(pipeline, args.tickets, cores or 1))
    if args.profile is not None:
        for path in sorted(args.profile.glob("*.txt")):
            print(f"  hottest in {path.stem} (share of samples): " + "; ".join(
                f"{frame} {share:.0%}" for frame, share in hottest(path)))
    if aged is not None:
        total = sum(sum(ops.values()) for ops in aged.round_trips.values())
        print(f"after {args.history} finished tickets of history in the same store: "
              f"{aged.throughput:.1f} tickets/s ({aged.throughput / pipeline.throughput:.2f}x "
              f"the fresh store), p99 submit -> initial response "
              f"{aged.initial.at(0.99) * 1000:.0f} ms, p99 told {aged.told.at(0.99) * 1000:.0f}"
              f" ms, {total / args.tickets:.1f} store round trips per ticket")
    if ssh is not None:
        seq, par, p50 = ssh
        print(f"SSH diagnostics, real runbook ({args.ssh_hosts} sshd targets): "
              f"{seq:.2f} hosts/s sequential, {par:.2f} hosts/s at concurrency 8 "
              f"(p50 {p50:.2f} s per host)")
    print(f"machine: {cores} cores")


if __name__ == "__main__":
    main()
