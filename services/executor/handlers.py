"""The executor's one use case on the bus: accept an AuthorizationVerified, or refuse it.

Accepting is verifying, claiming and queueing — milliseconds, so the consumer commits its
offset long before any SSH work starts. A claim no worker is free for is made in the claim
queue rather than among the runs in flight (:mod:`.claims`), and announced
(InterventionQueued, :mod:`.queue_notice`), so the customer hears it is queued.
Everything refused is audited on the ticket it names, with the reason: a forged or altered
signature, an unknown key, a stale or future-dated verdict, an older revision than one
already claimed, a second verdict for a revision already claimed, and a replay of a verdict
already handled.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from opentelemetry import propagate

from schemas.events import AuthorizationVerified
from schemas.registry import encode
from services.executor.claims import ClaimStore, Owner, StaleRevision
from services.executor.verdict_check import Refusal, check_verdict
from services.runtime.audit import AuditLog
from services.runtime.consumer import Delivery
from services.runtime.crypto import VerifyKey

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


Announce = Callable[[AuthorizationVerified, Delivery, str], Awaitable[bool]]
"""Publishes InterventionQueued for an offered claim that waits for a worker."""


@contextlib.contextmanager
def always_free() -> Iterator[bool]:
    yield True


@dataclass(frozen=True, kw_only=True)
class Acceptance:
    claims: ClaimStore
    audit: AuditLog
    verify_keys: Mapping[str, VerifyKey]
    owner: Owner
    offer: Callable[[str], bool]
    lease_s: float
    max_age: timedelta
    clock_skew: timedelta
    clock: Callable[[], datetime] = utc_now
    announce: Announce | None = None
    # Whether a worker is free for a claim made now (Worker.slot): if not, the claim waits
    # in the claim queue instead of the collection the runs update.
    slot: Callable[[], AbstractContextManager[bool]] = always_free

    async def accept(self, event: AuthorizationVerified, delivery: Delivery) -> None:
        refusal = check_verdict(event, self.verify_keys, now=self.clock(), max_age=self.max_age,
                                clock_skew=self.clock_skew)
        if refusal is not None:
            await self.refuse(event, delivery, refusal)
            return
        with self.slot() as free:
            await self._claim(event, delivery, queued=not free)

    async def _claim(self, event: AuthorizationVerified, delivery: Delivery, *,
                     queued: bool) -> None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the worker continues this trace, also after a restart
        try:
            claim, created = await self.claims.create(
                event, verdict_json=encode(event).decode("utf-8"), trace_carrier=carrier,
                owner=self.owner, lease_s=self.lease_s, queued=queued)
        except StaleRevision as stale:
            await self.refuse(event, delivery, Refusal(
                code="revision_stale",
                message=f"revision {event.revision} is older than revision {stale.latest}, "
                        "which was already claimed"))
            return
        if created:
            await self.audit.append(
                event.ticket_id, record_id=f"claim:{claim.id}", kind="claim",
                actor=f"executor:{self.owner.id}",
                data={"revision": event.revision, "verdict_event_id": str(event.event_id),
                      "signed_by": event.signature.key_id if event.signature else None})
            await self._queue(event, delivery, claim.id)
            return
        if claim.verdict_event_id != str(event.event_id):
            await self.refuse(event, delivery, Refusal(
                code="revision_already_claimed",
                message=f"revision {event.revision} was already claimed for verdict "
                        f"{claim.verdict_event_id}; at most one intervention per revision"))
            return
        # The same verdict again: a redelivery after a crash between claiming and the
        # offset commit (the claim may still need running), or a replay after it was handled.
        if claim.status == "open":
            await self._queue(event, delivery, claim.id)
            return
        await self.refuse(event, delivery, Refusal(
            code="replayed", message=f"verdict {event.event_id} was already handled "
                                     f"(claim {claim.id} is {claim.status})"))

    async def _queue(self, event: AuthorizationVerified, delivery: Delivery,
                     claim_id: str) -> None:
        self.offer(claim_id)
        if self.announce is not None:
            await self.announce(event, delivery, claim_id)

    async def replayed(self, event: AuthorizationVerified, delivery: Delivery) -> None:
        """A delivery the runtime dropped as a duplicate of a processed event id."""
        await self.refuse(event, delivery, Refusal(
            code="replayed", message=f"verdict {event.event_id} was delivered again after it "
                                     "was processed; ignored"))

    async def refuse(self, event: AuthorizationVerified, delivery: Delivery,
                     refusal: Refusal) -> None:
        log.warning("verdict refused: %s (%s)", refusal.code, refusal.message)
        # One record per delivery (topic position), so every attempt is on the record and a
        # redelivery of the same message does not add a second one.
        await self.audit.append(
            event.ticket_id,
            record_id=f"verdict-refused:{event.event_id}:{delivery.partition}:{delivery.offset}",
            kind="verdict_refused", actor=f"executor:{self.owner.id}",
            data={"revision": event.revision, "verdict_event_id": str(event.event_id),
                  "code": refusal.code, "reason": refusal.message,
                  "topic": delivery.topic, "partition": delivery.partition,
                  "offset": delivery.offset})
