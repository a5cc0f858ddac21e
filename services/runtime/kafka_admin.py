"""Kafka administration the stack, the services and the tests share: readiness and topics.

Services call :func:`ensure_topics` (``KAFKA_CREATE_TOPICS=true``, the default) or
:func:`require_topics` (``false``: an administrator created them) at start, each with only
the topics it uses (:meth:`services.runtime.service.ServiceRuntime.topic_specs`), so a
principal whose ACLs cover its own topics never touches, or trips over, another's.

Every function takes the bootstrap list and, optionally, the process's settings for TLS and
SASL (:mod:`services.runtime.kafka_security`); without settings the connection is
PLAINTEXT, as the local stack's broker is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code
from aiokafka.protocol.metadata import MetadataRequest

from schemas.topics import TopicSpec, all_topics
from services.runtime.kafka_security import kafka_security_options, start_client
from services.runtime.settings import RuntimeSettings


def _admin(bootstrap: str, settings: RuntimeSettings | None, **extra: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_security_options(settings),
                               **extra)


async def _start(admin: AIOKafkaAdminClient, bootstrap: str,
                 settings: RuntimeSettings | None) -> None:
    await start_client(admin.start, admin.close, bootstrap, settings)


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


class TopicsError(RuntimeError):
    """The Kafka topics a process needs are missing, not visible to its principal, or cannot
    be created. One line naming the topics and what to do: an operator's fix, not a bug."""


# Kafka error codes the topic checks tell apart (aiokafka.errors has them as classes).
_MISSING = 3  # UNKNOWN_TOPIC_OR_PARTITION: the principal may describe it; it does not exist
_NOT_AUTHORIZED = (29, 31)  # TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED
_ALREADY_EXISTS = 36  # TOPIC_ALREADY_EXISTS: another process raced us to it, which is fine


async def _topic_states(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """The metadata error code of each topic: 0 (or a transient code) when it exists and the
    principal may describe it, 3 when it does not exist, 29 when the principal may not
    describe it (Kafka answers 29 whether or not it exists: ACLs do not leak names).

    Asked topic by topic, not by listing every topic: under per-service ACLs a listing holds
    only what the principal may describe, so other services' topics would look missing.
    ``allow_auto_topic_creation=False``: asking must never create (aiokafka's
    ``describe_topics`` allows it, which a broker with auto-creation on would obey).
    """
    if not names:
        return {}
    response = await admin._send_request(  # private: see the docstring
        MetadataRequest(names, allow_auto_topic_creation=False))
    return {t["topic"]: t["error_code"] for t in response.to_object()["topics"]}


def _principal(settings: RuntimeSettings | None) -> str:
    """`` for user 'svc'`` under SASL (whose ACLs are at stake), else nothing."""
    if settings is None or settings.kafka_sasl_mechanism_effective is None:
        return ""
    return f" for user {settings.kafka_sasl_username!r}"


def _error_name(code: int) -> str:
    return str(getattr(for_code(code), "message", code))


async def ensure_topics(
    bootstrap: str, *, prefix: str | None = None, specs: list[TopicSpec] | None = None,
    settings: RuntimeSettings | None = None,
) -> list[str]:
    """Create those of ``specs`` (default: every catalogue topic and DLQ) that do not exist;
    return the names created.

    New topics get ``KAFKA_REPLICATION_FACTOR`` replicas and, when set,
    ``KAFKA_MIN_INSYNC_REPLICAS`` (from ``settings``; 1 and the broker's default without).
    Raises :class:`~services.runtime.kafka_security.KafkaConnectError` with the cause when the
    broker cannot be reached or refuses the credentials, and :class:`TopicsError` when the
    broker refuses to create a topic (not authorized: ACLs; a replication factor above the
    broker count; a policy).
    """
    wanted = specs if specs is not None else all_topics(prefix)
    replication = settings.kafka_replication_factor if settings is not None else 1
    min_insync = settings.kafka_min_insync_replicas if settings is not None else None
    configs = {"min.insync.replicas": str(min_insync)} if min_insync is not None else {}
    admin = _admin(bootstrap, settings)
    await _start(admin, bootstrap, settings)
    try:
        states = await _topic_states(admin, [s.name for s in wanted])
        absent = [s for s in wanted
                  if states.get(s.name, _MISSING) in (_MISSING, *_NOT_AUTHORIZED)]
        if not absent:
            return []
        response = await admin.create_topics(
            [NewTopic(name=s.name, num_partitions=s.partitions,
                      replication_factor=replication, topic_configs={**configs, **dict(s.configs)})
             for s in absent],
            timeout_ms=30000,
        )
        codes = {t[0]: (t[1], t[2] if len(t) > 2 else None) for t in response.topic_errors}
        refused = sorted(n for n, (code, _) in codes.items() if code in _NOT_AUTHORIZED)
        if refused:
            raise TopicsError(
                f"not authorized to create Kafka topics{_principal(settings)}: "
                f"{', '.join(refused)}. An administrator creates them (`intervene topics "
                "create`) and grants this service's ACLs; then set KAFKA_CREATE_TOPICS=false "
                "(docs/operations.md)")
        failed = sorted((n, code, text) for n, (code, text) in codes.items()
                        if code not in (0, _ALREADY_EXISTS))
        if failed:
            causes = "; ".join(f"{n}: {_error_name(code)}" + (f" ({text})" if text else "")
                               for n, code, text in failed)
            raise TopicsError(f"creating Kafka topics failed (KAFKA_REPLICATION_FACTOR="
                              f"{replication}): {causes}")
        return [s.name for s in absent if codes.get(s.name, (0, None))[0] == 0]
    finally:
        await admin.close()


async def require_topics(bootstrap: str, specs: list[TopicSpec], *,
                         settings: RuntimeSettings | None = None) -> None:
    """Check that every topic of ``specs`` exists and the principal may describe it; create
    nothing (``KAFKA_CREATE_TOPICS=false``). Raises :class:`TopicsError` naming the topics
    that are missing and those the principal may not describe, or ``KafkaConnectError``.
    """
    admin = _admin(bootstrap, settings)
    await _start(admin, bootstrap, settings)
    try:
        states = await _topic_states(admin, [s.name for s in specs])
    finally:
        await admin.close()
    missing = [s.name for s in specs if states.get(s.name, _MISSING) == _MISSING]
    hidden = [s.name for s in specs if states.get(s.name) in _NOT_AUTHORIZED]
    problems = []
    if missing:
        problems.append(f"missing on {bootstrap}: {', '.join(missing)}")
    if hidden:
        problems.append(f"not authorized{_principal(settings)} (no Describe, Read or Write "
                        f"ACL): {', '.join(hidden)}")
    if problems:
        raise TopicsError(
            f"Kafka topics {'; '.join(problems)}. KAFKA_CREATE_TOPICS=false: an administrator "
            "creates the topics (`intervene topics create`) and grants this service's ACLs "
            "(docs/operations.md)")


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
