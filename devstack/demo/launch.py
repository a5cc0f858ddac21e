"""The four services as real subprocesses (``python -m services.<name>``), for the
end-to-end tests and the pipeline benchmark.

Each process gets the caller's configuration through its environment — topic prefix,
database, key directory, span file, ports — exactly as an operator would start it, logs to
its own file, and counts as started when its ``/healthz`` answers 200 on its operations
port (for intake a port of its own beside the public API port the caller chose).
``intervene demo`` starts the same processes through the local stack
(:mod:`devstack.localstack`) instead, so that ``intervene status`` and
``intervene down`` know them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.demo.targets import free_port

SERVICES = ("intake", "auth", "executor", "notifier")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    health_port: int

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def service_ports(names: Sequence[str] = SERVICES) -> dict[str, int]:
    return {name: free_port() for name in names}


def start_services(env: Mapping[str, str], *, log_dir: Path, ports: Mapping[str, int],
                   names: Sequence[str] = SERVICES,
                   commands: Mapping[str, Sequence[str]] | None = None,
                   ) -> list[ServiceProcess]:
    """Start each service with ``env`` on top of this process's environment.

    ``commands`` replaces a service's command line (the benchmark's no-op executor).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[ServiceProcess] = []
    for name in names:
        port = ports[name]
        # ``port`` is where callers reach the service: intake's public API, the others'
        # operations endpoint. Intake's /healthz and /metrics get an operations port too.
        health = free_port() if name == "intake" else port
        child_env = {**os.environ, **env, "OPS_HTTP_PORT": str(health)}
        if name == "intake":
            child_env["INTAKE_HTTP_PORT"] = str(port)
        argv = list((commands or {}).get(name) or [sys.executable, "-m", f"services.{name}"])
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=child_env, cwd=REPO_ROOT,
                                       start_new_session=True)
        started.append(ServiceProcess(name=name, process=process, log_path=log_path,
                                      health_port=health))
    return started


def wait_healthy(processes: Sequence[ServiceProcess], *, timeout: float = 90.0) -> None:
    """Return when every service answers; raise with the first dead one's log tail."""
    deadline = time.monotonic() + timeout
    waiting = list(processes)
    while waiting:
        for proc in list(waiting):
            code = proc.process.poll()
            if code is not None:
                raise RuntimeError(f"{proc.name} exited with status {code}:\n"
                                   f"{proc.log()[-3000:]}")
            if proc.healthy():
                waiting.remove(proc)
        if not waiting:
            return
        if time.monotonic() > deadline:
            names = ", ".join(p.name for p in waiting)
            raise RuntimeError(f"not healthy within {timeout:.0f}s: {names}\n"
                               f"{waiting[0].log()[-3000:]}")
        time.sleep(0.2)


def stop_services(processes: Sequence[ServiceProcess], *, timeout: float = 20.0) -> None:
    """SIGTERM all (graceful shutdown commits offsets), then SIGKILL what is left."""
    for proc in processes:
        if proc.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in processes:
        try:
            proc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.wait(timeout=5)
