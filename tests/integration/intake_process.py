"""Intake as its real process (``python -m services.intake``) on a test's own topic prefix,
database and port, for the tests that kill and restart it (SIGKILL: nothing runs on exit)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class IntakeProcess:
    """One intake process at a time on a fixed port; ``start`` after ``kill`` is a restart
    the way an operator would do it (same environment, same port)."""

    env: dict[str, str]
    logs: Path
    port: int = field(default_factory=free_port)
    ops_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    desk: Any = None
    """The registered helpdesk integration a test signs as (``signed_requests.Registered``)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **extra: str) -> IntakeProcess:
        env = {**self.env, "INTAKE_HTTP_PORT": str(self.port),
               "OPS_HTTP_PORT": str(self.ops_port), **extra}
        log = self.logs / f"intake-{self.starts}.log"
        self.starts += 1
        with log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "services.intake"],
                                            cwd=REPO, env=env, stdout=out, stderr=out,
                                            start_new_session=True)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"intake exited with {self.process.returncode}: "
                                     f"{self.last_log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.ops_port}/healthz",
                             timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"intake not healthy after {timeout}s: {self.last_log()}")

    def last_log(self) -> str:
        return (self.logs / f"intake-{self.starts - 1}.log").read_text(errors="replace")[-3000:]

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
