"""The event-loop lag gauge: a loop held busy by synchronous work shows as lag, on /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime.loop_lag import LoopLag


def _scraped(registry: CollectorRegistry) -> dict[str, float]:
    return {s.name: s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples if s.name.startswith("intervention_event_loop_lag")}


async def test_a_loop_held_by_synchronous_work_records_that_much_lag() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)]),
                  interval_s=0.01)
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.1)  # idle: only scheduling noise
        quiet = lag.worst
        time.sleep(0.3)  # noqa: ASYNC251 - a handler doing CPU work without yielding
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert quiet < 0.1
    assert lag.worst >= 0.25
    samples = _scraped(registry)
    assert samples["intervention_event_loop_lag_seconds_count"] >= 5
    assert samples["intervention_event_loop_lag_seconds_sum"] >= 0.25
