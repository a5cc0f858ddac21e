"""Kafka administration the stack, the services and the tests share: readiness and topics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.topics import TopicSpec, all_topics


async def cluster_metadata(bootstrap: str, *, timeout: float = 5.0) -> dict[str, Any] | None:
    """The broker's cluster description, or None when it does not answer in time.

    Readiness means the broker answers a metadata request, not that its port is open.
    """
    # While the broker boots, aiokafka logs every refused connect at ERROR: that is the
    # expected answer to this probe, not news for the operator.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        described: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), timeout)
        return described if described.get("brokers") else None
    except (TimeoutError, OSError):
        return None
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap: str, *, prefix: str | None = None, specs: list[TopicSpec] | None = None
) -> list[str]:
    """Create the catalogue topics (and their DLQs) that do not exist yet; return those created."""
    wanted = specs if specs is not None else all_topics(prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in wanted if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(name=s.name, num_partitions=s.partitions, replication_factor=1)
                 for s in missing],
                timeout_ms=30000,
            )
            # Error 36 is TOPIC_ALREADY_EXISTS: another process raced us to it, which is fine.
            failed = [(t[0], t[1]) for t in response.topic_errors if t[1] not in (0, 36)]
            if failed:
                raise RuntimeError(f"creating topics failed: {failed}")
        return [s.name for s in missing]
    finally:
        await admin.close()


async def delete_topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a finished test run's)."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = [name for name in await admin.list_topics() if name.startswith(prefix)]
        for start in range(0, len(doomed), 100):
            await admin.delete_topics(doomed[start:start + 100], timeout_ms=60000)
        return doomed
    finally:
        await admin.close()
