"""Tell the bus that an accepted intervention waits for a free worker: InterventionQueued.

Published by the verdict's handler right after the claim is durable and offered, only when
no worker is free for it (a claim that starts at once is announced by its InterventionStarted
alone). The notifier answers the customer's initial-response clock from it when the start
does not follow soon (docs/architecture.md §7.4).

Idempotent on redelivery: the id derives from the verdict's delivery
(:meth:`~services.runtime.consumer.Delivery.derive_event_id`), so a verdict handled again
after a crash re-publishes the same ``event_id`` (with the estimate of that moment), which
consumers drop as a duplicate. The claim, not this event, is the executor's record of work:
losing the event (a crash before it is published and a verdict never redelivered) costs the
customer the early notice, never the intervention.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.envelope import EventEnvelope
from schemas.events import AuthorizationVerified, InterventionQueued
from services.executor.queue_estimate import estimate
from services.executor.worker import Worker
from services.runtime.consumer import Delivery

Publish = Callable[[EventEnvelope], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class QueueNotices:
    worker: Worker
    publish: Publish
    clock: Callable[[], datetime]
    default_run_s: float  # the typical run before any has finished in this process

    async def announce(self, event: AuthorizationVerified, delivery: Delivery,
                       claim_id: str) -> bool:
        """Publish InterventionQueued for ``claim_id`` if it waits; True if it does."""
        if self.worker.is_running(claim_id):
            return False  # a verdict redelivered while its intervention runs
        place = self.worker.place(claim_id)
        if not place.waits:
            return False
        delay, typical = estimate(place, self.worker.recent_durations(),
                                  default=self.default_run_s)
        now = self.clock()
        await self.publish(InterventionQueued.new(
            ticket_id=event.ticket_id, revision=event.revision, causation_id=event.event_id,
            event_id=delivery.derive_event_id("intervention-queued"), occurred_at=now,
            position=place.position,
            expected_start_at=now + timedelta(seconds=round(delay)),
            typical_run_seconds=round(typical), concurrency=place.concurrency))
        return True
