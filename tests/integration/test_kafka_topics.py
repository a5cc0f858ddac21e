"""Which topics a service creates or checks at start, against the real broker.

- ``KAFKA_CREATE_TOPICS=false``: a service whose topics are missing refuses to start with
  one line naming exactly the missing ones, and creates nothing; with its topics present it
  starts and creates nothing;
- ``KAFKA_CREATE_TOPICS=true`` (the default): a service creates only the topics it uses
  (consumed, their DLQs, produced), not the whole catalogue;
- ``KAFKA_REPLICATION_FACTOR`` / ``KAFKA_MIN_INSYNC_REPLICAS`` reach the created topics, and
  a factor the cluster cannot honour is one clear error (services and ``intervene topics
  create`` alike).

Each test works under its own prefix inside the run's (deleted with it at the end).
The ACL case (a principal allowed only its own topics) is in ``test_kafka_security.py``,
on the broker with an authorizer.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.registry import topic_for, topics_produced_by
from schemas.topics import AUDIT_ANCHORED, DLQ_SUFFIX, TopicSpec, all_topics, physical
from services.auth.app import AuthService, build
from services.auth.settings import AuthSettings
from services.cli.main import main as intervene
from services.runtime.kafka_admin import TopicsError, ensure_topics
from services.runtime.keys import init_keys

pytestmark = pytest.mark.integration

AUTH_TOPICS = sorted({
    "intervention.ticket-submitted", "intervention.ticket-submitted" + DLQ_SUFFIX,
    "intervention.authorization-verified", "intervention.authorization-rejected",
    "intervention.clarification-requested",
    AUDIT_ANCHORED,  # every service anchors the heads of its audit chains
})


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


async def _topics_under(admin: AIOKafkaAdminClient, prefix: str) -> list[str]:
    return sorted(t.removeprefix(prefix) for t in await admin.list_topics()
                  if t.startswith(prefix))


async def _visible(admin: AIOKafkaAdminClient, prefix: str, names: list[str]) -> None:
    """Wait until the broker's metadata lists topics just created (it lags the creation a
    moment; a start checking them in between would find one "missing")."""
    for _ in range(100):
        if await _topics_under(admin, prefix) == sorted(names):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"topics under {prefix} never became visible")


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_keys(tmp_path_factory.mktemp("keys")).directory


def _auth(kafka_bootstrap: str, prefix: str, real_parts: Any, database_name: str,
          keys_dir: Path, **settings: Any) -> AuthService:
    return build(AuthSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,
        intervention_keys_dir=str(keys_dir), **settings,
    ))


def test_auth_declares_exactly_the_topics_it_uses() -> None:
    # What auth consumes (with its DLQ) and what the schemas say it produces.
    assert sorted(topics_produced_by("auth")) == sorted(
        t for t in AUTH_TOPICS if "ticket-submitted" not in t and t != AUDIT_ANCHORED)
    assert topic_for("TicketSubmitted") in AUTH_TOPICS


async def test_without_creation_a_missing_topic_stops_the_start_naming_it(
    kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
    keys_dir: Path, unique: str, admin: AIOKafkaAdminClient,
) -> None:
    prefix = f"{topic_prefix}nc{unique}."
    missing = "intervention.authorization-rejected"
    present = [t for t in AUTH_TOPICS if t != missing]
    await ensure_topics(kafka_bootstrap, specs=[TopicSpec(name=physical(t, prefix))
                                                for t in present])
    await _visible(admin, prefix, present)
    service = _auth(kafka_bootstrap, prefix, real_parts, database_name, keys_dir,
                    kafka_create_topics=False)
    try:
        with pytest.raises(TopicsError) as refused:
            await service.start()
    finally:
        await service.stop()
    message = str(refused.value)
    assert "\n" not in message
    assert f"missing on {kafka_bootstrap}: {physical(missing, prefix)}." in message
    assert "KAFKA_CREATE_TOPICS=false" in message
    assert "intervene topics create" in message
    for name in present:  # only the missing one is named
        assert physical(name, prefix) not in message
    # Nothing was created: the missing topic is still missing.
    assert await _topics_under(admin, prefix) == sorted(present)


async def test_without_creation_a_service_with_its_topics_starts_and_creates_nothing(
    kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
    keys_dir: Path, unique: str, admin: AIOKafkaAdminClient,
) -> None:
    # Only auth's own topics exist under this prefix: none of the rest of the catalogue.
    prefix = f"{topic_prefix}ok{unique}."
    await ensure_topics(kafka_bootstrap, specs=[TopicSpec(name=physical(t, prefix))
                                                for t in AUTH_TOPICS])
    await _visible(admin, prefix, AUTH_TOPICS)
    service = _auth(kafka_bootstrap, prefix, real_parts, database_name, keys_dir,
                    kafka_create_topics=False)
    await service.start()
    try:
        assert [s.name for s in service.runtime.topic_specs()] == [
            physical(t, prefix) for t in AUTH_TOPICS]
    finally:
        await service.stop()
    assert await _topics_under(admin, prefix) == AUTH_TOPICS


async def test_with_creation_a_service_creates_only_its_own_topics(
    kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
    keys_dir: Path, unique: str, admin: AIOKafkaAdminClient,
) -> None:
    prefix = f"{topic_prefix}own{unique}."
    service = _auth(kafka_bootstrap, prefix, real_parts, database_name, keys_dir,
                    kafka_min_insync_replicas=1)
    await service.start()
    await service.stop()
    assert await _topics_under(admin, prefix) == AUTH_TOPICS
    assert len(AUTH_TOPICS) < len(all_topics(prefix))
    # KAFKA_MIN_INSYNC_REPLICAS is set on the topics created.
    for topic in AUTH_TOPICS:
        [described] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, physical(topic, prefix),
                            {"min.insync.replicas": None})])
        [resource] = described.to_object()["resources"]
        [entry] = resource["config_entries"]
        assert entry["config_value"] == "1"
        assert entry["config_source"] == 1  # DYNAMIC_TOPIC_CONFIG: set on the topic itself
    # The audit anchors are compacted: the newest head of every ticket is kept for good.
    [described] = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, physical(AUDIT_ANCHORED, prefix),
                        {"cleanup.policy": None})])
    [resource] = described.to_object()["resources"]
    [entry] = resource["config_entries"]
    assert entry["config_value"] == "compact"


async def test_a_replication_factor_the_cluster_cannot_honour_is_one_clear_error(
    kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
    keys_dir: Path, unique: str, admin: AIOKafkaAdminClient,
) -> None:
    prefix = f"{topic_prefix}rf{unique}."
    service = _auth(kafka_bootstrap, prefix, real_parts, database_name, keys_dir,
                    kafka_replication_factor=3)  # the local stack has one broker
    try:
        with pytest.raises(TopicsError) as refused:
            await service.start()
    finally:
        await service.stop()
    message = str(refused.value)
    assert "\n" not in message
    assert "KAFKA_REPLICATION_FACTOR=3" in message
    assert "INVALID_REPLICATION_FACTOR" in message
    assert await _topics_under(admin, prefix) == []


def test_intervene_topics_create_applies_the_replication_settings(
    kafka_bootstrap: str, topic_prefix: str, unique: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"{topic_prefix}cli{unique}."
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", prefix)
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "2")
    assert intervene(["topics", "create"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: creating Kafka topics failed (KAFKA_REPLICATION_FACTOR=2)")

    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "1")
    assert intervene(["topics", "create"]) == 0
    out = capsys.readouterr().out
    assert (f"topics: {len(all_topics(prefix))} created (replication factor 1, "
            "min.insync.replicas 1)") in out
    assert intervene(["topics", "create"]) == 0
    assert capsys.readouterr().out.strip() == "topics: all present"


def test_the_service_process_refuses_in_one_line_and_exit_2(
    kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
    unique: str, keys_dir: Path,
) -> None:
    # The notifier (with its signing key) on a prefix without any topic.
    prefix = f"{topic_prefix}proc{unique}."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "OTEL_", "OPS_"))}
    env.update({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
                "KAFKA_CREATE_TOPICS": "false", "MONGODB_URI": real_parts.mongodb_uri,
                "MONGODB_DATABASE": database_name,
                "INTERVENTION_KEYS_DIR": str(keys_dir)})
    done = subprocess.run([sys.executable, "-m", "services.notifier"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    # Before it, FastStream's JSON log line "app starting"; the refusal is one plain line.
    *logs, line = done.stderr.strip().splitlines()
    assert all(log.startswith("{") for log in logs)
    assert line.startswith("notifier: Kafka topics missing on ")
    for topic in topics_produced_by("notifier"):
        assert physical(topic, prefix) in line
    assert physical("intervention.ticket-submitted" + DLQ_SUFFIX, prefix) in line
    assert physical("helpdesk.ticket-requests", prefix) not in line  # not the notifier's
