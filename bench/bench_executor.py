"""SSH diagnostics throughput of the executor against N real sshd targets on loopback.

Run as root from the repository root (it starts sshd processes and a throwaway user)::

    python bench/bench_executor.py [--hosts 8] [--concurrency 8] [--rounds 2]

Starts N OpenSSH sshd processes on 127.0.0.1 (private configs, one throwaway sudo user),
then runs the real diagnostics runbook through the real engine and SSH layer on every host:
connect with a pinned host key, password login, privilege detection (sudo with the
password on stdin), then the ~15 read-only checks, each audited to an in-memory log. First
sequentially (the baseline), then with ``--concurrency`` hosts at a time (the executor's
worker limit), with the per-host and global handshake limits of the real connector.
hosts/s = hosts done / wall time. Everything started is removed at the end.

The claim store and audit chain are left out on purpose: they are measured by
``bench_runtime.py`` / ``bench_audit.py``; this isolates what SSH costs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "executor"))

import executor_targets as targets  # noqa: E402
from executor_fakes import FakeJournal, FakeLog, FakeSink  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from services.executor.runbooks import RUNBOOKS  # noqa: E402
from services.executor.runbooks.engine import Engine  # noqa: E402
from services.executor.runbooks.model import RunOptions  # noqa: E402
from services.executor.ssh import Credential, SshConnector, SshTarget  # noqa: E402


class NoPins:
    """Every target is given with its inventory key, so nothing is ever pinned."""

    async def get(self, service_id: str) -> str | None:
        return None

    async def pin(self, *args: Any, **kwargs: Any) -> str:
        raise AssertionError("not used: inventory keys are known")


async def diagnose(connector: SshConnector, sshd: targets.Sshd, user: targets.ThrowawayUser,
                   n: int) -> tuple[float, int]:
    began = time.perf_counter()
    session = await connector.open(
        SshTarget(host="127.0.0.1", port=sshd.port, service_id=f"BENCH-{n}",
                  inventory_key=sshd.host_key_line),
        Credential(username=user.name, password=user.password), platform="linux")
    try:
        log = FakeLog()
        engine = Engine(host=session, journal=FakeJournal(), log=log, issuer=None,
                        secrets_sink=FakeSink(), tracer=TracerProvider().get_tracer("bench"),
                        options=RunOptions())
        book = RUNBOOKS["diagnostics"]
        result = await engine.run(book, book.parse_params({}))
        if any(s.result == "failed" for s in result.steps):
            raise RuntimeError(f"diagnostics failed on {sshd.port}: {result.steps}")
    finally:
        await session.aclose()
    return time.perf_counter() - began, len(log.records)


async def measure(hosts: list[targets.Sshd], user: targets.ThrowawayUser, concurrency: int,
                  rounds: int) -> tuple[float, list[float], int]:
    connector = SshConnector(pins=NoPins(), connect_timeout_s=30,  # type: ignore[arg-type]
                             command_timeout_s=120, per_host_connects=4, global_connects=32)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    commands = 0

    async def one(n: int, sshd: targets.Sshd) -> None:
        nonlocal commands
        async with gate:
            seconds, ran = await diagnose(connector, sshd, user, n)
        latencies.append(seconds)
        commands += ran

    began = time.perf_counter()
    jobs = [one(n, sshd) for _ in range(rounds) for n, sshd in enumerate(hosts)]
    await asyncio.gather(*jobs)
    return time.perf_counter() - began, latencies, commands


def report(label: str, elapsed: float, latencies: list[float], commands: int) -> float:
    rate = len(latencies) / elapsed
    p50 = statistics.median(latencies)
    p95 = sorted(latencies)[max(0, int(len(latencies) * 0.95) - 1)]
    print(f"{label:<24} {len(latencies):>4} hosts in {elapsed:6.2f} s = {rate:6.2f} hosts/s"
          f"   per host p50 {p50:5.2f} s, p95 {p95:5.2f} s, {commands // len(latencies)} "
          "commands each")
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="diagnostics runs per host")
    args = parser.parse_args()
    reason = targets.available()
    if reason is not None:
        sys.exit(f"cannot start sshd targets: {reason}")
    user = targets.ThrowawayUser.create(sudo=True)
    hosts: list[targets.Sshd] = []
    try:
        for _ in range(args.hosts):
            hosts.append(targets.Sshd.start([user.name]))
        book = RUNBOOKS["diagnostics"]
        steps = len(book.steps(book.parse_params({}), "linux"))
        print(f"{args.hosts} sshd targets on 127.0.0.1, diagnostics runbook ({steps} steps), "
              f"{args.rounds} run(s) per host")
        await measure(hosts[:1], user, 1, 1)  # warm-up: imports, PAM caches
        base = report("sequential (1 at a time)",
                      *await measure(hosts, user, 1, args.rounds))
        fast = report(f"concurrency {args.concurrency}",
                      *await measure(hosts, user, args.concurrency, args.rounds))
        print(f"speed-up {fast / base:.1f}x")
    finally:
        for sshd in hosts:
            sshd.stop()
        user.remove()


if __name__ == "__main__":
    asyncio.run(main())
