"""Session fixtures: the real Kafka broker and MongoDB-wire store every integration test uses.

Where they come from, in order (ARCHITECTURE §3):
1. ``KAFKA_BOOTSTRAP_SERVERS`` / ``MONGODB_URI`` when set;
2. testcontainers (Kafka, MongoDB) when a Docker engine answers;
3. the Docker-free local stack: reused when it already answers on 127.0.0.1, else started
   here and stopped at the end of the session.

Each session gets its own topic prefix and database, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from devstack import localstack
from services.runtime.kafka_admin import delete_topics_with_prefix, ensure_topics


@dataclass(frozen=True)
class RealParts:
    bootstrap: str
    mongodb_uri: str
    origin: str  # "environment", "testcontainers" or "local-stack"


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_USED: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which real parts the integration tests ran against, at the end of every run."""
    for line in _USED:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def real_parts() -> Iterator[RealParts]:
    for parts in _real_parts():
        _USED.append(f"real parts: Kafka {parts.bootstrap}, MongoDB wire {parts.mongodb_uri} "
                     f"(from {parts.origin})")
        yield parts


def _real_parts() -> Iterator[RealParts]:
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    env_mongo = os.environ.get("MONGODB_URI")
    if env_kafka and env_mongo:
        yield RealParts(bootstrap=env_kafka, mongodb_uri=env_mongo, origin="environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.mongodb import MongoDbContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka, \
                MongoDbContainer("mongo:7") as mongo:
            yield RealParts(bootstrap=kafka.get_bootstrap_server(),
                            mongodb_uri=mongo.get_connection_url(), origin="testcontainers")
        return
    with ExitStack() as stack:
        started = [c for c in localstack.infrastructure() if c.record() is None]
        for comp in started:
            _USED.append(comp.start())
            stack.callback(comp.stop)
        yield RealParts(bootstrap=localstack.kafka_bootstrap(),
                        mongodb_uri=localstack.mongodb_uri(), origin="local-stack")


# One partition per test topic (see schemas.topics.DEFAULT_PARTITIONS); read at creation.
os.environ.setdefault("KAFKA_TOPIC_PARTITIONS", "1")


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def topic_prefix(real_parts: RealParts, run_id: str) -> Iterator[str]:
    """Catalogue topics (and DLQs) under this run's prefix; services read the same variable."""
    prefix = f"t{run_id}."
    old = os.environ.get("KAFKA_TOPIC_PREFIX")
    os.environ["KAFKA_TOPIC_PREFIX"] = prefix
    asyncio.run(ensure_topics(real_parts.bootstrap, prefix=prefix))
    yield prefix
    # Every topic this run made (rigs nest their prefixes under this one) goes with it.
    asyncio.run(delete_topics_with_prefix(real_parts.bootstrap, prefix))
    if old is None:
        os.environ.pop("KAFKA_TOPIC_PREFIX", None)
    else:
        os.environ["KAFKA_TOPIC_PREFIX"] = old


@pytest.fixture(scope="session")
def kafka_bootstrap(real_parts: RealParts, topic_prefix: str) -> str:
    return real_parts.bootstrap


@pytest.fixture(scope="session")
def database_name(run_id: str) -> str:
    return f"test_{run_id}"


@pytest.fixture(scope="session")
async def mongo_client(real_parts: RealParts) -> AsyncIterator[AsyncMongoClient[dict[str, object]]]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(real_parts.mongodb_uri)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def mongo_db(
    mongo_client: AsyncMongoClient[dict[str, object]], database_name: str
) -> AsyncIterator[AsyncDatabase[dict[str, object]]]:
    """This run's own database, dropped at the end of the session."""
    yield mongo_client[database_name]
    await mongo_client.drop_database(database_name)


@pytest.fixture
def unique() -> str:
    """A short unique token for names inside one test (collections, groups, tickets)."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def read_topic(kafka_bootstrap: str):  # type: ignore[no-untyped-def]
    """Read a topic from the beginning without a consumer group: ``[(key, value, headers)]``.

    Waits until at least ``expect`` records arrived (or ``timeout`` passed), then returns all.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read(topic: str, *, expect: int = 1, timeout: float = 30.0
                   ) -> list[tuple[bytes | None, bytes, dict[str, str]]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in
                     sorted(consumer.partitions_for_topic(topic) or
                            await _partitions(consumer, topic))]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            out: list[tuple[bytes | None, bytes, dict[str, str]]] = []
            deadline = asyncio.get_running_loop().time() + timeout
            while len(out) < expect and asyncio.get_running_loop().time() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend((r.key, r.value, {k: v.decode() for k, v in r.headers})
                               for r in records)
            # Drain anything else already there, so tests also see unexpected extras.
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend((r.key, r.value, {k: v.decode() for k, v in r.headers})
                           for r in records)
            return out
        finally:
            await consumer.stop()

    return read


async def _partitions(consumer: object, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
    return consumer.partitions_for_topic(topic) or set()  # type: ignore[attr-defined,no-any-return]
