"""A queued intervention's place in line and expected start (pure), the worker's line, and
the InterventionQueued announcement of a claim that waits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from executor_verdicts import verdict

from schemas.envelope import EventEnvelope
from schemas.events import AuthorizationVerified, InterventionQueued
from services.executor.queue_estimate import (
    QueuePlace,
    estimate,
    start_delay,
    typical_duration,
)
from services.executor.queue_notice import QueueNotices
from services.executor.worker import Worker
from services.runtime.consumer import Delivery
from services.runtime.crypto import PrivateSealingKey


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


def gated_worker(now: list[float]) -> tuple[Worker, asyncio.Event]:
    """One worker whose runs last until the gate opens, on the clock ``now[0]``."""
    gate = asyncio.Event()

    async def run(_claim_id: str) -> None:
        await gate.wait()

    return Worker(run, concurrency=1, queue_size=10, monotonic=lambda: now[0]), gate


async def test_the_worker_knows_each_claims_place_and_the_oldest_wait() -> None:
    now = [1000.0]
    worker, gate = gated_worker(now)
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
    assert worker.is_running("A:1")
    assert not worker.is_running("B:1")
    assert worker.oldest_wait_s() == pytest.approx(7)
    gate.set()
    await worker.idle(5)
    await worker.stop()
    assert worker.oldest_wait_s() == 0
    assert worker.recent_durations()[0] == pytest.approx(12)


async def test_a_claim_that_waits_is_announced_with_its_place_and_a_stable_id() -> None:
    now = [500.0]
    worker, gate = gated_worker(now)
    published: list[EventEnvelope] = []

    async def publish(event: EventEnvelope) -> None:
        published.append(event)

    wall = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    notices = QueueNotices(worker=worker, publish=publish, clock=lambda: wall,
                           default_run_s=120)
    sealing = PrivateSealingKey.generate().public
    first, second = (verdict(signing_key=None, sealing_key=sealing, username="u",
                             password="p") for _ in range(2))
    await worker.start()
    worker.offer(f"{first.ticket_id}:1")
    await asyncio.sleep(0.05)  # the first runs: a free worker, nothing to announce
    assert not await notices.announce(first, _delivery(first), f"{first.ticket_id}:1")
    now[0] += 20
    worker.offer(f"{second.ticket_id}:1")
    assert await notices.announce(second, _delivery(second), f"{second.ticket_id}:1")
    # Redelivered: the same id again (consumers drop it), never a second announcement.
    assert await notices.announce(second, _delivery(second), f"{second.ticket_id}:1")
    gate.set()
    await worker.idle(5)
    await worker.stop()
    assert len(published) == 2
    announced = published[0]
    assert isinstance(announced, InterventionQueued)
    assert published[1].event_id == announced.event_id
    assert (announced.position, announced.concurrency) == (1, 1)
    assert announced.causation_id == second.event_id
    assert announced.expected_start_at == wall + timedelta(seconds=100)  # 120 typical, 20 run


def _delivery(event: AuthorizationVerified) -> Delivery:
    return Delivery(runtime=None, topic="intervention.authorization-verified",  # type: ignore[arg-type]
                    partition=0, offset=0, key=str(event.event_id), ticket_id=event.ticket_id)
