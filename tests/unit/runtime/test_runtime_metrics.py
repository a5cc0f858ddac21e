"""The runtime's own metrics: consumer lag per partition, and runbook step durations."""

from __future__ import annotations

import sys
from pathlib import Path

from aiokafka import TopicPartition
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "executor"))
from executor_fakes import FakeHost, FakeIssuer, FakeJournal, FakeLog, FakeSink, ok

from services.executor.runbooks.engine import Engine
from services.executor.runbooks.model import Command, Runbook, RunOptions, Step
from services.runtime.metrics import RuntimeMetrics, metric_views

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _metrics() -> tuple[RuntimeMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)],
                             views=metric_views())
    return RuntimeMetrics(provider, "test"), registry


def _scrape(registry: CollectorRegistry) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


class FakeConsumer:
    """What aiokafka's consumer answers about its partitions."""

    def __init__(self) -> None:
        self.highwaters: dict[TopicPartition, int] = {}
        self.assigned: set[TopicPartition] = set()

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.highwaters.get(partition)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)


def _lag(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    return {(lb["messaging_destination_name"], lb["messaging_destination_partition_id"],
             lb["messaging_consumer_group_name"]): v
            for lb, v in _scrape(registry).get("intervention_consumer_lag", [])}


def test_lag_is_the_high_watermark_minus_the_consumers_position_per_partition() -> None:
    metrics, registry = _metrics()
    consumer = FakeConsumer()
    p0, p1 = TopicPartition("px.intervention.ticket-submitted", 0), \
        TopicPartition("px.intervention.ticket-submitted", 1)
    consumer.assigned = {p0, p1}
    consumer.highwaters = {p0: 120, p1: 8}
    for partition, offset in ((0, 99), (1, 7)):
        metrics.consuming(topic="intervention.ticket-submitted", group="auth",
                          physical_topic=p0.topic, partition=partition, offset=offset,
                          consumer=consumer)
    # Labels carry the catalogue topic and group, not the run's prefix.
    assert _lag(registry) == {("intervention.ticket-submitted", "0", "auth"): 20,
                              ("intervention.ticket-submitted", "1", "auth"): 0}

    consumer.highwaters[p0] = 150  # more arrived while the consumer sat on offset 99
    assert _lag(registry)[("intervention.ticket-submitted", "0", "auth")] == 50


def test_a_revoked_partition_is_no_longer_reported_by_this_consumer() -> None:
    metrics, registry = _metrics()
    consumer = FakeConsumer()
    tp = TopicPartition("intervention.ticket-updated", 0)
    consumer.assigned, consumer.highwaters = {tp}, {tp: 5}
    metrics.consuming(topic="intervention.ticket-updated", group="g", physical_topic=tp.topic,
                      partition=0, offset=1, consumer=consumer)
    assert _lag(registry) == {("intervention.ticket-updated", "0", "g"): 3}
    consumer.assigned = set()
    assert _lag(registry) == {}


def test_lag_is_unknown_not_zero_before_a_fetch_and_ignored_for_in_memory_brokers() -> None:
    metrics, registry = _metrics()
    consumer = FakeConsumer()
    tp = TopicPartition("t", 0)
    consumer.assigned = {tp}
    metrics.consuming(topic="t", group="g", physical_topic="t", partition=0, offset=1,
                      consumer=consumer)
    metrics.consuming(topic="u", group="g", physical_topic="u", partition=0, offset=1,
                      consumer=object())  # FastStream's test broker: no partitions to ask
    assert _lag(registry) == {}


def test_handler_durations_use_second_buckets() -> None:
    metrics, registry = _metrics()
    metrics.handled("intervention.ticket-submitted", "ok", 0.03)
    buckets = {lb["le"]: v for lb, v in
               _scrape(registry)["intervention_handler_duration_seconds_bucket"]}
    assert (buckets["0.025"], buckets["0.05"]) == (0, 1)


class NoParams(BaseModel):
    model_config = ConfigDict(frozen=True)


def _step(name: str) -> Step[NoParams]:
    return Step(name=name, title=f"Step {name}",
                precheck=lambda ctx: [Command(argv=("check",), ok_exit=frozenset({0, 1}))],
                needed=lambda results, ctx: results[0].exit_status == 1,
                simulate=lambda ctx: [Command(argv=("simulate",))],
                change=lambda ctx: [Command(argv=("change",), root=True)],
                verify=lambda ctx: [Command(argv=("verify",))])


async def test_every_runbook_step_the_engine_runs_is_timed_by_runbook_step_and_result() -> None:
    metrics, registry = _metrics()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(metrics.runbook_steps)
    host = FakeHost(responder=lambda c: ok(exit_status=1 if c.argv == ("check",) else 0))
    engine = Engine(host=host, journal=FakeJournal(), log=FakeLog(), issuer=FakeIssuer(),
                    secrets_sink=FakeSink(), tracer=tracer_provider.get_tracer("test"),
                    options=RunOptions(dry_run=False, service_settle_s=0))
    runbook = Runbook(name="service_restart", category="service_restart", title="t",
                      platforms=frozenset({"linux"}), params=NoParams,
                      build=lambda p, platform: (_step("inspect"), _step("restart")))
    await engine.run(runbook, NoParams())

    counts = {(lb["runbook"], lb["step"], lb["result"], lb["dry_run"]): v for lb, v in
              _scrape(registry)["intervention_runbook_step_duration_seconds_count"]}
    assert counts == {("service_restart", "inspect", "changed", "false"): 1,
                      ("service_restart", "restart", "changed", "false"): 1}
