"""When a queued intervention will roughly start (pure): the customer's "expected start".

The executor runs at most ``concurrency`` interventions at once; a claim accepted while every
worker is busy waits in line (:mod:`.worker`). Its start is estimated by playing the line
forward: each busy worker frees up when its run reaches the typical duration (at once, if it
has already run longer), each claim ahead takes the first worker to free up for a typical
duration, and this claim takes the first worker free after them.

The typical duration is the median of the recent runs (robust to one intervention that waited
hours for an engineer); before any run has finished it is ``default``. It is an estimate for
the customer ("roughly when"), not a promise: the notifier words it so.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class QueuePlace:
    """A claim's place in line: ``ahead`` claims wait before it, ``running_for`` are the
    seconds each run in progress has been going."""

    ahead: int
    running_for: tuple[float, ...]
    concurrency: int

    @property
    def free_workers(self) -> int:
        return max(0, self.concurrency - len(self.running_for))

    @property
    def waits(self) -> bool:
        """True when no worker is left for this claim: it cannot start at once."""
        return self.ahead >= self.free_workers

    @property
    def position(self) -> int:
        """1-based place among the claims that wait for a worker (1: the next to start)."""
        return max(1, self.ahead - self.free_workers + 1)


def typical_duration(recent: Iterable[float], *, default: float) -> float:
    """The median of the recent run durations (seconds), or ``default`` with none yet."""
    durations = [d for d in recent if d >= 0]
    return statistics.median(durations) if durations else default


def start_delay(place: QueuePlace, *, typical: float) -> float:
    """Seconds from now until the claim at ``place`` is expected to start."""
    if place.concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    # When each worker frees up, seconds from now.
    free_at: list[float] = [max(0.0, typical - ran) for ran in
                            sorted(place.running_for, reverse=True)[:place.concurrency]]
    free_at += [0.0] * place.free_workers
    heapq.heapify(free_at)
    for _ in range(place.ahead):
        heapq.heappush(free_at, heapq.heappop(free_at) + typical)
    return free_at[0]


def estimate(place: QueuePlace, recent: Sequence[float], *, default: float
             ) -> tuple[float, float]:
    """(seconds until the claim starts, the typical run duration used)."""
    typical = typical_duration(recent, default=default)
    return start_delay(place, typical=typical), typical
