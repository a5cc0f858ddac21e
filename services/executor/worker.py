"""Bounded-concurrency work queue between the Kafka handler and the interventions.

The handler only verifies, claims and :meth:`Worker.offer`\\ s a claim id, then returns, so
its offset is committed within milliseconds whatever the SSH work takes (aiokafka evicts a
consumer that does not poll within ``max.poll.interval.ms``). The claim is durable before
it is offered, so the queue itself may lose nothing that matters: a full queue drops the
offer, a crash drops the whole queue, and the periodic scan of open claims finds them again.

At most ``concurrency`` interventions run at once; one ticket's revisions run one after
another in this process (a customer's follow-up must not race the run it follows up).

The worker also tells the handler whether a claim offered now would start at once
(:meth:`Worker.slot`): only such a claim goes straight to ``executor_claims``; the others
wait in the claim queue (:mod:`.claims`), so the collection every run updates holds the
runs in progress, not the backlog.

The worker also knows its line: which claims wait and since when, how long each run in
progress has been going and how long the recent runs took. :meth:`Worker.place` gives a
claim's place for the start estimate (:mod:`.queue_estimate`), and the oldest wait is a
gauge, so a saturated executor shows before the initial-response clocks run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from services.executor.queue_estimate import QueuePlace

log = logging.getLogger(__name__)

RunClaim = Callable[[str], Awaitable[None]]
ScanClaims = Callable[[], Awaitable[list[str]]]
RECENT_RUNS = 50  # run durations kept for the typical duration


class Worker:
    def __init__(self, run: RunClaim, *, concurrency: int, queue_size: int,
                 scan: ScanClaims | None = None, rescan_s: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 is_queued: Callable[[str], bool] = lambda _claim_id: False) -> None:
        self._run = run
        self._scan = scan
        self._rescan_s = rescan_s
        self._concurrency = concurrency
        self._queue_size = queue_size
        # Two lines: claims already in executor_claims (made for a free worker, resumed,
        # re-opened) go first; claims waiting in the claim queue start only on a worker
        # no slot() holder was promised, so executor_claims never holds more new claims
        # than there are workers (is_queued says which line a claim joins).
        self._is_queued = is_queued
        self._in_flight: deque[str] = deque()
        self._line: deque[str] = deque()
        self._changed = asyncio.Event()
        self._busy = 0  # workers that took a claim and have not finished it
        self._pending: set[str] = set()  # queued or running: offered once at a time
        self._ticket_locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._monotonic = monotonic
        self._waiting: dict[str, float] = {}  # queued claims in line order -> since when
        self._running_since: dict[str, float] = {}
        self._recent: deque[float] = deque(maxlen=RECENT_RUNS)
        self.running = 0
        self.peak = 0  # most interventions seen running at once (tests, metrics)
        self._promised = 0  # slots handed out by slot() and not yet given back

    def offer(self, claim_id: str) -> bool:
        """Queue a claim unless it is already queued or running; never waits."""
        if claim_id in self._pending:
            return True
        if self.waiting >= self._queue_size:
            log.warning("work queue full; claim %s waits for the next scan", claim_id)
            return False
        (self._line if self._is_queued(claim_id) else self._in_flight).append(claim_id)
        self._wake()
        self._pending.add(claim_id)
        self._waiting[claim_id] = self._monotonic()
        return True

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Whether a claim offered within this block starts at once: a worker is free and
        not promised to another block. The slot stays promised until the block ends, so
        handlers accepting concurrently never count the same free worker twice."""
        free = self._busy + len(self._in_flight) + self._promised < self._concurrency
        if free:
            self._promised += 1
        try:
            yield free
        finally:
            if free:
                self._promised -= 1
                self._wake()  # a worker kept for this block may take a queued claim now

    @property
    def waiting(self) -> int:
        """How many offered claims wait for a worker."""
        return len(self._in_flight) + len(self._line)

    def _wake(self) -> None:
        self._changed.set()

    async def _take(self) -> str:
        """The next claim for this worker: one in flight first, else a queued one if a
        worker is left beyond those promised by slot()."""
        while True:
            if self._in_flight:
                claim_id = self._in_flight.popleft()
                break
            if self._line and self._busy + self._promised < self._concurrency:
                claim_id = self._line.popleft()
                break
            # Cleared only when nothing can be taken: a change after this sets it again.
            self._changed.clear()
            await self._changed.wait()
        self._busy += 1
        return claim_id

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def place(self, claim_id: str) -> QueuePlace:
        """Where ``claim_id`` stands: the claims queued before it (all of them if it is not
        in the queue: a full queue left it to the next scan) and the runs in progress."""
        line = list(self._waiting)
        ahead = line.index(claim_id) if claim_id in self._waiting else len(line)
        now = self._monotonic()
        return QueuePlace(ahead=ahead, concurrency=self._concurrency,
                          running_for=tuple(now - t for t in self._running_since.values()))

    def is_running(self, claim_id: str) -> bool:
        return claim_id in self._running_since

    def recent_durations(self) -> tuple[float, ...]:
        """How long the recent runs took, in seconds (the newest last)."""
        return tuple(self._recent)

    def oldest_wait_s(self) -> float:
        """How long the longest-waiting queued claim has waited (0 when none waits)."""
        if not self._waiting:
            return 0.0
        return max(0.0, self._monotonic() - next(iter(self._waiting.values())))

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._serve(), name=f"executor-worker-{n}")
                       for n in range(self._concurrency)]
        if self._scan is not None:
            self._tasks.append(asyncio.create_task(self._rescan(), name="executor-rescan"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def idle(self, timeout: float = 60.0) -> None:
        """Wait until nothing is queued or running (tests, graceful shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._pending:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{len(self._pending)} claims still pending")
            await asyncio.sleep(0.05)

    async def scan_now(self) -> int:
        """Offer every open claim (at start-up, and periodically)."""
        if self._scan is None:
            return 0
        offered = 0
        for claim_id in await self._scan():
            offered += self.offer(claim_id)
        return offered

    async def _rescan(self) -> None:
        while True:
            try:
                await self.scan_now()
            except Exception:  # the scan retries next round; the store may be restarting
                log.exception("scan of open claims failed")
            await asyncio.sleep(self._rescan_s)

    async def _serve(self) -> None:
        while True:
            claim_id = await self._take()
            self._waiting.pop(claim_id, None)
            ticket = claim_id.rsplit(":", 1)[0]
            lock = self._ticket_locks.setdefault(ticket, asyncio.Lock())
            try:
                async with lock:
                    self.running += 1
                    self.peak = max(self.peak, self.running)
                    started = self._running_since[claim_id] = self._monotonic()
                    try:
                        await self._run(claim_id)
                    finally:
                        self.running -= 1
                        del self._running_since[claim_id]
                        self._recent.append(self._monotonic() - started)
            except asyncio.CancelledError:
                raise
            except Exception:  # one claim's failure must not stop the worker
                log.exception("intervention for claim %s failed", claim_id)
            finally:
                self._pending.discard(claim_id)
                if not lock.locked():
                    self._ticket_locks.pop(ticket, None)
                self._busy -= 1
                self._wake()
