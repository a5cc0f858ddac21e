"""Kafka administration the stack, the services and the tests share: readiness and topics.

Every function takes the bootstrap list and, optionally, the process's settings for TLS and
SASL (:mod:`services.runtime.kafka_security`); without settings the connection is
PLAINTEXT, as the local stack's broker is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from schemas.topics import TopicSpec, all_topics
from services.runtime.kafka_security import connect_failure, kafka_security_options
from services.runtime.settings import RuntimeSettings


def _admin(bootstrap: str, settings: RuntimeSettings | None, **extra: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_security_options(settings),
                               **extra)


async def _start(admin: AIOKafkaAdminClient, bootstrap: str,
                 settings: RuntimeSettings | None) -> None:
    """Start ``admin``; when it cannot bootstrap, raise a ``KafkaConnectError`` saying why."""
    try:
        await admin.start()
    except KafkaConnectionError:
        await admin.close()
        raise await connect_failure(bootstrap, settings) from None


async def cluster_metadata(bootstrap: str, *, timeout: float = 5.0,
                           settings: RuntimeSettings | None = None) -> dict[str, Any] | None:
    """The broker's cluster description, or None when it does not answer in time.

    Readiness means the broker answers a metadata request, not that its port is open.
    """
    # While the broker boots, aiokafka logs every refused connect at ERROR: that is the
    # expected answer to this probe, not news for the operator.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = _admin(bootstrap, settings, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        described: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), timeout)
        return described if described.get("brokers") else None
    except (TimeoutError, OSError):
        return None
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap: str, *, prefix: str | None = None, specs: list[TopicSpec] | None = None,
    settings: RuntimeSettings | None = None,
) -> list[str]:
    """Create the catalogue topics (and their DLQs) that do not exist yet; return those created.

    Raises :class:`~services.runtime.kafka_security.KafkaConnectError` with the cause when the
    broker cannot be reached or refuses the credentials.
    """
    wanted = specs if specs is not None else all_topics(prefix)
    admin = _admin(bootstrap, settings)
    await _start(admin, bootstrap, settings)
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


async def delete_topics_with_prefix(bootstrap: str, prefix: str, *,
                                   settings: RuntimeSettings | None = None) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a finished test run's)."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = _admin(bootstrap, settings)
    await _start(admin, bootstrap, settings)
    try:
        doomed = [name for name in await admin.list_topics() if name.startswith(prefix)]
        for start in range(0, len(doomed), 100):
            await admin.delete_topics(doomed[start:start + 100], timeout_ms=60000)
        return doomed
    finally:
        await admin.close()
