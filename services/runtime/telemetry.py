"""Tracing, metrics and structured logs, bootstrapped once per service process.

Every service has its own ``TracerProvider`` (``service.name``) so spans say who made
them. FastStream's Kafka telemetry middleware carries W3C trace context in Kafka headers;
that is what makes one trace per ticket across four processes. Exporters: an in-memory one
for tests (pass ``span_exporter``), OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set, otherwise none (spans are still created, so trace ids reach the logs).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
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

current_ticket: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_ticket", default=None
)


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
            ctx = span.get_span_context()
            if ctx is None:
                continue
            lines.append(json.dumps({
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
                "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
                "name": span.name,
                "service": span.resource.attributes.get("service.name"),
                "start_ns": span.start_time,
                "end_ns": span.end_time,
                "status": span.status.status_code.name,
                "attributes": {
                    k: v if isinstance(v, int | float | bool) else redactor.redact_text(str(v))
                    for k, v in (span.attributes or {}).items()},
            }, ensure_ascii=False))
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
