"""Signed internal facts: the notifier signs what engineers said in chat, its consumers check.

An engineer's acknowledgement (EngineerAcknowledged) and report on a manual step
(ManualStepCompleted) lead to action: a report ``done`` on ``r<rev>-review`` lifts auth's
signed ``review_required``, a console step reported done resumes an intervention. Anyone who
can write the bus could otherwise publish one. So the notifier signs each with its own
Ed25519 key (``notifier-signing.key``) over :meth:`~schemas.events.SignedEvent.signed_bytes`
- every field but the signature, the engineer's identity and the step included - and every
consumer that acts on one checks it against the notifier's public keys (a keyring, so keys
can rotate) before it has any effect.

A fact that does not verify (unsigned, an unknown key, a bad signature, another producer)
is refused: :class:`FactGate` appends a ``fact_refused`` audit record naming why, then
raises :class:`FactRefused`, a :class:`~services.runtime.decoding.DecodeError`, which the
consumer runtime dead-letters (reason ``unauthenticated``, error class
``FactRefused.<reason>``) without calling the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from schemas.envelope import EventEnvelope, Producer
from schemas.events import SignedEvent
from services.runtime.audit import AuditLog
from services.runtime.crypto import SignatureError, SigningKey, VerifyKey, sign, verify
from services.runtime.decoding import DecodeError

__all__ = ["FactGate", "FactRefused", "RefusalReason", "sign_fact", "signing_publisher",
           "verify_fact"]

S = TypeVar("S", bound=SignedEvent)

RefusalReason = Literal["unsigned", "unknown_key", "wrong_algorithm", "malformed",
                        "bad_signature"]


class FactRefused(DecodeError):
    """A signed fact that does not verify. The message names the event, ticket and reason,
    never a field value (it goes into DLQ headers)."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message, error_class=f"FactRefused.{reason}")
        self.reason: RefusalReason = reason


def sign_fact(event: S, key: SigningKey) -> S:
    """``event`` with its producer's signature over :meth:`SignedEvent.signed_bytes`.

    Ed25519 is deterministic: re-signing the same event (a retry after a crash publishes
    the same event id and fields) gives the same bytes, so duplicates stay duplicates."""
    return event.with_signature(sign(event.signed_bytes(), key))


def verify_fact(event: SignedEvent, trusted: Mapping[str, VerifyKey], *,
                what: str | None = None) -> None:
    """Return if ``event`` carries a valid signature by a ``trusted`` key, else raise
    :class:`FactRefused` (``what`` names the event in its message, default its type). The
    bytes are recomputed from the parsed event, never taken from the wire."""
    where = (f"{what or event.EVENT_TYPE} {event.event_id} for ticket {event.ticket_id} "
             f"revision {event.revision}")
    if event.signature is None:
        raise FactRefused("unsigned", f"{where} is not signed")
    try:
        verify(event.signed_bytes(), event.signature, trusted)
    except SignatureError as exc:
        raise FactRefused(exc.reason, f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class FactGate:
    """The check a consumer runs on each signed fact before its handler: verify, or audit
    the refusal and raise :class:`FactRefused` (``subscribe(verify=gate.check)``)."""

    trusted: Mapping[str, VerifyKey]
    audit: AuditLog
    actor: str

    async def check(self, event: EventEnvelope) -> None:
        if not isinstance(event, SignedEvent):  # a wiring error, not a forgery
            raise TypeError(f"{type(event).__name__} is not a signed event")
        try:
            verify_fact(event, self.trusted)
        except FactRefused as exc:
            # Idempotent on the event id: a redelivered forgery adds no second record.
            await self.audit.append(
                event.ticket_id, record_id=f"fact-refused:{event.event_id}",
                kind="fact_refused", actor=self.actor,
                data={"event_type": event.EVENT_TYPE, "event_id": str(event.event_id),
                      "revision": event.revision, "producer": event.producer,
                      "reason": exc.reason, "detail": str(exc),
                      "key_id": event.signature.key_id if event.signature else None})
            raise


Publish = Callable[[EventEnvelope], Awaitable[None]]


def signing_publisher(publish: Publish, key: SigningKey, producer: Producer) -> Publish:
    """``publish`` that signs each :class:`SignedEvent` ``producer`` produces first, so no
    code path can publish one of its facts unsigned."""

    async def signed(event: EventEnvelope) -> None:
        if isinstance(event, SignedEvent) and event.producer == producer:
            event = sign_fact(event, key)
        await publish(event)

    return signed
