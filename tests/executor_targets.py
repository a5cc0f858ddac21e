"""Real "customer servers" for the executor's tests and benchmark: OpenSSH sshd processes on
loopback with private configs, throwaway users, a throwaway SysV service and a local apt
repository of throwaway packages.

They live in :mod:`devstack.demo.targets` (``intervene demo`` and the end-to-end tests build
their servers from the same classes); this module re-exports them under the names the
executor's tests use, and adds what only tests need: :func:`processes_with` and
:class:`EventBus`.

Everything is created with random ``ivt<hex>`` names and removed again by the caller
(the session fixtures in ``tests/integration/conftest.py``, or ``bench/bench_executor.py``).
Needs root (to run sshd with password logins and to create users), like the CI runners.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from devstack.demo.progress import BusRecorder
from devstack.demo.targets import (
    SSHD,
    AptRepo,
    Sshd,
    SysvService,
    ThrowawayUser,
    available,
    free_port,
    new_password,
    other_host_key,
    token,
)

__all__ = ["SSHD", "AptRepo", "EventBus", "Sshd", "SysvService", "ThrowawayUser",
           "available", "free_port", "new_password", "other_host_key", "processes_with",
           "token"]


def processes_with(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (to prove secrets never appear there)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


# --- reading everything a test run published -------------------------------------------


class EventBus(BusRecorder):
    """Every record of every topic under one prefix (catalogue and DLQs), read from the
    beginning (the demo's :class:`BusRecorder`), with the lookups the executor tests use."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__(bootstrap, prefix, from_beginning=True)

    def of(self, ticket_id: str, event_type: str | None = None) -> list[object]:
        from schemas.registry import parse_event

        found = []
        for record in self.records:
            if record.key != ticket_id.encode() or record.topic.endswith(".dlq"):
                continue
            if not record.topic.startswith("intervention."):
                continue
            event = parse_event(record.value)
            if event_type is None or event.event_type == event_type:
                found.append(event)
        return found

    def values(self, ticket_id: str, event_type: str) -> list[bytes]:
        from schemas.topics import event_topic

        return [r.value for r in self.records
                if r.key == ticket_id.encode() and r.topic == event_topic(event_type)]

    async def wait(self, ticket_id: str, event_type: str, n: int = 1,
                   timeout: float = 60.0) -> list[object]:
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = self.of(ticket_id, event_type)
            if len(found) >= n:
                return found
            if asyncio.get_running_loop().time() > deadline:
                seen = [getattr(e, "event_type", "?") for e in self.of(ticket_id)]
                raise AssertionError(f"{ticket_id}: {len(found)} of {n} {event_type} in "
                                     f"{timeout}s; seen {seen}")
            await asyncio.sleep(0.1)
