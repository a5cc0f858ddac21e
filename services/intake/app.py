"""Intake's subscriber on ``helpdesk.ticket-requests``: decode, hand to intake, done.

Everything the runtime guarantees (deduplication, bounded retries, DLQ, commit after the
effects are durable) comes from :func:`services.runtime.consumer.subscribe`. Intake adds:
the idempotency key ``<ticket_id>:<revision>:<content digest>:<credential form>``, and a
dead-letter copy scrubbed of credentials (:func:`~services.intake.sealing.scrub_for_dlq`).
"""

from __future__ import annotations

from schemas.topics import HELPDESK_REQUESTS
from services.intake.metrics import IntakeMetrics
from services.intake.sealing import scrub_for_dlq
from services.intake.submission import Intake, TopicRequest, Unnamed, read_topic_message
from services.runtime.consumer import Decoded, DecodeError, Delivery, subscribe
from services.runtime.service import ServiceRuntime


def register(runtime: ServiceRuntime, intake: Intake, metrics: IntakeMetrics) -> None:
    def decode(raw: bytes) -> Decoded[TopicRequest]:
        try:
            message = read_topic_message(raw)
        except Unnamed as exc:
            intake.learn(exc.plaintext)
            metrics.request("topic", "unnamed")
            raise DecodeError(str(exc), error_class="HelpdeskTicketRequest.unnamed") from None
        except Exception as exc:  # noqa: BLE001 - see below: every failure is a DecodeError
            # Whatever a hostile message trips in a parser must not escape the decoder: the
            # runtime dead-letters DecodeErrors and moves on. Only the class is reported, as
            # an exception's text may quote the input.
            metrics.request("topic", "unnamed")
            raise DecodeError(f"could not decode: {type(exc).__name__}",
                              error_class="HelpdeskTicketRequest.undecodable") from None
        return Decoded(value=message, key=message.idempotency_key, ticket_id=message.ticket_id)

    async def on_request(message: TopicRequest, delivery: Delivery) -> None:
        await intake.receive(message, rejected_event_id=delivery.derive_event_id("rejected"))

    subscribe(runtime, HELPDESK_REQUESTS, on_request, decoder=decode, dlq_body=scrub_for_dlq)
