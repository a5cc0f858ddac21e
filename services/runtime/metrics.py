"""Runtime metrics every consumer records (OpenTelemetry instruments, bounded attributes).

FastStream's telemetry middleware already records ``messaging.process.duration`` and
``messaging.publish.duration``; these add what only the runtime knows: outcomes after
retries, duplicates dropped, and messages sent to a DLQ. Attributes are topic names and
small enums — never ticket ids.
"""

from __future__ import annotations

from opentelemetry.metrics import MeterProvider


class RuntimeMetrics:
    def __init__(self, meter_provider: MeterProvider, service_name: str) -> None:
        meter = meter_provider.get_meter(f"intervention.{service_name}")
        self._handled = meter.create_counter(
            "intervention.messages.handled", unit="{message}",
            description="Handler runs by topic and outcome (ok, error).",
        )
        self._duration = meter.create_histogram(
            "intervention.handler.duration", unit="s", description="Handler run time.",
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

    def handled(self, topic: str, outcome: str, seconds: float) -> None:
        attrs = {"messaging.destination.name": topic, "outcome": outcome}
        self._handled.add(1, attrs)
        self._duration.record(seconds, attrs)

    def duplicate(self, topic: str) -> None:
        self._duplicates.add(1, {"messaging.destination.name": topic})

    def dlq(self, topic: str, reason: str) -> None:
        self._dlq.add(1, {"messaging.destination.name": topic, "reason": reason})

    def published(self, topic: str) -> None:
        self._published.add(1, {"messaging.destination.name": topic})
