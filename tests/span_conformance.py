"""Spans against the attribute list the services promise (docs/architecture.md §7, "Spans").

:func:`problems` takes the spans of one ticket — the span file's JSON lines
(``INTERVENE_SPAN_FILE``, what the end-to-end suite reads) or SDK spans turned into the same
shape by :func:`from_sdk` — and returns one line per broken rule, empty when they conform:

- every span names the ticket in ``intervention.ticket_id``, and it is the ticket's;
- all spans share one trace (§5);
- no span carries a deprecated attribute (``messaging.operation``, ``net.peer.*``,
  ``ticket.id``, ...);
- a Kafka span (``messaging.system``) is named ``"{operation} {destination}"`` and has
  ``messaging.destination.name``, ``messaging.operation.type``/``.name``, a text key, and
  for a processed message ``messaging.consumer.group.name``,
  ``messaging.destination.partition.id`` (text), ``messaging.kafka.offset`` (integer) and
  ``messaging.message.body.size``;
- a CLIENT span has ``server.address`` and ``server.port``;
- a SERVER span is named ``"{method} {route}"`` with ``http.request.method``,
  ``http.route`` and ``http.response.status_code``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from services.runtime.telemetry import TICKET_ID_ATTRIBUTE, span_record

DEPRECATED = frozenset({
    "messaging.operation", "messaging.destination_publish.name",
    "messaging.kafka.destination.partition", "messaging.kafka.message.offset",
    "messaging.message.payload_size_bytes", "net.peer.name", "net.peer.port",
    "ticket.id",
})
OPERATION_TYPES = frozenset({"create", "send", "receive", "process", "settle"})
MESSAGING = ("messaging.system", "messaging.destination.name", "messaging.operation.type",
             "messaging.operation.name")
PROCESSED = ("messaging.consumer.group.name", "messaging.destination.partition.id",
             "messaging.kafka.offset", "messaging.message.body.size")


def from_sdk(span: ReadableSpan) -> dict[str, Any]:
    """An SDK span in the span file's shape."""
    record = span_record(span)
    assert record is not None
    return record


def _span_problems(span: dict[str, Any], ticket_id: str) -> list[str]:
    attrs: dict[str, Any] = span.get("attributes") or {}
    where = f"{span.get('service')}: {span['name']!r}"
    found = []
    if attrs.get(TICKET_ID_ATTRIBUTE) != ticket_id:
        found.append(f"{where}: {TICKET_ID_ATTRIBUTE} is {attrs.get(TICKET_ID_ATTRIBUTE)!r}, "
                     f"not {ticket_id!r}")
    found += [f"{where}: deprecated attribute {name}" for name in sorted(DEPRECATED & set(attrs))]
    if "messaging.system" in attrs:
        found += [f"{where}: no {name}" for name in MESSAGING if name not in attrs]
        operation = attrs.get("messaging.operation.type")
        if operation not in OPERATION_TYPES:
            found.append(f"{where}: messaging.operation.type {operation!r}")
        operation_name = attrs.get("messaging.operation.name")
        expected = f"{operation_name} {attrs.get('messaging.destination.name')}"
        if span["name"] != expected:
            found.append(f"{where}: named {span['name']!r}, not {expected!r}")
        key = attrs.get("messaging.kafka.message.key")
        if key is not None and (not isinstance(key, str) or key.startswith(("b'", 'b"'))):
            found.append(f"{where}: key {key!r} is not text")
        if operation == "process":
            found += [f"{where}: no {name}" for name in PROCESSED if name not in attrs]
            if not isinstance(attrs.get("messaging.destination.partition.id", ""), str):
                found.append(f"{where}: messaging.destination.partition.id is not text")
            if not isinstance(attrs.get("messaging.kafka.offset", 0), int):
                found.append(f"{where}: messaging.kafka.offset is not an integer")
    if span.get("kind") == "CLIENT":
        found += [f"{where}: no {name}" for name in ("server.address", "server.port")
                  if name not in attrs]
    if span.get("kind") == "SERVER":
        found += [f"{where}: no {name}" for name in
                  ("http.request.method", "http.route", "http.response.status_code")
                  if name not in attrs]
        expected = f"{attrs.get('http.request.method')} {attrs.get('http.route')}"
        if span["name"] != expected:
            found.append(f"{where}: named {span['name']!r}, not {expected!r}")
    return found


def problems(spans: Iterable[dict[str, Any]], ticket_id: str) -> list[str]:
    """Every way the spans of ``ticket_id`` break the attribute list (module docstring)."""
    spans = list(spans)
    if not spans:
        return [f"no spans for {ticket_id}"]
    found = [p for span in spans for p in _span_problems(span, ticket_id)]
    traces = {span["trace_id"] for span in spans}
    if len(traces) != 1:
        found.append(f"{ticket_id}'s spans are in {len(traces)} traces, not one")
    return found
