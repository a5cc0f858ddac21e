"""Durable consumption in batches: decode, drop duplicates, retry with backoff, DLQ, commit.

Every subscriber of every service goes through :func:`subscribe`, so the guarantees of
ARCHITECTURE §5 hold in one place.

**Group commit, key-ordered concurrency.** Each subscription takes what the broker already
has, up to ``CONSUMER_BATCH_MAX_RECORDS`` (waiting at most ``CONSUMER_BATCH_LINGER_MS`` for
the first message), and works through the batch as Confluent's Parallel Consumer does:

- messages of different tickets are handled concurrently (up to ``CONSUMER_LANES`` lanes),
  messages of one ticket in their order;
- the batch's idempotency marks go to the store in one insert
  (:meth:`services.runtime.idempotency.ProcessedEvents.begin`), not a read per message;
- the audit records the handlers append with :meth:`AuditLog.append_later
  <services.runtime.audit.AuditLog.append_later>` (records nothing waits on, such as the
  record of each event a handler publishes) are gathered for the whole batch and written
  in one insert before the commit; an outage keeps them until they are written;
- the offsets are committed once, after every message of the batch is settled (handled,
  dropped as a duplicate or dead-lettered), so the committed position never passes a
  message whose effects are not durable.

The guarantees, per message, are those of one-at-a-time consumption:

- the offset is committed only after the handler's effects are durable — its published
  events acknowledged by the broker, its audit records written;
- a redelivered message whose idempotency key was already processed has no second effect;
- processed keys are kept for ``PROCESSED_EVENTS_RETENTION_DAYS`` (8), longer than the
  topics' retention, in day partitions dropped whole;
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
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from faststream.message import StreamMessage
from pydantic import BaseModel

from schemas.topics import DLQ_SUFFIX, physical
from services.runtime.audit import AuditBatch
from services.runtime.decoding import Decoded, DecodeError, Decoder
from services.runtime.dependencies import outage_of
from services.runtime.idempotency import Begin
from services.runtime.kafka_telemetry import process_span
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


@dataclass(kw_only=True, eq=False)
class _Item(Generic[T]):
    """One message of a batch on its way through: decoded, then settled exactly once."""

    record: ConsumerRecord[Any, Any]
    body: bytes
    decoded: Decoded[T]
    headers: dict[str, str]
    caller: Any

    @property
    def lane(self) -> str:
        # One ticket's messages in order; a message without a ticket is its own lane.
        return self.decoded.ticket_id or self.decoded.key


@dataclass
class _Batch(Generic[T]):
    """What a batch has done so far, kept across waits for an outage: nothing settled is
    done twice when the batch is taken up again."""

    records: tuple[ConsumerRecord[Any, Any], ...]
    settled: set[int] = field(default_factory=set)  # id() of settled records
    items: list[_Item[T]] | None = None
    duplicates: set[str] | None = None
    handled: set[str] = field(default_factory=set)  # keys handled in this batch
    # The handlers' audit records nothing waits on (AuditLog.append_later): written in one
    # insert before the commit, and kept through an outage until they are.
    audit: AuditBatch | None = None

    def settle(self, record: ConsumerRecord[Any, Any]) -> None:
        self.settled.add(id(record))

    def open(self, record: ConsumerRecord[Any, Any]) -> bool:
        return id(record) not in self.settled


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

    Handlers of different tickets run concurrently (see the module's docstring): a handler
    must not assume it is the only one running in its process.
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
    tracer = runtime.telemetry.tracer_provider.get_tracer("intervention.consumer")
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

    async def prepare(record: ConsumerRecord[Any, Any]) -> _Item[T] | None:
        """Decode and check one message; None when it went to the DLQ instead."""
        body: bytes = record.value if isinstance(record.value, bytes) else b""
        try:
            decoded = decoder(body)
        except DecodeError as exc:
            await to_dlq(record, body, reason="decode", exc=exc, attempts=0)
            return None
        except Exception as exc:  # a decoder bug or hostile input (say, RecursionError)
            # Never leave the message unanswered: it is dead-lettered like any undecodable
            # message, and the partition moves on.
            log.exception("decoder raised %s; sending to DLQ", type(exc).__name__)
            await to_dlq(record, body, reason="decode", exc=exc, attempts=0)
            return None
        headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
        caller: Any = None
        try:
            if authenticate is not None:
                caller = await authenticate(body, headers)
            if verify is not None:
                await verify(decoded.value)
        except DecodeError as exc:
            await to_dlq(record, body, reason="unauthenticated", exc=exc, attempts=0)
            return None
        except Exception as exc:
            if outage_of(exc) is not None:
                raise  # waited out with the batch
            # A checker's own failure is the message's, like a handler's: never a stuck
            # partition, and never acted on.
            log.exception("checking a message raised %s; sending to DLQ", type(exc).__name__)
            await to_dlq(record, body, reason="handler", exc=exc, attempts=1)
            return None
        return _Item(record=record, body=body, decoded=decoded, headers=headers,
                     caller=caller)

    async def handle(item: _Item[T], batch: _Batch[T]) -> None:
        """One message of a lane, in its own process span; settled unless an outage
        interrupts it (then the whole batch is taken up again after the wait)."""
        record, decoded = item.record, item.decoded
        with process_span(tracer, runtime.kafka_middleware, record, group_id, item.headers,
                          len(item.body)) as span:
            if decoded.ticket_id is not None:
                span.set_attribute(TICKET_ID_ATTRIBUTE, decoded.ticket_id)
            token = current_ticket.set(decoded.ticket_id)
            try:
                delivery = Delivery(
                    runtime=runtime, topic=topic, partition=record.partition,
                    offset=record.offset, key=decoded.key, ticket_id=decoded.ticket_id,
                    headers=item.headers, caller=item.caller,
                )
                assert batch.duplicates is not None
                if decoded.key in batch.duplicates or decoded.key in batch.handled:
                    runtime.metrics.duplicate(topic)
                    if on_duplicate is not None:
                        try:
                            await on_duplicate(decoded.value, delivery)
                        except Exception:  # recording a duplicate must not block the partition
                            log.exception("on_duplicate hook failed")
                    batch.settle(record)
                    return
                await run_handler(item, delivery)
                batch.handled.add(decoded.key)
                batch.settle(record)
            finally:
                current_ticket.reset(token)

    async def run_handler(item: _Item[T], delivery: Delivery) -> None:
        for attempt in range(1, attempts_max + 1):
            began = time.perf_counter()
            try:
                await handler(item.decoded.value, delivery)
            except Exception as exc:  # every failure is retried, then DLQ'd
                runtime.metrics.handled(topic, "error", time.perf_counter() - began)
                if outage_of(exc) is not None:
                    # Kafka or the store is away: not the message's fault, and no attempt
                    # used up. The batch waits for the dependency and runs it again (the
                    # handler is idempotent).
                    raise
                if attempt == attempts_max:
                    log.exception("handler failed %d times; sending to DLQ", attempt)
                    await to_dlq(item.record, item.body, reason="handler", exc=exc,
                                 attempts=attempt)
                    # The same event sent again later (an operator's re-drive) must run.
                    await runtime.processed.forget(group_id, item.decoded.key)
                    return
                delay = backoff * 2 ** (attempt - 1) * (0.5 + random.random())
                log.warning("handler failed (attempt %d/%d), retrying in %.2fs: %s",
                            attempt, attempts_max, delay, type(exc).__name__)
                await asyncio.sleep(delay)
            else:
                runtime.metrics.handled(topic, "ok", time.perf_counter() - began)
                return

    async def work(batch: _Batch[T], consumer: AIOKafkaConsumer) -> None:
        """Settle every open message of ``batch``: raises on an outage (or a bug), having
        settled what it could."""
        if batch.items is None:
            items: list[_Item[T]] = []
            for record in batch.records:
                if not batch.open(record):
                    continue
                item = await prepare(record)
                if item is None:
                    batch.settle(record)
                else:
                    items.append(item)
            batch.items = items
        if batch.duplicates is None:

            async def committed(topic_name: str, partition: int) -> int | None:
                position = await consumer.committed(TopicPartition(topic_name, partition))
                return None if position is None else int(position)

            batch.duplicates = await runtime.processed.begin(group_id, [
                Begin(key=i.decoded.key, ticket_id=i.decoded.ticket_id, topic=i.record.topic,
                      partition=i.record.partition, offset=i.record.offset,
                      timestamp_ms=i.record.timestamp)
                for i in batch.items], committed=committed)
        lanes: dict[str, list[_Item[T]]] = {}
        for item in batch.items:
            if batch.open(item.record):
                lanes.setdefault(item.lane, []).append(item)
        gate = asyncio.Semaphore(settings.consumer_lanes)

        async def lane(items: list[_Item[T]]) -> None:
            async with gate:
                for item in items:
                    await handle(item, batch)

        results = await asyncio.gather(*(lane(items) for items in lanes.values()),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    async def commit(batch: _Batch[T], consumer: AIOKafkaConsumer) -> None:
        offsets: dict[TopicPartition, int] = {}
        for record in batch.records:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        await consumer.commit(offsets)

    async def consume(msg: KafkaMessage) -> None:
        """Settle the batch until it gets through an outage of Kafka or the store, then
        commit its offsets once.

        An exception escaping here would leave the batch uncommitted while the consumer
        moves on, and the next commit would skip it: so an outage is waited out (backoff
        doubling from ``OUTAGE_BACKOFF_S`` to ``OUTAGE_BACKOFF_MAX_S``), however long it
        lasts, and the batch's unsettled messages processed again (dedupe included)."""
        records = tuple(msg.raw_message) if isinstance(msg.raw_message, tuple) else (
            msg.raw_message,)
        if not records:
            return
        consumer: AIOKafkaConsumer = msg.consumer
        last: dict[tuple[str, int], ConsumerRecord[Any, Any]] = {}
        for record in records:
            last[(record.topic, record.partition)] = record
        for record in last.values():
            runtime.metrics.consuming(topic=topic, group=group_name,
                                      physical_topic=record.topic, partition=record.partition,
                                      offset=record.offset, consumer=consumer)
        batch: _Batch[T] = _Batch(records, audit=runtime.audit.batch())
        assert batch.audit is not None
        delay = OUTAGE_BACKOFF_S
        while True:
            try:
                with runtime.audit.gathering(batch.audit):
                    await work(batch, consumer)
                while len(batch.audit):  # durable before the commit
                    await batch.audit.flush()
                # From here a task a handler started appends at once, never into a batch
                # already written (no await between the last flush and this).
                batch.audit.close()
                await commit(batch, consumer)
            except CommitFailedError:
                # The group rebalanced while we worked: the partitions' new owner (maybe
                # this process again) gets the messages from the last commit; its handlers
                # run again, idempotently (their begun marks are not below that commit).
                batch.audit.close()
                log.warning("offset commit refused after a rebalance; the batch is "
                            "redelivered to the partitions' owner")
                return
            except Exception as exc:
                dependency = outage_of(exc)
                if dependency is None:
                    # Not a message's fault (those are retried and dead-lettered one by
                    # one): the runtime's own bookkeeping failed. Letting it escape would
                    # leave the batch uncommitted while the next commit passes it, so it is
                    # tried again, like an outage, and never skipped.
                    log.exception("batch of %d from %s failed; trying it again", len(records),
                                  topic)
                else:
                    runtime.dependencies.failed(dependency, exc)
                    runtime.metrics.outage_wait(topic, dependency)
                await asyncio.sleep(delay * (0.75 + random.random() / 2))
                delay = min(OUTAGE_BACKOFF_MAX_S, delay * 2)
                continue
            if delay != OUTAGE_BACKOFF_S:
                runtime.dependencies.recovered("kafka")
                runtime.dependencies.recovered("mongodb")
            break
        # Housekeeping after the commit: at most hourly per process (see
        # services.runtime.idempotency); never raises.
        await runtime.processed.prune_if_due()

    subscriber = runtime.broker.subscriber(
        source,
        batch=True,
        max_records=settings.consumer_batch_max_records,
        batch_timeout_ms=settings.consumer_batch_linger_ms,
        decoder=_raw_body,
        group_id=group_id,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        title=f"{runtime.service_name}:{topic}",
        description=(f"{runtime.service_name} consumes {topic} in batches, each ticket's "
                     f"messages in order, and commits after their effects are durable; a "
                     f"message it cannot handle goes to {topic}{DLQ_SUFFIX} with the reason."),
    )
    subscriber(consume)
    _poll_without_idle_sleep(subscriber)


def _poll_without_idle_sleep(subscriber: Any) -> None:
    """Poll again at once after an empty poll.

    FastStream's batch subscriber (0.7) sleeps ``batch_timeout_ms`` after a poll that came
    back empty, on top of the poll's own wait for data: a message that reaches an idle
    consumer during that sleep waits for it to end. At a steady rate that added up to
    ``CONSUMER_BATCH_LINGER_MS`` per hop (measured: p99 submit -> initial response 203 ms
    over two hops, with 100 ms of linger). The poll (aiokafka's ``getmany``) already waits
    up to the linger and returns as soon as a record arrives, so the loop does not spin
    without the sleep. ``get_msg`` is the subscriber's abstract poll, the extension point
    its subclasses implement."""
    async def get_msg(consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord[Any, Any], ...]:
        polled = await consumer.getmany(timeout_ms=subscriber.batch_timeout_ms,
                                        max_records=subscriber.max_records)
        return tuple(record for records in polled.values() for record in records)

    subscriber.get_msg = get_msg
