"""Session fixtures for the executor's integration tests: real sshd targets on loopback.

Started once per session and removed at the end (users, sudoers drop-ins, the init script,
the apt source and its packages); see ``tests/executor_targets.py``. Tests that need them
are skipped with the reason when the machine cannot run them (not root).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import executor_targets as targets
from executor_process import Executor


@dataclass(frozen=True)
class SshTargets:
    sshd: targets.Sshd
    admin: targets.ThrowawayUser  # sudo with password: the customer's admin login
    target: targets.ThrowawayUser  # the account whose password gets reset
    plain: targets.ThrowawayUser  # logs in, no sudo
    service: targets.SysvService
    repo: targets.AptRepo

    @property
    def port(self) -> int:
        return self.sshd.port


@pytest.fixture(scope="session")
def ssh_targets() -> Iterator[SshTargets]:
    reason = targets.available()
    if reason is not None:
        # A missing real part is a failure, never a skip: these tests prove nothing without it.
        pytest.fail(f"real sshd targets unavailable: {reason}")
    created: list[object] = []
    try:
        admin = targets.ThrowawayUser.create(sudo=True)
        created.append(admin)
        target = targets.ThrowawayUser.create(sudo=False)
        created.append(target)
        plain = targets.ThrowawayUser.create(sudo=False)
        created.append(plain)
        sshd = targets.Sshd.start([admin.name, target.name, plain.name])
        created.append(sshd)
        service = targets.SysvService.install()
        created.append(service)
        repo = targets.AptRepo.create(count=4)
        created.append(repo)
        yield SshTargets(sshd=sshd, admin=admin, target=target, plain=plain, service=service,
                         repo=repo)
    finally:
        for thing in reversed(created):
            if isinstance(thing, targets.Sshd):
                thing.stop()
            else:
                thing.remove()  # type: ignore[attr-defined]


@pytest.fixture
def executors() -> Iterator[list[Executor]]:
    """The executor processes a test starts (``executor_process.start_executor``), stopped
    when it ends."""
    started: list[Executor] = []
    yield started
    for executor in started:
        executor.stop()
