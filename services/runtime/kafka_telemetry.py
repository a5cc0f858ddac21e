"""Kafka spans in the current OpenTelemetry messaging conventions, through FastStream.

FastStream's ``KafkaTelemetryMiddleware`` carries the W3C trace context in Kafka headers
(one trace per ticket), but names its spans ``"<topic> publish|process"`` and writes the
attributes of older conventions (``messaging.operation``, the key as Python ``bytes``, no
destination or consumer group on consumer spans). Two small pieces put that right without
re-implementing the middleware:

- :class:`SemconvKafkaSettingsProvider`, FastStream's own extension point
  (``settings_provider_factory``), decides the attributes: ``messaging.system``,
  ``messaging.destination.name``, ``messaging.destination.partition.id``,
  ``messaging.kafka.offset``, ``messaging.kafka.message.key`` as text,
  ``messaging.message.body.size`` and, since every topic is keyed by ``ticket_id``, the
  ticket attribute (:data:`~services.runtime.telemetry.TICKET_ID_ATTRIBUTE`; the audit
  anchors are keyed by chain, ``<ticket>:<producer>``, and name their ticket);
- the span *name* and ``messaging.operation`` are set by the middleware itself, so the
  middleware gets a tracer (:class:`_MessagingTracer`) that names each span
  ``"{operation} {destination}"``, adds ``messaging.operation.type``/``.name`` and drops the
  deprecated ``messaging.operation``. It wraps only the middleware's tracer; the services'
  own spans are untouched.

The consumer group is not in FastStream's view of a message; the shared consumer
(:mod:`services.runtime.consumer`) sets ``messaging.consumer.group.name`` on the span.
FastStream's metrics keep their names and labels (the dashboard and alerts use them).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from faststream.kafka.opentelemetry.provider import KafkaTelemetrySettingsProvider
from faststream.opentelemetry.middleware import TelemetryMiddleware
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager

from schemas.topics import AUDIT_ANCHORED
from services.runtime.audit_anchors import anchor_ticket
from services.runtime.telemetry import TICKET_ID_ATTRIBUTE

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from faststream.kafka.response import KafkaPublishCommand
    from faststream.message import StreamMessage
    from opentelemetry.metrics import MeterProvider

SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
OFFSET = "messaging.kafka.offset"
KEY = "messaging.kafka.message.key"
BODY_SIZE = "messaging.message.body.size"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
CONSUMER_GROUP = "messaging.consumer.group.name"
DESTINATION_PUBLISH = "messaging.destination_publish.name"  # FastStream's metric label
ERROR_TYPE = "error.type"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
DEPRECATED_OPERATION = "messaging.operation"

# FastStream's action (the last word of its span name) -> (operation type, operation name).
OPERATIONS: Mapping[str, tuple[str, str]] = {
    "publish": ("send", "send"),
    "process": ("process", "process"),
    "create": ("create", "create"),
}


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class SemconvKafkaSettingsProvider(KafkaTelemetrySettingsProvider):
    """FastStream's Kafka provider with the current messaging attributes."""

    __slots__ = ()

    def get_consume_attrs_from_message(
        self, msg: StreamMessage[ConsumerRecord[Any, Any]],
    ) -> dict[str, Any]:
        record = msg.raw_message
        attrs: dict[str, Any] = {
            SYSTEM: self.messaging_system,
            DESTINATION: record.topic,
            PARTITION: str(record.partition),
            OFFSET: record.offset,
            BODY_SIZE: len(msg.body),
            MESSAGE_ID: msg.message_id,
            CONVERSATION_ID: msg.correlation_id,
        }
        if record.key is not None:
            attrs[KEY] = _text(record.key)
            attrs[TICKET_ID_ATTRIBUTE] = _ticket_of(record.topic, attrs[KEY])
        return attrs

    def get_publish_attrs_from_cmd(self, cmd: KafkaPublishCommand) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            SYSTEM: self.messaging_system,
            DESTINATION: cmd.destination,
            CONVERSATION_ID: cmd.correlation_id,
        }
        if isinstance(cmd.body, bytes | str):
            attrs[BODY_SIZE] = len(cmd.body)
        if cmd.partition is not None:
            attrs[PARTITION] = str(cmd.partition)
        if cmd.key is not None:
            attrs[KEY] = _text(cmd.key)
            attrs[TICKET_ID_ATTRIBUTE] = _ticket_of(cmd.destination, attrs[KEY])
        return attrs


def _ticket_of(topic: str, key: str) -> str:
    return anchor_ticket(key) if topic.endswith(AUDIT_ANCHORED) else key


def _settings_provider(msg: object) -> SemconvKafkaSettingsProvider | None:
    # A batch gets no span of its own: the consumer runtime opens one per message
    # (process_span), in that message's trace - a ticket's trace, not a batch's.
    return None if isinstance(msg, Sequence) or isinstance(
        getattr(msg, "raw_message", None), tuple) else SemconvKafkaSettingsProvider()


