"""SSH diagnostics throughput of the executor against N real sshd targets on loopback.

Run as root from the repository root (it starts sshd processes and a throwaway user)::

    python bench/bench_executor.py [--hosts 8] [--concurrency 8,16] [--rounds 2]
        [--password-hash default|sha512] [--account password|key]
        [--sequential-commands | --no-baseline]

Starts N OpenSSH sshd processes on 127.0.0.1 (private configs, one throwaway sudo user),
then runs the real diagnostics runbook through the real engine and SSH layer on every host:
connect with a pinned host key, password login, privilege detection (sudo with the
password on stdin), then the read-only checks, each audited to an in-memory log. First
sequentially, then with each ``--concurrency`` of hosts at a time (the executor's worker
limit, ``EXECUTOR_CONCURRENCY``), with the per-host and global handshake limits of the
real connector. hosts/s = hosts done / wall time. Everything started is removed at the end.

Two ways of running commands, in the same run:

- ``channels`` (before): a channel, a login shell and, for root commands, a sudo with the
  password per command (``SshConnector(command_shells=False)``; ``--sequential-commands``
  runs only this one);
- ``shells`` (after, the executor's default): each command in one of the session's two
  long-lived shells (the account's, and root's, started by the one sudo that detects the
  privilege); ``--no-baseline`` runs only this one.

CPU per host: this process's CPU (the executor side); the sshd side (the targets' sshd
processes and all they start: sessions, shells, sudo, PAM, the commands), exact from a
cgroup-v1 ``cpuacct`` group made for the run and removed at the end; and the whole
machine's busy time from ``/proc/stat`` (includes whatever else the machine runs). The
CPU-bound ceiling is the number of CPUs divided by executor + sshd-side CPU per host: the
rate this machine's cores sustain when nothing else runs (the wall-clock rate on a shared
machine is not).
``--password-hash sha512`` gives the throwaway user a SHA-512-crypt hash instead of the
system's default (yescrypt on Debian 12: each check costs tens of milliseconds of CPU, and
a password login plus the sudo check pay it twice per host); the default hash is what
real Debian customers have. ``--account key`` logs in with a key and gives the account
passwordless sudo: no password hash is checked at all.

The claim store and audit chain are left out on purpose: they are measured by
``bench_runtime.py`` / ``bench_audit.py``; this isolates what SSH costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "executor"))

import asyncssh  # noqa: E402
import executor_targets as targets  # noqa: E402
from executor_fakes import FakeJournal, FakeLog, FakeSink  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from devstack.demo.targets import run as run_tool  # noqa: E402
from services.executor.runbooks import RUNBOOKS  # noqa: E402
from services.executor.runbooks.engine import Engine  # noqa: E402
from services.executor.runbooks.model import RunOptions  # noqa: E402
from services.executor.ssh import Credential, SshConnector, SshTarget  # noqa: E402

TRACER = TracerProvider().get_tracer("bench")  # one provider: the executor has one too


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
        CREDENTIAL or Credential(username=user.name, password=user.password),
        platform="linux")
    try:
        log = FakeLog()
        engine = Engine(host=session, journal=FakeJournal(), log=log, issuer=None,
                        secrets_sink=FakeSink(), tracer=TRACER, options=RunOptions())
        book = RUNBOOKS["diagnostics"]
        result = await engine.run(book, book.parse_params({}))
        if any(s.result == "failed" for s in result.steps):
            raise RuntimeError(f"diagnostics failed on {sshd.port}: {result.steps}")
    finally:
        await session.aclose()
    return time.perf_counter() - began, len(log.records)


class SshdCpu:
    """CPU of the sshd targets and everything they start (sessions, shells, sudo, PAM, the
    commands), from a cgroup-v1 ``cpuacct`` group the listeners are moved into (children
    inherit it): exact whatever else the machine runs. None where no such group can be made.
    """

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.group: Path | None = None
        if (self.ROOT / "cgroup.procs").exists():
            group = self.ROOT / f"ivt-bench-{targets.token()}"
            try:
                group.mkdir()
            except OSError:
                return
            self.group = group

    def adopt(self, pid: int) -> None:
        if self.group is not None:
            (self.group / "cgroup.procs").write_text(f"{pid}\n")

    def seconds(self) -> float | None:
        if self.group is None:
            return None
        return int((self.group / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        if self.group is not None:
            for _ in range(50):  # the last session processes may still be exiting
                try:
                    self.group.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


SSHD_CPU: SshdCpu | None = None
CREDENTIAL: Credential | None = None  # --account key: the key login instead of the password


def key_account(user: targets.ThrowawayUser) -> Credential:
    """Log ``user`` in with a new ed25519 key and give it passwordless sudo: an account
    whose connection checks no password hash at all."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    ssh_dir = Path(f"~{user.name}").expanduser() / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_bytes(key.export_public_key("openssh"))
    run_tool("chown", "-R", f"{user.name}:", str(ssh_dir))
    user.sudoers_path.write_text(f"{user.name} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    return Credential(username=user.name,
                      private_key=key.export_private_key("openssh").decode())


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class Measured:
    def __init__(self, elapsed: float, latencies: list[float], commands: int,
                 python_cpu: float, machine_cpu: float, sshd_cpu: float | None) -> None:
        self.elapsed, self.latencies, self.commands = elapsed, latencies, commands
        self.python_cpu, self.machine_cpu, self.sshd_cpu = python_cpu, machine_cpu, sshd_cpu


