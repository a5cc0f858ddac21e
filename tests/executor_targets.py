"""Real "customer servers" for the executor's tests and benchmark: OpenSSH sshd processes on
loopback with private configs, throwaway users, a throwaway SysV service and a local apt
repository of throwaway packages.

They live in :mod:`services.demo.targets` (``intervene demo`` and the end-to-end tests build
their servers from the same classes); this module re-exports them under the names the
executor's tests use, and adds what only tests need: :func:`processes_with` and
:class:`EventBus`.

Everything is created with random ``ivt<hex>`` names and removed again by the caller
(the session fixtures in ``tests/integration/conftest.py``, or ``bench/bench_executor.py``).
Needs root (to run sshd with password logins and to create users), like the CI runners.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from services.demo.targets import (
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

__all__ = ["SSHD", "AptRepo", "EventBus", "Record", "Sshd", "SysvService", "ThrowawayUser",
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


@dataclass
class Record:
    topic: str  # catalogue name, prefix removed
    key: bytes | None
    value: bytes
    headers: dict[str, str]


class EventBus:
    """Collects every record of every topic under one prefix (catalogue and DLQs)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.records: list[Record] = []
        self._task: object = None
        self._consumer: object = None

    async def start(self) -> None:
        import asyncio

        from aiokafka import AIOKafkaConsumer, TopicPartition

        from schemas.topics import all_topics

        names = [spec.name for spec in all_topics(self.prefix)]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        for _ in range(100):  # just-created topics reach the metadata a moment later
            await consumer._client.force_metadata_update()
            if all(consumer.partitions_for_topic(t) for t in names):
                break
            await asyncio.sleep(0.1)
        parts = [TopicPartition(t, p) for t in names
                 for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)

        async def collect() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    self.records.extend(
                        Record(topic=r.topic.removeprefix(self.prefix), key=r.key,
                               value=r.value,
                               headers={k: v.decode(errors="replace") for k, v in r.headers})
                        for r in records)

        self._consumer = consumer
        self._task = asyncio.create_task(collect())

    async def stop(self) -> None:
        self._task.cancel()  # type: ignore[attr-defined]
        await self._consumer.stop()  # type: ignore[attr-defined]

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