@contextlib.contextmanager
def process_span(tracer: trace.Tracer, middleware: TelemetryMiddleware[Any] | None,
                 record: ConsumerRecord[Any, Any], group: str, headers: Mapping[str, str],
                 body_size: int) -> Iterator[Span]:
    """The ``process <topic>`` span of one message of a batch, a child of the trace context
    its headers carry (FastStream's middleware does this for single messages, and gives a
    batch one span linked to all), with the same attributes and the same
    ``messaging.process.duration`` / ``messaging.process.messages`` metrics."""
    parent = propagate.extract(dict(headers))
    attrs: dict[str, Any] = {
        SYSTEM: "kafka", DESTINATION: record.topic, PARTITION: str(record.partition),
        OFFSET: record.offset, BODY_SIZE: body_size, CONSUMER_GROUP: group,
        OPERATION_TYPE: "process", OPERATION_NAME: "process",
    }
    if record.key is not None:
        attrs[KEY] = attrs[TICKET_ID_ATTRIBUTE] = _text(record.key)
    if not trace.get_current_span(parent).get_span_context().is_valid:
        # A message from outside (a helpdesk) carries no trace: it starts one, as
        # FastStream's middleware does with a "create" span.
        created = tracer.start_span(f"create {record.topic}", kind=SpanKind.CONSUMER,
                                    attributes={**attrs, OPERATION_TYPE: "create",
                                                OPERATION_NAME: "create"})
        parent = trace.set_span_in_context(created)
        created.end()
    metric_attrs: dict[str, Any] = {SYSTEM: "kafka", DESTINATION_PUBLISH: record.topic}
    began = time.perf_counter()
    try:
        with tracer.start_as_current_span(f"process {record.topic}", context=parent,
                                          kind=SpanKind.CONSUMER, attributes=attrs) as span:
            yield span
    except Exception as exc:
        metric_attrs[ERROR_TYPE] = type(exc).__name__
        raise
    finally:
        if middleware is not None:
            middleware._metrics.observe_consume(metric_attrs, time.perf_counter() - began, 1)


def messaging_name(name: str, attributes: types.Attributes) -> tuple[str, dict[str, Any]]:
    """FastStream's ``"<topic> <action>"`` -> ``"<operation> <topic>"`` and the operation
    attributes; any other name is returned as it is."""
    attrs = dict(attributes or {})
    destination, _, action = name.rpartition(" ")
    if action not in OPERATIONS or SYSTEM not in attrs:
        return name, attrs
    kind, operation = OPERATIONS[action]
    attrs[OPERATION_TYPE] = kind
    attrs[OPERATION_NAME] = operation
    return f"{operation} {attrs.get(DESTINATION, destination)}", attrs


class _MessagingSpan(Span):
    """A span that ignores the deprecated ``messaging.operation`` FastStream sets on it."""

    def __init__(self, inner: Span) -> None:
        self._inner = inner

    @property
    def attributes(self) -> types.Attributes:
        return getattr(self._inner, "attributes", None)

    def end(self, end_time: int | None = None) -> None:
        self._inner.end(end_time)

    def get_span_context(self) -> SpanContext:
        return self._inner.get_span_context()

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        self._inner.set_attributes(
            {k: v for k, v in attributes.items() if k != DEPRECATED_OPERATION})

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if key != DEPRECATED_OPERATION:
            self._inner.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        self._inner.add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        self._inner.add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self._inner.update_name(name)

    def is_recording(self) -> bool:
        return self._inner.is_recording()

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._inner.set_status(status, description)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self._inner.record_exception(exception, attributes, timestamp, escaped)


class _MessagingTracer(trace.Tracer):
    """The middleware's tracer: current span names and operation attributes."""

    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(self, name: str, context: Context | None = None,
                   kind: SpanKind = SpanKind.INTERNAL, attributes: types.Attributes = None,
                   links: Sequence[Link] | None = None, start_time: int | None = None,
                   record_exception: bool = True,
                   set_status_on_exception: bool = True) -> Span:
        name, attrs = messaging_name(name, attributes)
        return _MessagingSpan(self._inner.start_span(
            name, context, kind, attrs, links, start_time, record_exception,
            set_status_on_exception))

    # The API's own decorator (it types the override as the API declares it).
    @_agnosticcontextmanager
    def start_as_current_span(self, name: str, context: Context | None = None,
                              kind: SpanKind = SpanKind.INTERNAL,
                              attributes: types.Attributes = None,
                              links: Sequence[Link] | None = None,
                              start_time: int | None = None, record_exception: bool = True,
                              set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> Iterator[Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time,
                               record_exception, set_status_on_exception)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception) as current:
            yield current


class _MessagingTracerProvider(trace.TracerProvider):
    def __init__(self, inner: trace.TracerProvider) -> None:
        self._inner = inner

    def get_tracer(self, instrumenting_module_name: str,
                   instrumenting_library_version: str | None = None,
                   schema_url: str | None = None,
                   attributes: types.Attributes = None) -> trace.Tracer:
        return _MessagingTracer(self._inner.get_tracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes))


def kafka_telemetry_middleware(tracer_provider: trace.TracerProvider,
                               meter_provider: MeterProvider) -> TelemetryMiddleware[Any]:
    """FastStream's Kafka telemetry middleware with the current messaging conventions."""
    return TelemetryMiddleware(
        settings_provider_factory=_settings_provider,
        tracer_provider=_MessagingTracerProvider(tracer_provider),
        meter_provider=meter_provider,
        include_messages_counters=True,  # as KafkaTelemetryMiddleware
    )
