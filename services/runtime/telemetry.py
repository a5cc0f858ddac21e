"""Tracing, metrics and structured logs, bootstrapped once per service process.

Every service has its own ``TracerProvider`` (``service.name``) so spans say who made
them. FastStream's Kafka telemetry middleware carries W3C trace context in Kafka headers;
that is what makes one trace per ticket across four processes. Exporters: an in-memory one
for tests (pass ``span_exporter``), OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set, otherwise none (spans are still created, so trace ids reach the logs).

Every span of every service names the ticket it works on in one attribute,
:data:`TICKET_ID_ATTRIBUTE`, so one query finds a ticket's spans: a span processor copies it
from the ticket being handled (:data:`current_ticket`, set by the shared consumer) or from
the parent span. Kafka spans follow the current messaging conventions
(:mod:`services.runtime.kafka_telemetry`); :func:`server_span` and :func:`client_span` give
HTTP server and outbound (SSH) spans theirs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from prometheus_client import CollectorRegistry

from services.runtime.metrics import metric_views
from services.runtime.redaction import RedactingFilter, default_redactor

SPAN_FILE_ENV = "INTERVENE_SPAN_FILE"

# The one name of the ticket attribute on every span of every service (docs/architecture.md
# §7, "Spans"). A project attribute, so in the project's namespace.
TICKET_ID_ATTRIBUTE = "intervention.ticket_id"

current_ticket: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_ticket", default=None
)


class TicketSpanProcessor(SpanProcessor):
    """Names the ticket on every span started while one is handled, or under a span that
    names one: the ticket attribute needs no code at each place a span is opened."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        if span.attributes and TICKET_ID_ATTRIBUTE in span.attributes:
            return
        ticket = current_ticket.get()
        if ticket is None:
            parent = getattr(trace.get_current_span(parent_context), "attributes", None)
            ticket = parent.get(TICKET_ID_ATTRIBUTE) if parent else None
        if ticket is not None:
            span.set_attribute(TICKET_ID_ATTRIBUTE, ticket)


@contextmanager
def server_span(tracer: trace.Tracer, method: str, route: str | None,
                headers: Mapping[str, str], *, scheme: str = "http",
                path: str | None = None) -> Iterator[trace.Span]:
    """An HTTP SERVER span ``"{method} {route}"`` (``"{method}"`` while the route is not
    known yet) that continues the caller's W3C trace context (``traceparent``/``tracestate``
    in ``headers``, any case). Set the route and status with :func:`end_server_span`."""
    attributes: dict[str, str] = {"http.request.method": method, "url.scheme": scheme}
    if path is not None:
        attributes["url.path"] = path
    if route is not None:
        attributes["http.route"] = route
    parent = propagate.extract({k.lower(): v for k, v in headers.items()})
    with tracer.start_as_current_span(f"{method} {route}" if route else method,
                                      context=parent, kind=trace.SpanKind.SERVER,
                                      attributes=attributes) as span:
        yield span


def end_server_span(span: trace.Span, *, method: str, route: str | None,
                    status_code: int) -> None:
    """The matched route (renaming the span) and the response status of a server span;
    a 5xx marks it as an error (4xx is the client's, not the server's)."""
    if route is not None:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status_code)
    if status_code >= 500:
        span.set_status(trace.StatusCode.ERROR)


@contextmanager
def client_span(tracer: trace.Tracer, name: str, *, host: str, port: int,
                ticket_id: str | None = None) -> Iterator[trace.Span]:
    """A CLIENT span for a connection to ``host:port`` (SSH to a customer's server), with
    the current ``server.address``/``server.port`` attributes."""
    attributes: dict[str, str | int] = {"server.address": host, "server.port": port}
    if ticket_id is not None:
        attributes[TICKET_ID_ATTRIBUTE] = ticket_id
    with tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT,
                                      attributes=attributes) as span:
        yield span


@dataclass(frozen=True, kw_only=True)
class Telemetry:
    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    # The Prometheus registry the service's OTel metrics are exported into (None when the
    # caller brought its own metric readers, as intake does for its /metrics).
    registry: CollectorRegistry | None = None

    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer(f"intervention.{self.service_name}")

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        if isinstance(self.meter_provider, SdkMeterProvider):
            self.meter_provider.shutdown()


def span_record(span: ReadableSpan) -> dict[str, Any] | None:
    """A finished span as the span file holds it (attributes not yet redacted); None for a
    span without a context."""
    ctx = span.get_span_context()
    if ctx is None:
        return None
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Finished spans appended as JSON lines to a file several processes share.

    The trace store of the Docker-free stack: `intervene trace` reads it when no OTLP
    backend runs. One ``write`` per batch with ``O_APPEND`` keeps lines from interleaving.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        redactor = default_redactor()  # span attributes are data too: mask known secrets
        lines = []
        for span in spans:
            record = span_record(span)
            if record is None:
                continue
            record["attributes"] = {
                k: v if isinstance(v, int | float | bool) else redactor.redact_text(str(v))
                for k, v in record["attributes"].items()}
            lines.append(json.dumps(record, ensure_ascii=False))
        if lines:
            with self._path.open("a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing is held open between batches."""


def setup_telemetry(
    service_name: str,
    *,
    span_exporter: SpanExporter | None = None,
    metric_readers: list[MetricReader] | None = None,
    registry: CollectorRegistry | None = None,
) -> Telemetry:
    """``registry``: where ``metric_readers`` export to, when the caller brings its own (the
    ops listener's ``/metrics`` serves it)."""
    resource = Resource.create({"service.name": service_name, "service.namespace": "intervention"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(TicketSpanProcessor())
    if span_exporter is not None:
        # Tests read spans right after the handler returns: export synchronously.
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if span_exporter is None and os.environ.get(SPAN_FILE_ENV):
        tracer_provider.add_span_processor(
            BatchSpanProcessor(JsonLinesSpanExporter(Path(os.environ[SPAN_FILE_ENV]))))
    if metric_readers is None:
        # A private registry per runtime, not the process-global one: several runtimes in
        # one process (tests, benchmarks) must not clash over metric names.
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        registry = CollectorRegistry(auto_describe=True)
        metric_readers = [PrometheusMetricReader(registry=registry)]
    meter_provider = SdkMeterProvider(resource=resource, metric_readers=metric_readers,
                                      views=metric_views())
    return Telemetry(
        service_name=service_name, tracer_provider=tracer_provider,
        meter_provider=meter_provider, registry=registry,
    )


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the trace, span and ticket the record belongs to."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service_name,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = format(ctx.trace_id, "032x")
            entry["span_id"] = format(ctx.span_id, "016x")
        ticket = current_ticket.get()
        if ticket is not None:
            entry["ticket_id"] = ticket
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def configure_logging(service_name: str, *, level: int = logging.INFO) -> logging.Handler:
    """JSON logs on stderr, every record passed through value-based redaction first."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service_name))
    # On the handler, not a logger: records from every library pass through it.
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    return handler
