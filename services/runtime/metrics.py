"""Runtime metrics every consumer records (OpenTelemetry instruments, bounded attributes).

FastStream's telemetry middleware already records ``messaging.process.duration`` and
``messaging.publish.duration``; these add what only the runtime knows: outcomes after
retries, duplicates dropped, messages sent to a DLQ, how far each consumer is behind its
partitions, and how long each runbook step took on a customer's server. Attributes are
topic names, partition numbers, consumer groups, runbook/step names and small enums —
never ticket ids. The catalogue of names and alerts is docs/operations-metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from aiokafka import TopicPartition
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

# Bucket boundaries in seconds. The SDK's default boundaries (0, 5, 10, 25, ... 10000) are
# meant for milliseconds: in seconds they would put every handler run in the first bucket.
# Floats, so the exported ``le`` labels read "600.0" — what Prometheus 3 normalises to.
HANDLER_SECONDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A runbook step may install packages or wait for a service to settle: up to tens of minutes.
STEP_SECONDS: tuple[float, ...] = (
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# The engine's step spans carry these attributes (services/executor/runbooks/engine.py);
# tests/unit/runtime/test_runtime_metrics.py runs the engine to keep the two in step.
STEP_SPAN_RUNBOOK = "runbook"
STEP_SPAN_STEP = "step"
STEP_SPAN_RESULT = "step.result"
STEP_SPAN_DRY_RUN = "dry_run"


def metric_views() -> list[View]:
    """Views every service's MeterProvider gets: seconds buckets for FastStream's own
    duration histograms, whose instruments we do not create and so cannot advise."""
    return [View(instrument_name="messaging.*.duration",
                 aggregation=ExplicitBucketHistogramAggregation(HANDLER_SECONDS))]


@runtime_checkable
class PartitionView(Protocol):
    """What lag needs from a Kafka consumer (aiokafka's ``AIOKafkaConsumer`` has both)."""

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def assignment(self) -> set[TopicPartition]: ...


@dataclass(kw_only=True)
class _Position:
    consumer: PartitionView
    physical_topic: str
    next_offset: int  # the offset of the next message this consumer will be handed


class RuntimeMetrics:
    def __init__(self, meter_provider: MeterProvider, service_name: str) -> None:
        meter = meter_provider.get_meter(f"intervention.{service_name}")
        self._meter = meter
        self._handled = meter.create_counter(
            "intervention.messages.handled", unit="{message}",
            description="Handler runs by topic and outcome (ok, error).",
        )
        self._duration = meter.create_histogram(
            "intervention.handler.duration", unit="s", description="Handler run time.",
            explicit_bucket_boundaries_advisory=HANDLER_SECONDS,
        )
        self._duplicates = meter.create_counter(
            "intervention.messages.duplicates", unit="{message}",
            description="Redelivered messages dropped because they were already processed.",
        )
        self._dlq = meter.create_counter(
            "intervention.dlq.messages", unit="{message}",
            description="Messages sent to a dead-letter topic, by reason (decode, handler).",
        )
        self._published = meter.create_counter(
            "intervention.messages.published", unit="{message}",
            description="Events published by topic.",
        )
        # (catalogue topic, partition, consumer group) -> where that consumer stands.
        self._positions: dict[tuple[str, int, str], _Position] = {}
        meter.create_observable_gauge(
            "intervention.consumer.lag", callbacks=[self._observe_lag], unit="{message}",
            description="Messages in a partition not yet handed to its consumer "
                        "(the partition's high watermark minus the consumer's position).",
        )
        self._steps = meter.create_histogram(
            "intervention.runbook.step.duration", unit="s",
            description="Run time of each runbook step on a customer's server, by runbook, "
                        "step and result.",
            explicit_bucket_boundaries_advisory=STEP_SECONDS,
        )
        self.runbook_steps = RunbookStepRecorder(self)
        self._outage_waits = meter.create_counter(
            "intervention.outage.waits", unit="{wait}",
            description="Waits of a consumer for Kafka or the store to come back, by "
                        "dependency (the message is retried, never dead-lettered for it).",
        )
        self._dependencies: Any = None
        meter.create_observable_gauge(
            "intervention.dependency.up", callbacks=[self._observe_dependencies],
            description="1 while the dependency (kafka, mongodb) answers, 0 during an outage.",
        )

    def subscribed(self, topic: str) -> None:
        """Start a consumed topic's counters at zero.

        A counter series appears with its first increment, and Prometheus's ``increase()``
        cannot see a series' first value: without this, the first DLQ message or handler
        error after every restart would never alert.
        """
        attrs = {"messaging.destination.name": topic}
        for outcome in ("ok", "error"):
            self._handled.add(0, {**attrs, "outcome": outcome})
        for reason in ("decode", "handler"):
            self._dlq.add(0, {**attrs, "reason": reason})
        self._duplicates.add(0, attrs)

    def handled(self, topic: str, outcome: str, seconds: float) -> None:
        attrs = {"messaging.destination.name": topic, "outcome": outcome}
        self._handled.add(1, attrs)
        self._duration.record(seconds, attrs)

    def duplicate(self, topic: str) -> None:
        self._duplicates.add(1, {"messaging.destination.name": topic})

    def dlq(self, topic: str, reason: str) -> None:
        self._dlq.add(1, {"messaging.destination.name": topic, "reason": reason})

    def outage_wait(self, topic: str, dependency: str) -> None:
        self._outage_waits.add(1, {"messaging.destination.name": topic,
                                   "dependency": dependency})

    def watch_dependencies(self, dependencies: Any) -> None:
        """Export ``dependencies`` (a :class:`~services.runtime.dependencies.Dependencies`)."""
        self._dependencies = dependencies

    def _observe_dependencies(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._dependencies is None:
            return []
        return [Observation(int(self._dependencies.status(name).ok), {"dependency": name})
                for name in ("kafka", "mongodb")]

    def watch_work(self, *, queued: Callable[[], int], running: Callable[[], int],
                   concurrency: int, queue_size: int,
                   oldest_wait: Callable[[], float] = lambda: 0.0) -> None:
        """The executor's bounded work queue: what waits, what runs, and the limits, so a
        saturated executor shows before the initial-response clocks run out."""
        meter = self._meter
        limits = {"concurrency": concurrency, "queue_size": queue_size}

        def observe(value: Callable[[], float]
                    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return lambda _options: [Observation(value())]

        meter.create_observable_gauge(
            "intervention.executor.queued", callbacks=[observe(queued)], unit="{claim}",
            description="Interventions accepted and waiting for a free worker.")
        meter.create_observable_gauge(
            "intervention.executor.running", callbacks=[observe(running)], unit="{claim}",
            description="Interventions running now.")
        meter.create_observable_gauge(
            "intervention.executor.oldest_queued_age", callbacks=[observe(oldest_wait)],
            unit="s", description="How long the longest-waiting queued intervention has "
                                  "waited for a free worker (0 when none waits).")
        meter.create_observable_gauge(
            "intervention.executor.limit", unit="{claim}",
            callbacks=[lambda _options: [Observation(v, {"limit": k})
                                         for k, v in limits.items()]],
            description="The executor's concurrency and queue size (EXECUTOR_CONCURRENCY, "
                        "EXECUTOR_QUEUE_SIZE).")

    def published(self, topic: str) -> None:
        self._published.add(1, {"messaging.destination.name": topic})

    def consuming(self, *, topic: str, group: str, physical_topic: str, partition: int,
                  offset: int, consumer: object) -> None:
        """A consumer was handed the message at ``offset``: its position is the next one.

        Lag is computed when metrics are read, from the high watermark aiokafka learnt on
        its latest fetch, so it keeps growing while a consumer falls behind. A consumer
        that is not a real Kafka consumer (FastStream's in-memory test broker) is ignored.
        """
        if not isinstance(consumer, PartitionView):
            return
        self._positions[(topic, partition, group)] = _Position(
            consumer=consumer, physical_topic=physical_topic, next_offset=offset + 1)

    def step(self, *, runbook: str, step: str, result: str, dry_run: bool,
             seconds: float) -> None:
        self._steps.record(seconds, {"runbook": runbook, "step": step, "result": result,
                                     "dry_run": "true" if dry_run else "false"})

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        for key, position in list(self._positions.items()):
            topic, partition, group = key
            tp = TopicPartition(position.physical_topic, partition)
            try:
                assigned = tp in position.consumer.assignment()
                highwater = position.consumer.highwater(tp) if assigned else None
            except Exception:  # noqa: BLE001 - a stopped consumer: forget it, never fail a scrape
                assigned, highwater = False, None
            if not assigned:
                # Revoked in a rebalance (another consumer reports it now) or stopped.
                del self._positions[key]
                continue
            if highwater is None:
                continue  # no fetch answered yet: unknown, not zero
            yield Observation(max(0, highwater - position.next_offset), {
                "messaging.destination.name": topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.consumer.group.name": group,
            })


class RunbookStepRecorder(SpanProcessor):
    """Turns the runbook engine's finished step spans into ``intervention.runbook.step.duration``.

    The engine already opens one span per step with the runbook, the step and its result
    (``handed_over`` when an engineer must take over); measuring the span keeps the executor
    free of metric plumbing, and a span and its metric can never disagree.
    """

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self._metrics = metrics

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do until the step ends."""

    def on_end(self, span: ReadableSpan) -> None:
        attrs: Any = span.attributes or {}
        runbook, step = attrs.get(STEP_SPAN_RUNBOOK), attrs.get(STEP_SPAN_STEP)
        if runbook is None or step is None or span.start_time is None or span.end_time is None:
            return
        self._metrics.step(runbook=str(runbook), step=str(step),
                           result=str(attrs.get(STEP_SPAN_RESULT, "error")),
                           dry_run=bool(attrs.get(STEP_SPAN_DRY_RUN, False)),
                           seconds=(span.end_time - span.start_time) / 1e9)

    def shutdown(self) -> None:
        """Holds nothing."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

