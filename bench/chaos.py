"""Chaos: tickets flow while each service, the broker and the store are SIGKILLed in turn.

Run as root from the repository root (``make chaos`` runs the default)::

    python bench/chaos.py [--tickets 300] [--rate 2] [--kills intake,auth,...,ferretdb]

A private stack of its own - Kafka and FerretDB on free ports with data in a directory of
their own (:mod:`private_stack`; the shared stack is never touched), the four services as
real processes (``python -m services.<name>``), real sshd customer servers on loopback in
the inventory (``intervene servers import``) - receives ``--tickets`` diagnostics tickets
over ``POST /v1/tickets`` at ``--rate`` per second. The helpdesk stand-in retries a request
(the same body) until it gets a 202, as a helpdesk does: a ticket is *accepted* when it has.

While they flow, every ``--interval`` seconds the next of ``--kills`` is SIGKILLed, left
down ``--down`` seconds and restarted the way an operator would (same command, same
settings, same data), and the time until every service answers ``/healthz`` again is its
*recovery*. At the end (every accepted ticket told its completion, or ``--timeout``) it
checks, from outside the services:

- every accepted ticket has exactly one final outcome (InterventionCompleted, one event id)
  and exactly one completion update (TicketUpdated ``completion``): else *lost*, *duplicate*
  or *missing update*;
- no runbook step ran twice: no change command of a step audited twice; the sshd logs'
  sessions are compared with the audited commands (sessions the audit does not know were
  cut off by a kill before their record was written);
- nothing dead-lettered, no service process exited unless killed, ``intervene audit
  verify`` passes, ``intervene status --stuck`` finds nothing;
- the customers' password (the canary) is found 0 times: on the bus, in every store
  collection, in the services' logs, and in the broker's and the store's files on disk.

It prints one summary line of figures (and exits 1 when a check fails): tickets accepted,
lost, duplicate, missing updates, double-executed, DLQ, canary, stuck, audit, recovery per
kill, p50/p99 submit -> completed and the longest gap without progress.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pipeline  # noqa: E402
import httpx  # noqa: E402
from private_stack import PrivateStack, install_missing, unavailable  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from devstack.demo import targets  # noqa: E402
from devstack.demo.launch import ServiceProcess, start_services, wait_healthy  # noqa: E402
from devstack.demo.operator import intervene  # noqa: E402
from devstack.demo.progress import BusRecorder  # noqa: E402
from schemas.registry import EventDecodeError, parse_event  # noqa: E402
from services.intake.signing import Signer  # noqa: E402
from services.runtime.kafka_admin import ensure_topics  # noqa: E402
from services.runtime.keys import init_keys  # noqa: E402

SERVICES = ("intake", "auth", "executor", "notifier")
DEFAULT_KILLS = ("intake", "auth", "executor", "notifier", "kafka", "ferretdb")
# Outages that are not crashes: the broker or the store frozen (SIGSTOP) for --down seconds,
# then resumed (SIGCONT) - connections hang instead of being refused.
FREEZES = ("kafka-freeze", "ferretdb-freeze")
HEALTH_SAMPLE_AFTER_S = 8.0  # into an outage of at least twice this, ask every /healthz


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Submission:
    ticket_id: str
    body: dict[str, Any]
    first_try: float = 0.0
    accepted_at: float | None = None
    attempts: int = 0


@dataclass
class Kill:
    target: str
    at: float
    restarted_at: float = 0.0
    healthy_at: float = 0.0
    # Each service's /healthz during the outage: (status code, body).
    health: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    health_at: float = 0.0  # when those answers were in

    @property
    def recovery_s(self) -> float:
        return self.healthy_at - self.at


@dataclass
class Report:
    tickets: int = 0
    accepted: int = 0
    lost: int = 0
    duplicate: int = 0
    missing_updates: int = 0
    double_executed: int = 0
    dlq: int = 0
    canary: int = 0
    stuck: int = 0
    exited: int = 0
    audit_ok: bool = False
    outcomes: Counter[str] = field(default_factory=Counter)
    sshd_sessions: int = 0
    audited_commands: int = 0
    kills: list[Kill] = field(default_factory=list)
    completed_s: list[float] = field(default_factory=list)
    longest_gap_s: float = 0.0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.accepted == self.tickets and not (
            self.lost or self.duplicate or self.missing_updates or self.double_executed
            or self.dlq or self.canary or self.stuck or self.exited) and self.audit_ok)

    def line(self) -> str:
        recovery = ",".join(f"{k.target}:{k.recovery_s:.1f}s" for k in self.kills)
        return (f"chaos: {'OK' if self.ok else 'FAIL'} tickets={self.tickets} "
                f"accepted={self.accepted} lost={self.lost} duplicate={self.duplicate} "
                f"missing_updates={self.missing_updates} "
                f"double_executed={self.double_executed} dlq={self.dlq} "
                f"canary={self.canary} stuck={self.stuck} exited={self.exited} "
                f"audit={'ok' if self.audit_ok else 'FAILED'} "
                f"outcomes={dict(self.outcomes)} kills={len(self.kills)} "
                f"recovery=[{recovery}] "
                f"submit_to_completed_p50={percentile(self.completed_s, 0.5):.1f}s "
                f"p99={percentile(self.completed_s, 0.99):.1f}s "
                f"longest_gap_without_progress={self.longest_gap_s:.1f}s "
                f"sshd_sessions={self.sshd_sessions} audited_commands={self.audited_commands} "
                f"wall={self.wall_s:.0f}s")


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = uuid.uuid4().hex[:6]
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"chaos-{self.run}-"))
        self.prefix = f"chaos{self.run}."
        self.database = f"chaos_{self.run}"
        self.report = Report(tickets=args.tickets)
        self.services: dict[str, ServiceProcess] = {}
        self.ports: dict[str, int] = {name: targets.free_port() for name in SERVICES}
        self.killed: set[str] = set()  # processes this run killed on purpose
        self.submissions: list[Submission] = []
        self.stop_watch = threading.Event()

    # -- the stack ----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka.bootstrap,
            "KAFKA_TOPIC_PREFIX": self.prefix, "MONGODB_URI": self.stack.ferret.uri,
            "MONGODB_DATABASE": self.database, "INTERVENTION_KEYS_DIR": str(self.keys),
            "INTERVENE_VAR_DIR": str(self.workdir / "var"),
            "INTAKE_RATE_LIMIT_PER_MINUTE": "1000000", "INTAKE_RATE_LIMIT_BURST": "1000000",
            "AUTH_REVIEW_THRESHOLD": "1000",
            "EXECUTOR_CONCURRENCY": str(self.args.executor_concurrency),
            "PYTHONPATH": str(ROOT),
        }

    def start_service(self, name: str) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(self.env())
        (process,) = start_services(env, log_dir=self.workdir / "logs",
                                    ports={name: self.ports[name]}, names=[name])
        self.services[name] = process
        return process

    async def setup(self) -> None:
        self.stack = await asyncio.to_thread(PrivateStack.start, self.workdir / "stack")
        self.user = targets.ThrowawayUser.create(sudo=True, prefix="ivc")
        self.hosts = [targets.Sshd.start([self.user.name], listen=targets.loopback_address(),
                                         prefix="ivc") for _ in range(self.args.hosts)]
        await ensure_topics(self.stack.kafka.bootstrap, prefix=self.prefix)
        self.keys = init_keys(self.workdir / "keys").directory
        self.account = f"ACC-CHAOS-{self.run}"
        inventory = self.workdir / "inventory.json"
        inventory.write_text(json.dumps([{
            "service_id": f"SRV-CHAOS-{self.run}-{n}", "service_name": f"chaos-{n}",
            "ips": [h.host], "account_id": self.account, "type": "dedicated",
            "os_family": "linux", "ipkvm": False, "rescue": False, "ssh_port": h.port,
            "ssh_host_key": h.host_key_line, "datacenter": "chaos"}
            for n, h in enumerate(self.hosts)]))
        done = intervene(["servers", "import", str(inventory)], self.env())
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        # The helpdesk stand-in is a registered integration for the chaos account.
        added = intervene(["integrations", "add", f"chaos-{self.run}"], self.env())
        if added.returncode != 0:
            raise RuntimeError(added.stdout + added.stderr)
        accounts = self.workdir / "accounts.csv"
        accounts.write_text(f"customer,account_id\nportal:{self.account},{self.account}\n")
        done = intervene(["accounts", "import", str(accounts), "--integration",
                          f"chaos-{self.run}"], self.env())
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        self.signer = Signer(integration=f"chaos-{self.run}",
                             secret=added.stdout.strip().splitlines()[-1],
                             customer=f"portal:{self.account}")
        for name in SERVICES:
            self.start_service(name)
        await asyncio.to_thread(wait_healthy, list(self.services.values()), timeout=120)
        self.recorder = BusRecorder(self.stack.kafka.bootstrap, self.prefix)
        await self.recorder.start()
        threading.Thread(target=self.watch_exits, daemon=True).start()

    def watch_exits(self) -> None:
        """A service that exits without being killed fails the run (outages included)."""
        reported: set[int] = set()
        while not self.stop_watch.wait(0.5):
            for name, proc in list(self.services.items()):
                code = proc.process.poll()
                if code is not None and name not in self.killed and proc.process.pid \
                        not in reported:
                    reported.add(proc.process.pid)
                    self.report.exited += 1
                    self.report.problems.append(f"{name} exited by itself with {code}")

    async def teardown(self) -> None:
        self.stop_watch.set()
        with contextlib.suppress(Exception):
            await self.recorder.stop()
        for proc in self.services.values():
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()
        with contextlib.suppress(Exception):
            self.stack.stop()
        for sshd in getattr(self, "hosts", []):
            sshd.stop()
        if hasattr(self, "user"):
            self.user.remove()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- load ---------------------------------------------------------------------------

    def request(self, n: int) -> Submission:
        ticket = f"CHAOS-{self.run}-{n:05d}"
        # The pipeline benchmark's diagnostics request (one place says what a ticket is).
        body = bench_pipeline.request(ticket, f"SRV-CHAOS-{self.run}-{n % len(self.hosts)}",
                                      self.account, self.user)
        return Submission(ticket_id=ticket, body=body)

    async def submit_one(self, client: httpx.AsyncClient, sub: Submission) -> None:
        """A helpdesk's retries: the same body until 202 (or the run's deadline)."""
        sub.first_try = time.time()
        deadline = time.monotonic() + self.args.timeout
        url = f"http://127.0.0.1:{self.ports['intake']}/v1/tickets"
        while time.monotonic() < deadline:
            sub.attempts += 1
            try:
                # Signed anew for every attempt: a retry carries a fresh nonce.
                body = json.dumps(sub.body).encode()
                response = await client.post(url, content=body, headers={
                    "Content-Type": "application/json",
                    **self.signer.headers("POST", "/v1/tickets", body)})
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 202:
                sub.accepted_at = time.time()
                return
            if response is not None and response.status_code < 500 \
                    and response.status_code != 429:
                self.report.problems.append(f"{sub.ticket_id}: {response.status_code} "
                                            f"{response.text[:200]}")
                return
            await asyncio.sleep(1.0)

    async def load(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = []
            began = time.monotonic()
            for n in range(self.args.tickets):
                await asyncio.sleep(max(0.0, began + n / self.args.rate - time.monotonic()))
                sub = self.request(n)
                self.submissions.append(sub)
                tasks.append(asyncio.create_task(self.submit_one(client, sub)))
            await asyncio.gather(*tasks)

    # -- kills --------------------------------------------------------------------------

    async def kill(self, target: str) -> Kill:
        kill = Kill(target=target, at=time.time())
        if target in SERVICES:
            self.killed.add(target)
            proc = self.services[target]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, 9)
            await asyncio.to_thread(proc.process.wait)
            await asyncio.sleep(self.args.down)
            self.start_service(target)
            self.killed.discard(target)
        else:
            part = self.stack.kafka if target.startswith("kafka") else self.stack.ferret
            frozen = target in FREEZES
            if frozen:
                part.freeze()
            else:
                await asyncio.to_thread(part.kill)
            if self.args.down >= 2 * HEALTH_SAMPLE_AFTER_S:
                await asyncio.sleep(HEALTH_SAMPLE_AFTER_S)
                kill.health = await self.health()
                kill.health_at = time.time()
                await asyncio.sleep(self.args.down - HEALTH_SAMPLE_AFTER_S)
            else:
                await asyncio.sleep(self.args.down)
            if frozen:
                part.thaw()
            else:
                await asyncio.to_thread(part.start)
        kill.restarted_at = time.time()
        await asyncio.to_thread(wait_healthy, list(self.services.values()), timeout=300)
        kill.healthy_at = time.time()
        print(f"  killed {target}: back and healthy {kill.recovery_s:.1f}s after the kill",
              flush=True)
        return kill

    async def health(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """Every service's ``/healthz`` answer now (asked all at once)."""
        async def ask(client: httpx.AsyncClient, proc: ServiceProcess
                      ) -> tuple[int, dict[str, Any]]:
            try:
                response = await client.get(f"http://127.0.0.1:{proc.health_port}/healthz")
                return response.status_code, response.json()
            except (httpx.HTTPError, ValueError) as exc:
                return 0, {"error": f"{type(exc).__name__}: {exc}"}

        async with httpx.AsyncClient(timeout=15) as client:
            names = list(self.services)
            answers = await asyncio.gather(*(ask(client, self.services[n]) for n in names))
        return dict(zip(names, answers, strict=True))

    async def chaos(self) -> None:
        await asyncio.sleep(self.args.first_kill)
        for target in self.args.kills:
            self.report.kills.append(await self.kill(target))
            await asyncio.sleep(self.args.interval)

    # -- the run ------------------------------------------------------------------------

    async def wait_settled(self) -> None:
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            accepted = {s.ticket_id for s in self.submissions if s.accepted_at is not None}
            told = {t for t, kinds in self.updates().items() if kinds.get("completion")}
            if accepted and accepted <= told:
                return
            await asyncio.sleep(1.0)

    def events(self) -> list[tuple[Any, float]]:
        out = []
        seen: set[tuple[str, bytes]] = set()
        for record in self.recorder.records:
            if record.topic.endswith(".dlq") or not record.topic.startswith("intervention."):
                continue
            with contextlib.suppress(EventDecodeError):
                event = parse_event(record.value)
                if (record.topic, record.value) in seen:
                    continue
                seen.add((record.topic, record.value))
                out.append((event, record.timestamp_ms / 1000))
        return out

    def updates(self) -> dict[str, dict[str, set[str]]]:
        kinds: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for event, _ in self.events():
            if event.event_type == "TicketUpdated":
                kinds[event.ticket_id][event.kind].add(str(event.event_id))
        return kinds

    async def execute(self) -> None:
        began = time.time()
        await self.setup()
        print(f"chaos {self.run}: {self.args.tickets} tickets at {self.args.rate}/s, kills "
              f"{','.join(self.args.kills)} every {self.args.interval}s "
              f"(workdir {self.workdir})", flush=True)
        await asyncio.gather(self.load(), self.chaos())
        await self.wait_settled()
        self.report.wall_s = time.time() - began
        await self.check()

    # -- checks -------------------------------------------------------------------------

    async def check(self) -> None:
        r = self.report
        accepted = {s.ticket_id: s for s in self.submissions if s.accepted_at is not None}
        r.accepted = len(accepted)
        completed: dict[str, set[str]] = defaultdict(set)
        outcome: dict[str, str] = {}
        first_completed: dict[str, float] = {}
        progress: list[float] = []
        for event, at in self.events():
            progress.append(at)
            if event.event_type == "InterventionCompleted":
                completed[event.ticket_id].add(str(event.event_id))
                outcome[event.ticket_id] = event.outcome
                first_completed.setdefault(event.ticket_id, at)
        updates = self.updates()
        for ticket, sub in accepted.items():
            ids = completed.get(ticket, set())
            told = updates.get(ticket, {}).get("completion", set())
            r.lost += not ids
            r.duplicate += len(ids) > 1 or len(told) > 1
            r.missing_updates += not told
            if ids:
                r.outcomes[outcome[ticket]] += 1
                r.completed_s.append(first_completed[ticket] - sub.first_try)
        progress.sort()
        window = [t for t in progress if t >= min(s.first_try for s in self.submissions)]
        r.longest_gap_s = max((b - a for a, b in itertools.pairwise(window)),
                              default=0.0)
        r.dlq = sum(1 for rec in self.recorder.records if rec.topic.endswith(".dlq"))
        await self.check_store()
        r.sshd_sessions = sum(len(re.findall(r"Starting session: command", h.log()))
                              for h in self.hosts)
        verify = await asyncio.to_thread(intervene, ["audit", "verify"], self.env(),
                                         timeout=600)
        r.audit_ok = verify.returncode == 0
        if not r.audit_ok:
            r.problems.append(f"audit verify: {verify.stdout[-500:]}{verify.stderr[-500:]}")
        stuck = await asyncio.to_thread(intervene, ["status", "--stuck"], self.env())
        r.stuck = sum(1 for line in stuck.stdout.splitlines() if line.startswith("  "))
        if stuck.returncode != 0:
            r.problems.append(f"status --stuck: {stuck.stdout[-800:]}")
        r.canary += self.canary_on_disk()

    async def check_store(self) -> None:
        r = self.report
        canary = self.user.password
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.stack.ferret.uri)
        try:
            db = client[self.database]
            changes: Counter[tuple[str, int, str, int]] = Counter()
            for name in await db.list_collection_names():
                async for doc in db[name].find({}):
                    if canary in json.dumps(doc, default=str):
                        r.canary += 1
                    if name == "audit" and doc.get("kind") == "command":
                        r.audited_commands += 1
                        data = doc.get("data") or {}
                        if data.get("phase") == "change":
                            changes[(doc["ticket_id"], int(data.get("revision", 0)),
                                     str(data.get("step")), int(data.get("n", 0)))] += 1
            r.double_executed = sum(1 for count in changes.values() if count > 1)
        finally:
            await client.close()
        for rec in self.recorder.records:
            if canary.encode() in rec.value:
                r.canary += 1

    def canary_on_disk(self) -> int:
        """Occurrences in the services' logs and the broker's and store's files."""
        needle = self.user.password.encode()
        found = 0
        for path in [*(self.workdir / "logs").glob("*"), *(self.workdir / "stack").rglob("*")]:
            if path.is_file():
                with contextlib.suppress(OSError):
                    found += path.read_bytes().count(needle)
        return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=300)
    parser.add_argument("--rate", type=float, default=2.0, help="tickets per second")
    parser.add_argument("--kills", type=lambda s: [k for k in s.split(",") if k],
                        default=list(DEFAULT_KILLS),
                        help=f"in order; also {', '.join(FREEZES)} (SIGSTOP for --down s)")
    parser.add_argument("--first-kill", type=float, default=10.0,
                        help="seconds after the first ticket")
    parser.add_argument("--interval", type=float, default=15.0,
                        help="seconds between a recovery and the next kill")
    parser.add_argument("--down", type=float, default=3.0,
                        help="seconds a killed part stays down before its restart")
    parser.add_argument("--hosts", type=int, default=4, help="sshd customer servers")
    parser.add_argument("--executor-concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for every accepted ticket to be told")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    unknown = set(args.kills) - set(DEFAULT_KILLS) - set(FREEZES)
    if unknown:
        parser.error(f"unknown kill targets: {', '.join(sorted(unknown))}")
    return args


async def run_chaos(args: argparse.Namespace) -> Report:
    chaos = Chaos(args)
    try:
        await chaos.execute()
    finally:
        await chaos.teardown()
    return chaos.report


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    args = parse_args(argv)
    install_missing()
    reason = targets.available() or unavailable()
    if reason is not None:
        print(f"chaos: cannot run here: {reason}", file=sys.stderr)
        return 2
    report = asyncio.run(run_chaos(args))
    for problem in report.problems[:20]:
        print(f"  problem: {problem}")
    print(report.line(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
