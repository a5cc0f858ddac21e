"""How late a service's event loop runs what is due: its own latency, apart from the store's
and the broker's.

Issue 17's benchmark saw the executor wait ~100-280 ms for store commands that a probe on its
own connection got answered in under 2 ms at the same moment: the wait was in the process,
not in the store. Everything a service does shares one asyncio loop (its consumers' lanes,
the executor's runs, the outbox relay), so a loop busy with one thing delays every other
thing's replies. This measures it the way Node's ``monitorEventLoopDelay`` does: a task that
sleeps ``interval`` and records by how much it overslept, as the histogram
``intervention.event_loop.lag`` (seconds), on each service's ``/metrics``. Cost: one wake-up
per interval (10 per second).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from opentelemetry.metrics import MeterProvider

__all__ = ["LAG_METRIC", "LoopLag"]

LAG_METRIC = "intervention.event_loop.lag"


class LoopLag:
    def __init__(self, meter_provider: MeterProvider, *, interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self._histogram = meter_provider.get_meter("intervention.runtime").create_histogram(
            LAG_METRIC, unit="s",
            description="How late the service's event loop woke a task that slept a fixed "
                        "interval: time the loop was busy with other work.")
        self.worst = 0.0  # the largest lag seen (tests, logs)

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            began = self._clock()
            await asyncio.sleep(self._interval)
            lag = max(0.0, self._clock() - began - self._interval)
            self.worst = max(self.worst, lag)
            self._histogram.record(lag)
