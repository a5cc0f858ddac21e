"""KAFKA_CREATE_TOPICS, KAFKA_REPLICATION_FACTOR, KAFKA_MIN_INSYNC_REPLICAS, and which topics
each service ensures (or checks) at start: its own, never the whole catalogue.

Against the real broker: ``tests/integration/test_kafka_topics.py`` and, under ACLs,
``tests/integration/test_kafka_security.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from schemas.events import EVENT_MODELS
from schemas.registry import producers_of, topic_for, topics_produced_by
from schemas.topics import AUDIT_ANCHORED, DLQ_SUFFIX, HELPDESK_REQUESTS, all_topics
from services.cli.commands_docs import service_runtimes
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings, SettingsError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_CREATE_TOPICS", "KAFKA_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS",
                 "KAFKA_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_suit_the_local_single_broker() -> None:
    settings = RuntimeSettings()
    assert settings.kafka_create_topics is True
    assert settings.kafka_replication_factor == 1
    assert settings.kafka_min_insync_replicas is None


def test_production_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_CREATE_TOPICS", "false")
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "2")
    settings = RuntimeSettings()
    assert settings.kafka_create_topics is False
    assert settings.kafka_replication_factor == 3
    assert settings.kafka_min_insync_replicas == 2


def test_a_blank_min_insync_replicas_is_the_broker_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "")  # as templates render an unset value
    assert RuntimeSettings().kafka_min_insync_replicas is None


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(SettingsError, match="KAFKA_MIN_INSYNC_REPLICAS=3 exceeds "
                                            "KAFKA_REPLICATION_FACTOR=2"):
        RuntimeSettings(kafka_replication_factor=2, kafka_min_insync_replicas=3)
    for bad in ({"kafka_replication_factor": 0}, {"kafka_min_insync_replicas": 0}):
        with pytest.raises(ValidationError, match="greater than or equal to 1"):
            RuntimeSettings(**bad)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def runtimes() -> Iterator[dict[str, ServiceRuntime]]:
    """The four services wired as they run (never connected)."""
    with service_runtimes() as wired:
        yield wired


EXPECTED_CONSUMED = {
    "intake": {HELPDESK_REQUESTS},
    "auth": {"intervention.ticket-submitted"},
    "executor": {"intervention.authorization-verified", "intervention.manual-step-completed"},
    "notifier": {"intervention.ticket-submitted", "intervention.ticket-rejected",
                 "intervention.authorization-rejected", "intervention.clarification-requested",
                 "intervention.intervention-queued", "intervention.intervention-started",
                 "intervention.manual-step-requested",
                 "intervention.manual-step-completed", "intervention.intervention-completed",
                 "intervention.hardware-escalated", "intervention.engineer-acknowledged"},
}


@pytest.mark.parametrize("service", sorted(EXPECTED_CONSUMED))
def test_each_service_ensures_only_the_topics_it_uses(
        service: str, runtimes: dict[str, ServiceRuntime]) -> None:
    runtime = runtimes[service]
    assert runtime.consumed_topics == EXPECTED_CONSUMED[service]
    produced = {topic_for(m) for m in EVENT_MODELS if service in producers_of(m)}
    assert produced
    produced.add(AUDIT_ANCHORED)  # every service anchors its audit heads
    assert runtime.produced_topics == produced
    expected = (EXPECTED_CONSUMED[service] | produced
                | {t + DLQ_SUFFIX for t in EXPECTED_CONSUMED[service]})
    names = [spec.name for spec in runtime.topic_specs()]
    assert names == sorted(expected)  # the default settings: no prefix
    assert set(names) < {spec.name for spec in all_topics("")}
    [anchors] = [spec for spec in runtime.topic_specs() if spec.name == AUDIT_ANCHORED]
    assert dict(anchors.configs) == {"cleanup.policy": "compact"}  # kept per ticket for good


def test_every_catalogue_topic_is_used_by_some_service_or_the_helpdesk(
        runtimes: dict[str, ServiceRuntime]) -> None:
    used = {spec.name for r in runtimes.values() for spec in r.topic_specs()}
    # No service consumes these (they are for the helpdesk side and dashboards), so their
    # DLQs are nobody's; `intervene topics create` still creates the whole catalogue.
    unconsumed = {topic_for(m) for m in EVENT_MODELS} - {
        t for consumed in EXPECTED_CONSUMED.values() for t in consumed}
    assert unconsumed == {"intervention.ticket-updated", "intervention.sla-warning",
                          "intervention.sla-breached"}
    assert {spec.name for spec in all_topics("")} - used == {
        t + DLQ_SUFFIX for t in unconsumed}


def test_the_prefix_applies_to_every_topic_a_service_ensures() -> None:
    settings = RuntimeSettings(kafka_topic_prefix="p1.")
    runtime = ServiceRuntime("x", settings, produces=topics_produced_by("auth"))
    runtime.consumes("intervention.ticket-submitted")
    assert all(spec.name.startswith("p1.intervention.") for spec in runtime.topic_specs())
    assert "p1.intervention.ticket-submitted.dlq" in {s.name for s in runtime.topic_specs()}
