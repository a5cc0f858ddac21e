"""Intake's subscriber on ``helpdesk.ticket-requests``: authenticate, decode, hand to intake.

Everything the runtime guarantees (deduplication, bounded retries, DLQ, commit after the
effects are durable) comes from :func:`services.runtime.consumer.subscribe`. Intake adds:
the idempotency key ``<ticket_id>:<revision>:<content digest>:<credential form>``, a
dead-letter copy scrubbed of credentials (:func:`~services.intake.sealing.scrub_for_dlq`),
and the edge's trust rules (:mod:`services.intake.edge`): each message carries the
integration's signature in Kafka headers (method ``KAFKA``, path the catalogue topic name;
no freshness window - a message may wait while intake is down), an unsigned or badly signed
one is dead-lettered with reason ``unauthenticated``; the account must be the integration's
mapping of ``X-Intervention-Customer``, and the ticket its own - otherwise the message is
audited and dropped, with no TicketRejected (that would post on someone else's ticket).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from schemas.events import Vouch
from schemas.topics import HELPDESK_REQUESTS
from services.intake.edge import Caller, EdgeGuard, EdgeRefusal
from services.intake.metrics import IntakeMetrics
from services.intake.sealing import scrub_for_dlq
from services.intake.signing import KAFKA_METHOD
from services.intake.submission import Intake, TopicRequest, Unnamed, read_topic_message
from services.runtime.consumer import Decoded, DecodeError, Delivery, subscribe
from services.runtime.service import ServiceRuntime

log = logging.getLogger("intervention.intake")


def register(runtime: ServiceRuntime, intake: Intake, metrics: IntakeMetrics,
             guard: EdgeGuard) -> None:
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

    async def authenticate(body: bytes, headers: dict[str, str]) -> Caller:
        try:
            return await guard.authenticate(
                headers, method=KAFKA_METHOD, path=HELPDESK_REQUESTS, body=body,
                scope="submit", now=datetime.now(UTC), fresh=False, kind="api")
        except EdgeRefusal as refusal:
            metrics.request("topic", "unauthenticated")
            await guard.audit_refusal(refusal, door=f"kafka {HELPDESK_REQUESTS}",
                                      source="kafka", integration=None, ticket_id=None)
            raise DecodeError(f"{refusal.code}: {refusal.message}",
                              error_class=f"HelpdeskTicketRequest.{refusal.code}") from None

    async def on_request(message: TopicRequest, delivery: Delivery) -> None:
        caller: Caller = delivery.caller
        vouch: Vouch | None = None
        new_ticket = False
        try:
            if message.request is not None:
                customer, _ = await guard.account_for(
                    caller, [caller.customer] if caller.customer else [],
                    message.request.account_id)
                new_ticket = await guard.take_ticket(
                    caller, message.ticket_id, message.request.account_id, datetime.now(UTC),
                    revision=message.revision)
                vouch = Vouch(integration=caller.name, customer=customer)
            elif (owner := await guard.owner(message.ticket_id)) is not None and \
                    owner.integration != caller.name:
                raise EdgeRefusal(403, "ticket_not_yours", "this ticket number belongs to "
                                  "another helpdesk integration", field="ticket_id")
        except EdgeRefusal as refusal:
            metrics.request("topic", "forbidden")
            await guard.audit_refusal(refusal, door=f"kafka {HELPDESK_REQUESTS}",
                                      source="kafka", integration=caller.name,
                                      ticket_id=message.ticket_id)
            log.warning("ticket %s revision %d refused on the topic: %s", message.ticket_id,
                        message.revision, refusal.code)
            return
        await intake.receive(message, rejected_event_id=delivery.derive_event_id("rejected"),
                             vouched_by=vouch, new_ticket=new_ticket)

    subscribe(runtime, HELPDESK_REQUESTS, on_request, decoder=decode, dlq_body=scrub_for_dlq,
              authenticate=authenticate)
