"""A queued intervention's place in line and expected start (pure), and the worker's line."""

from __future__ import annotations

import asyncio

import pytest

from services.executor.queue_estimate import (
    QueuePlace,
    estimate,
    start_delay,
    typical_duration,
)
from services.executor.worker import Worker


def test_a_free_worker_means_the_claim_does_not_wait() -> None:
    place = QueuePlace(ahead=0, running_for=(10.0,), concurrency=2)
    assert not place.waits
    assert start_delay(place, typical=60) == 0


def test_one_worker_busy_the_next_claim_starts_when_the_run_reaches_the_typical_duration(
) -> None:
    place = QueuePlace(ahead=0, running_for=(20.0,), concurrency=1)
    assert place.waits
    assert place.position == 1
    assert start_delay(place, typical=60) == pytest.approx(40)


def test_claims_ahead_take_the_workers_in_turn() -> None:
    # Two workers, runs 50 s and 10 s into a 60 s typical run, three claims ahead: they take
    # the workers at 10 s, 50 s and 70 s; this claim gets the one free at 110 s.
    place = QueuePlace(ahead=3, running_for=(50.0, 10.0), concurrency=2)
    assert place.position == 4
    assert start_delay(place, typical=60) == pytest.approx(110)


def test_a_run_longer_than_typical_frees_its_worker_now_not_in_the_past() -> None:
    place = QueuePlace(ahead=1, running_for=(500.0,), concurrency=1)
    assert start_delay(place, typical=60) == pytest.approx(60)


def test_free_workers_take_the_claims_ahead_first() -> None:
    place = QueuePlace(ahead=3, running_for=(), concurrency=2)
    assert place.waits
    assert place.position == 2
    assert start_delay(place, typical=30) == pytest.approx(30)


def test_typical_duration_is_the_median_of_recent_runs_or_the_default() -> None:
    assert typical_duration([], default=120) == 120
    # One run that waited hours for an engineer does not swamp the estimate.
    assert typical_duration([30, 40, 35, 14_400], default=120) == pytest.approx(37.5)
    delay, typical = estimate(QueuePlace(ahead=0, running_for=(0.0,), concurrency=1),
                              [30, 40, 35], default=120)
    assert (delay, typical) == (35, 35)


async def test_the_worker_knows_each_claims_place_and_the_oldest_wait() -> None:
    now = [1000.0]
    gate = asyncio.Event()

    async def run(_claim_id: str) -> None:
        await gate.wait()

    worker = Worker(run, concurrency=1, queue_size=10, monotonic=lambda: now[0])
    await worker.start()
    assert worker.oldest_wait_s() == 0
    worker.offer("A:1")
    await asyncio.sleep(0.05)  # A runs
    now[0] += 5
    worker.offer("B:1")
    worker.offer("C:1")
    now[0] += 7
    assert worker.place("B:1") == QueuePlace(ahead=0, running_for=(12.0,), concurrency=1)
    assert worker.place("C:1").ahead == 1
    assert worker.place("D:1").ahead == 2  # not queued (a full queue): behind everyone
    assert worker.oldest_wait_s() == pytest.approx(7)
    gate.set()
    await worker.idle(5)
    await worker.stop()
    assert worker.oldest_wait_s() == 0
    assert worker.recent_durations()[0] == pytest.approx(12)
