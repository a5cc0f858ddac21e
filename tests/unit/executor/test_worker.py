"""The work queue: bounded concurrency, one run per claim at a time, never blocks offers."""

from __future__ import annotations

import asyncio

from services.executor.worker import Worker


async def test_runs_at_most_concurrency_at_once_and_offers_never_wait() -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def run(claim_id: str) -> None:
        started.append(claim_id)
        await release.wait()

    worker = Worker(run, concurrency=3, queue_size=100)
    await worker.start()
    for n in range(10):
        assert worker.offer(f"T{n}:1")
    await asyncio.sleep(0.1)
    assert worker.running == 3
    release.set()
    await worker.idle(5)
    await worker.stop()
    assert sorted(started) == sorted(f"T{n}:1" for n in range(10))
    assert worker.peak == 3


async def test_a_claim_is_not_queued_twice_and_a_full_queue_refuses() -> None:
    gate = asyncio.Event()
    runs: list[str] = []

    async def run(claim_id: str) -> None:
        runs.append(claim_id)
        await gate.wait()

    worker = Worker(run, concurrency=1, queue_size=2)
    assert worker.offer("A:1")
    assert worker.offer("A:1")  # already pending: accepted, not duplicated
    assert worker.offer("B:1")
    assert not worker.offer("C:1")  # full; the scan of open claims will find it
    await worker.start()
    gate.set()
    await worker.idle(5)
    await worker.stop()
    assert runs == ["A:1", "B:1"]


async def test_revisions_of_one_ticket_run_one_after_another() -> None:
    active: set[str] = set()
    overlap = False

    async def run(claim_id: str) -> None:
        nonlocal overlap
        ticket = claim_id.split(":")[0]
        overlap |= ticket in active
        active.add(ticket)
        await asyncio.sleep(0.05)
        active.discard(ticket)

    worker = Worker(run, concurrency=4, queue_size=10)
    await worker.start()
    for rev in (1, 2, 3):
        worker.offer(f"HD-1:{rev}")
    await worker.idle(5)
    await worker.stop()
    assert not overlap


async def test_a_failing_claim_does_not_stop_the_worker_and_the_scan_offers_open_claims() -> None:
    done: list[str] = []

    async def run(claim_id: str) -> None:
        if claim_id == "bad:1":
            raise RuntimeError("boom")
        done.append(claim_id)

    async def scan() -> list[str]:
        return ["bad:1", "good:1"]

    worker = Worker(run, concurrency=1, queue_size=10, scan=scan, rescan_s=60)
    await worker.start()
    await asyncio.sleep(0.05)
    await worker.idle(5)
    await worker.stop()
    assert done == ["good:1"]


async def test_a_free_worker_is_promised_to_one_accepting_handler_at_a_time() -> None:
    gate = asyncio.Event()

    async def run(_claim_id: str) -> None:
        await gate.wait()

    worker = Worker(run, concurrency=2, queue_size=10)
    await worker.start()
    with worker.slot() as first, worker.slot() as second, worker.slot() as third:
        assert (first, second, third) == (True, True, False)
    with worker.slot() as again:
        assert again
        worker.offer("A:1")
    await asyncio.sleep(0.05)
    with worker.slot() as one_left:
        assert one_left  # one worker runs A, the other is free
        worker.offer("B:1")
    await asyncio.sleep(0.05)
    with worker.slot() as none_left:
        assert not none_left
    gate.set()
    await worker.idle(5)
    await worker.stop()


async def test_a_queued_claim_never_takes_a_worker_promised_to_a_claim_in_flight() -> None:
    # The claim made for a promised worker is in executor_claims already; a queued claim
    # offered meanwhile waits, so executor_claims never holds a claim nobody runs.
    order: list[str] = []

    async def run(claim_id: str) -> None:
        order.append(claim_id)
        await asyncio.sleep(0.02)

    worker = Worker(run, concurrency=1, queue_size=10,
                    is_queued=lambda claim_id: claim_id.startswith("Q"))
    await worker.start()
    with worker.slot() as free:
        assert free
        worker.offer("Q1:1")  # another handler's claim, made in the claim queue
        await asyncio.sleep(0.05)
        assert order == []
        worker.offer("D1:1")  # the promised one, made in executor_claims
        await asyncio.sleep(0.01)
    await worker.idle(5)
    await worker.stop()
    assert order == ["D1:1", "Q1:1"]
