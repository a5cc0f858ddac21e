"""``GET /metrics``: intake's own counters plus the shared runtime's OpenTelemetry metrics.

One private Prometheus registry per service instance (not the process-global one), so
several instances in one process - tests, the benchmark - never clash. Every label has a
small fixed set of values: sources, outcomes, categories, route templates and status
codes; never ticket or account ids, never anything a request contains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal, get_args

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Source = Literal["http", "topic", "whmcs", "zammad"]
Outcome = Literal[
    "submitted",
    "duplicate",
    "rejected",
    "conflict",
    "stale",
    "too_large",
    "rate_limited",
    "bad_signature",
    "unnamed",
    "unauthenticated",
    "forbidden",
    "ignored",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class IntakeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The runtime's OpenTelemetry instruments (handled, duplicates, DLQ, publish and
        # FastStream's process/publish durations) exported into the same registry.
        self.otel_reader = PrometheusMetricReader(registry=self.registry)
        self._requests = Counter(
            "intake_requests", "Helpdesk requests by entry point and outcome.",
            ["source", "outcome"], registry=self.registry,
        )
        # Every entry point and outcome from zero: a series that appears with its first
        # increment is invisible to Prometheus's increase()/rate() (no earlier sample), so
        # the first request of each kind after a start would not show on the dashboard.
        for source in get_args(Source):
            for outcome in get_args(Outcome):
                self._requests.labels(source, outcome)
        self._classified = Counter(
            "intake_classifications", "Accepted tickets by category and how it was decided.",
            ["category", "category_source", "confidence"], registry=self.registry,
        )
        self._http = Counter(
            "intake_http_responses", "HTTP responses by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self._latency = Histogram(
            "intake_http_request_duration_seconds", "HTTP request handling time.",
            ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def watch_outbox(self, entries: Callable[[], float], oldest_age_s: Callable[[], float],
                     failing: Callable[[], float]) -> None:
        """Accepted tickets not yet on the bus: how many, how long the oldest has waited,
        and whether the relay cannot publish (the first stage of "stuck")."""
        Gauge("intake_outbox_entries", "Accepted tickets not yet published (outbox).",
              registry=self.registry).set_function(entries)
        Gauge("intake_outbox_oldest_age_seconds", "Age of the oldest unpublished accepted "
              "ticket (0 when the outbox is empty).", registry=self.registry,
              ).set_function(oldest_age_s)
        Gauge("intake_outbox_relay_failing", "1 while the outbox relay cannot publish.",
              registry=self.registry).set_function(failing)

    def request(self, source: Source, outcome: Outcome) -> None:
        self._requests.labels(source, outcome).inc()

    def classified(self, category: str, category_source: str, confidence: str) -> None:
        self._classified.labels(category, category_source, confidence).inc()

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        self._http.labels(route, method, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