async def measure(hosts: list[targets.Sshd], user: targets.ThrowawayUser, concurrency: int,
                  rounds: int, *, shells: bool = True) -> Measured:
    connector = SshConnector(pins=NoPins(), connect_timeout_s=30,  # type: ignore[arg-type]
                             command_timeout_s=120, per_host_connects=4, global_connects=32,
                             command_shells=shells)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    commands = 0

    async def one(n: int, sshd: targets.Sshd) -> None:
        nonlocal commands
        async with gate:
            seconds, ran = await diagnose(connector, sshd, user, n)
        latencies.append(seconds)
        commands += ran

    def sshd_s() -> float | None:
        return SSHD_CPU.seconds() if SSHD_CPU is not None else None

    began, cpu, busy, sshd_began = (time.perf_counter(), time.process_time(),
                                    machine_busy_s(), sshd_s())
    jobs = [one(n, sshd) for _ in range(rounds) for n, sshd in enumerate(hosts)]
    await asyncio.gather(*jobs)
    elapsed = time.perf_counter() - began
    await asyncio.sleep(0.3)  # closed sessions finish exiting on the server side
    sshd_end = sshd_s()
    return Measured(elapsed, latencies, commands, time.process_time() - cpu,
                    machine_busy_s() - busy,
                    None if sshd_end is None or sshd_began is None else sshd_end - sshd_began)


def report(label: str, m: Measured) -> float:
    n = len(m.latencies)
    rate = n / m.elapsed
    p50 = statistics.median(m.latencies)
    p95 = sorted(m.latencies)[max(0, int(n * 0.95) - 1)]
    sshd = "" if m.sshd_cpu is None else f"sshd side {m.sshd_cpu / n * 1000:5.1f} ms, "
    # What the machine's cores could sustain if this were all they did: independent of
    # other load on a shared machine (which the wall-clock rate is not).
    ceiling = ("" if m.sshd_cpu is None else
               f"  CPU-bound ceiling {(os.cpu_count() or 1) * n / (m.python_cpu + m.sshd_cpu):5.1f}"
               " hosts/s")
    print(f"{label:<27} {n:>4} hosts in {m.elapsed:6.2f} s = {rate:6.2f} hosts/s  "
          f"p50 {p50:4.2f} s, p95 {p95:4.2f} s  CPU/host: executor "
          f"{m.python_cpu / n * 1000:4.1f} ms, {sshd}machine {m.machine_cpu / n * 1000:5.1f} "
          f"ms{ceiling}  {m.commands // n} commands")
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--concurrency", default="8",
                        help="comma-separated host concurrencies to measure after the "
                             "sequential run (EXECUTOR_CONCURRENCY is 8 by default)")
    parser.add_argument("--rounds", type=int, default=2, help="diagnostics runs per host")
    parser.add_argument("--password-hash", dest="hash_method", choices=("default", "sha512"),
                        default="default",
                        help="the throwaway user's password hash (default: the system's)")
    parser.add_argument("--account", choices=("password", "key"), default="password",
                        help="password: password login and sudo with the password (a "
                             "customer's admin account); key: key login, passwordless sudo")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--sequential-commands", action="store_true",
                       help="only the baseline: a channel (and a sudo) per command")
    modes.add_argument("--no-baseline", action="store_true",
                       help="only the command shells (the executor's default)")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    reason = targets.available()
    if reason is not None:
        sys.exit(f"cannot start sshd targets: {reason}")
    global SSHD_CPU, CREDENTIAL
    SSHD_CPU = SshdCpu()
    user = targets.ThrowawayUser.create(sudo=True)
    hosts: list[targets.Sshd] = []
    try:
        if args.hash_method == "sha512":
            user.set_password(user.password, crypt_method="SHA512")
        if args.account == "key":
            CREDENTIAL = key_account(user)
        for _ in range(args.hosts):
            hosts.append(targets.Sshd.start([user.name]))
            assert hosts[-1].pid is not None
            SSHD_CPU.adopt(hosts[-1].pid)
        book = RUNBOOKS["diagnostics"]
        steps = len(book.steps(book.parse_params({}), "linux"))
        print(f"{args.hosts} sshd targets on 127.0.0.1, diagnostics runbook ({steps} steps), "
              f"{args.rounds} run(s) per host, account: {args.account}, "
              f"password hash: {args.hash_method}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        chosen = ([("channels", False)] if args.sequential_commands else
                  [("shells", True)] if args.no_baseline else
                  [("channels", False), ("shells", True)])
        rates: dict[tuple[str, int], float] = {}
        for name, shells in chosen:
            await measure(hosts[:1], user, 1, 1, shells=shells)  # warm-up: imports, caches
            for concurrency in [1, *concurrencies]:
                label = f"{name}, " + ("sequential" if concurrency == 1
                                       else f"concurrency {concurrency}")
                rates[name, concurrency] = report(label, await measure(
                    hosts, user, concurrency, args.rounds, shells=shells))
        if len(chosen) == 2:
            for concurrency in [1, *concurrencies]:
                print(f"shells vs channels at concurrency {concurrency}: "
                      f"{rates['shells', concurrency] / rates['channels', concurrency]:.1f}x")
    finally:
        for sshd in hosts:
            sshd.stop()
        user.remove()
        SSHD_CPU.remove()


if __name__ == "__main__":
    asyncio.run(main())
