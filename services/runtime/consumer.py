"""Durable consumption: decode, drop duplicates, retry with backoff, DLQ, then commit.

Every subscriber of every service goes through :func:`subscribe`, so the guarantees of
ARCHITECTURE §5 hold in one place:

- the offset is committed (manual ack) only after the handler's effects are durable —
  its published events acknowledged by the broker, its audit records written;
- a redelivered message whose idempotency key was already processed has no second effect;
- processed keys are kept for ``PROCESSED_EVENTS_RETENTION_DAYS`` (8), longer than the
  topics' retention, and pruned at most hourly after an acknowledgement;
- a message that cannot be decoded, or whose handler still fails after bounded retries
  with exponential backoff, goes to ``<topic>.dlq`` with the reason in its headers, and
  the consumer moves on to the next message (no tight retry loop, never a stuck partition);
- an outage of Kafka or the store (:func:`services.runtime.dependencies.outage_of`) is not
  a failure of the message: it is waited out with capped backoff, however long, and the
  message processed again - never dead-lettered, never skipped.

Handlers derive the ids of the events they publish from the id of the event they handle
(:meth:`Delivery.derive_event_id`), so a re-run after a crash re-publishes the *same*
event ids and downstream consumers drop the copies.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import ConsumerRecord
from aiokafka.errors import CommitFailedError
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from faststream.message import StreamMessage
from opentelemetry import trace
from pydantic import BaseModel

from schemas.topics import DLQ_SUFFIX, physical
from services.runtime.decoding import Decoded, DecodeError, Decoder
from services.runtime.dependencies import outage_of
from services.runtime.kafka_telemetry import CONSUMER_GROUP
from services.runtime.service import ServiceRuntime
from services.runtime.telemetry import TICKET_ID_ATTRIBUTE, current_ticket

__all__ = ["DLQ_HEADERS", "DecodeError", "Decoded", "Decoder", "Delivery", "Handler", "subscribe"]

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=BaseModel)

# Waiting out an outage of Kafka or the store: first retry after about half a second, then
# doubling up to half a minute, for as long as it lasts (never dead-lettered for it).
OUTAGE_BACKOFF_S = 0.5
OUTAGE_BACKOFF_MAX_S = 30.0

# Namespace for ids derived from other ids: uuid5(ns, "<cause>:<what>").
_DERIVED_ID_NS = uuid.UUID("6f1d8f8e-0b7a-4e52-9a49-3c1f6a1b2d40")

DLQ_HEADERS = (
    "x-dlq-reason",          # "decode" or "handler"
    "x-dlq-error-class",
    "x-dlq-error-message",
    "x-dlq-original-topic",
    "x-dlq-original-partition",
    "x-dlq-original-offset",
    "x-dlq-consumer-group",
    "x-dlq-attempts",
    "x-dlq-failed-at",
)




@dataclass(kw_only=True)
class Delivery:
    """What a handler gets besides the decoded value: where it came from, and how to answer."""

    runtime: ServiceRuntime
    topic: str
    partition: int
    offset: int
    key: str
    ticket_id: str | None
    headers: dict[str, str] = field(default_factory=dict)
    caller: Any = None
    """What ``subscribe(authenticate=...)`` returned for this message (who sent it)."""

    def derive_event_id(self, what: str) -> uuid.UUID:
        """A stable id for the event this delivery causes: the same on every redelivery."""
        return uuid.uuid5(_DERIVED_ID_NS, f"{self.key}:{what}")

    async def publish(self, event: BaseModel) -> None:
        await self.runtime.publish(event)


Handler = Callable[[T, Delivery], Awaitable[None]]


def _header_text(value: object, limit: int = 2000) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _raw_body(msg: StreamMessage[Any]) -> bytes:
    """Hand FastStream's decode step the bytes untouched.

    Its default decoder json-parses every body without a content type — in a worker thread,
    where a hostile message nested a few hundred thousand levels deep overflows the C stack
    and kills the process (a segfault, seen in tests). Our decoders parse once, safely.
    """
    return msg.body


def subscribe(
    runtime: ServiceRuntime,
    topic: str,
    handler: Handler[T],
    *,
    decoder: Decoder[T],
    group: str | None = None,
    dlq_body: Callable[[bytes], bytes] | None = None,
    max_attempts: int | None = None,
    backoff_s: float | None = None,
    on_duplicate: Handler[T] | None = None,
    authenticate: Callable[[bytes, dict[str, str]], Awaitable[Any]] | None = None,
    verify: Callable[[T], Awaitable[None]] | None = None,
) -> None:
    """Register ``handler`` for the catalogue ``topic`` on the runtime's broker.

    ``dlq_body`` lets a topic that may carry plaintext (the helpdesk's) scrub what it
    copies to its DLQ; the default copies the original bytes unchanged. ``on_duplicate``
    is called (once, errors logged) for a message dropped as already processed, for
    consumers that must record replays (the executor audits replayed verdicts).
    ``authenticate(body, headers)`` runs before the handler (a topic written by outside
    producers checks who signed each message): a :class:`DecodeError` from it dead-letters
    the message with reason ``unauthenticated``; its result is ``Delivery.caller``.
    ``verify(value)`` runs on the decoded value before the handler and before the duplicate
    check (a signed fact's signature, :class:`services.runtime.facts.FactGate`): a
    :class:`DecodeError` from it dead-letters the message with reason ``unauthenticated``
    too, and the handler never sees it.
    """
    settings = runtime.settings
    # The topic prefix isolates groups too: test runs and demos sharing a broker must not
    # join (and keep rebalancing) one another's consumer groups.
    group_name = group or runtime.service_name
    group_id = f"{settings.kafka_topic_prefix}{group_name}"
    attempts_max = max_attempts or settings.handler_max_attempts
    backoff = settings.handler_retry_backoff_s if backoff_s is None else backoff_s
    source = physical(topic, settings.kafka_topic_prefix)
    dlq_topic = physical(topic + DLQ_SUFFIX, settings.kafka_topic_prefix)
    runtime.metrics.subscribed(topic)
    runtime.consumes(topic)  # ensured (or checked) at start, with its DLQ

    async def to_dlq(record: ConsumerRecord[Any, Any], body: bytes, *, reason: str,
                     exc: BaseException, attempts: int) -> None:
        message = str(exc) if isinstance(exc, DecodeError) else runtime.redactor.redact_text(
            f"{exc}")
        error_class = exc.error_class if isinstance(exc, DecodeError) else type(exc).__name__
        headers = dict(zip(DLQ_HEADERS, (
            reason, error_class, _header_text(message), record.topic, str(record.partition),
            str(record.offset), group_id, str(attempts), datetime.now(UTC).isoformat(),
        ), strict=True))
        payload = dlq_body(body) if dlq_body is not None else body
        await runtime.broker.publish(payload, topic=dlq_topic, key=record.key, headers=headers)
        runtime.metrics.dlq(topic, reason)
        log.warning("message sent to DLQ", extra={"dlq_topic": dlq_topic, "reason": reason,
                                                   "error_class": error_class})

    async def process_once(msg: KafkaMessage) -> None:
        record: ConsumerRecord[Any, Any] = msg.raw_message
        runtime.metrics.consuming(topic=topic, group=group_name, physical_topic=record.topic,
                                  partition=record.partition, offset=record.offset,
                                  consumer=msg.consumer)
        body: bytes = msg.body
        # FastStream's process span: it does not know the group, and the key may not be
        # the ticket (an integration's bug), the decoded message is.
        span = trace.get_current_span()
        span.set_attribute(CONSUMER_GROUP, group_id)
        try:
            decoded = decoder(body)
        except DecodeError as exc:
            await to_dlq(record, body, reason="decode", exc=exc, attempts=0)
            await msg.ack()
            return
        except Exception as exc:  # a decoder bug or hostile input (say, RecursionError)
            # Never leave the message unacknowledged and unanswered: it is dead-lettered like
            # any undecodable message, and the partition moves on.
            log.exception("decoder raised %s; sending to DLQ", type(exc).__name__)
            await to_dlq(record, body, reason="decode", exc=exc, attempts=0)
            await msg.ack()
            return
        headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
        caller: Any = None
        if authenticate is not None:
            try:
                caller = await authenticate(body, headers)
            except DecodeError as exc:
                await to_dlq(record, body, reason="unauthenticated", exc=exc, attempts=0)
                await msg.ack()
                return
        if verify is not None:
            try:
                await verify(decoded.value)
            except DecodeError as exc:
                await to_dlq(record, body, reason="unauthenticated", exc=exc, attempts=0)
                await msg.ack()
                return
        if decoded.ticket_id is not None:
            span.set_attribute(TICKET_ID_ATTRIBUTE, decoded.ticket_id)
        token = current_ticket.set(decoded.ticket_id)
        try:
            delivery = Delivery(
                runtime=runtime, topic=topic, partition=record.partition, offset=record.offset,
                key=decoded.key, ticket_id=decoded.ticket_id, headers=headers, caller=caller,
            )
            if await runtime.processed.seen(group_id, decoded.key):
                runtime.metrics.duplicate(topic)
                if on_duplicate is not None:
                    try:
                        await on_duplicate(decoded.value, delivery)
                    except Exception:  # recording a duplicate must not block the partition
                        log.exception("on_duplicate hook failed")
                await msg.ack()
                return
            for attempt in range(1, attempts_max + 1):
                began = time.perf_counter()
                try:
                    await handler(decoded.value, delivery)
                except Exception as exc:  # every failure is retried, then DLQ'd
                    runtime.metrics.handled(topic, "error", time.perf_counter() - began)
                    if outage_of(exc) is not None:
                        # Kafka or the store is away: not the message's fault, and no
                        # attempt used up. consume() waits for the dependency and runs the
                        # message again (the handler is idempotent).
                        raise
                    if attempt == attempts_max:
                        log.exception("handler failed %d times; sending to DLQ", attempt)
                        await to_dlq(record, body, reason="handler", exc=exc, attempts=attempt)
                        break
                    delay = backoff * 2 ** (attempt - 1) * (0.5 + random.random())
                    log.warning("handler failed (attempt %d/%d), retrying in %.2fs: %s",
                                attempt, attempts_max, delay, type(exc).__name__)
                    await asyncio.sleep(delay)
                else:
                    runtime.metrics.handled(topic, "ok", time.perf_counter() - began)
                    await runtime.processed.mark(group_id, decoded.key,
                                                 ticket_id=decoded.ticket_id)
                    break
            await msg.ack()
            # Housekeeping after the commit: at most hourly, one process per hour (see
            # services.runtime.idempotency); never raises.
            await runtime.processed.prune_if_due()
        finally:
            current_ticket.reset(token)

    async def consume(msg: KafkaMessage) -> None:
        """``process_once`` until it gets through an outage of Kafka or the store.

        An exception escaping here would leave the message unacknowledged while the consumer
        moves on, and the next commit would skip it: so an outage is waited out (backoff
        doubling from ``OUTAGE_BACKOFF_S`` to ``OUTAGE_BACKOFF_MAX_S``), however long it
        lasts, and the message processed again from the start (dedupe included)."""
        delay = OUTAGE_BACKOFF_S
        while True:
            try:
                await process_once(msg)
            except CommitFailedError:
                # The group rebalanced while we waited: the partition's new owner (maybe
                # this process again) gets the message from the last commit.
                log.warning("offset commit refused after a rebalance; the message is "
                            "redelivered to the partition's owner")
                return
            except Exception as exc:
                dependency = outage_of(exc)
                if dependency is None:
                    raise
                runtime.dependencies.failed(dependency, exc)
                runtime.metrics.outage_wait(topic, dependency)
                await asyncio.sleep(delay * (0.75 + random.random() / 2))
                delay = min(OUTAGE_BACKOFF_MAX_S, delay * 2)
                continue
            if delay != OUTAGE_BACKOFF_S:
                runtime.dependencies.recovered("kafka")
                runtime.dependencies.recovered("mongodb")
            return

    runtime.broker.subscriber(
        source,
        decoder=_raw_body,
        group_id=group_id,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        title=f"{runtime.service_name}:{topic}",
    )(consume)
