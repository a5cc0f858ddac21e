"""Spans follow the current OpenTelemetry conventions and all name the ticket one way.

Kafka spans come from FastStream's telemetry middleware with the project's settings
provider (services.runtime.kafka_telemetry), run here on FastStream's in-memory test broker
(wiring only: the integration suite checks the same spans on the real broker). The checker
the suites use (tests/span_conformance.py) is tested here against spans built to break each
rule.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from faststream.kafka import KafkaBroker, TestKafkaBroker
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import span_conformance as conformance

from services.runtime.kafka_telemetry import kafka_telemetry_middleware, messaging_name
from services.runtime.telemetry import (
    TICKET_ID_ATTRIBUTE,
    JsonLinesSpanExporter,
    TicketSpanProcessor,
    client_span,
    current_ticket,
    end_server_span,
    server_span,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TICKET = "HD-20261122-0001"


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(TicketSpanProcessor())
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def records(self) -> list[dict[str, Any]]:
        return [conformance.from_sdk(s) for s in self.finished()]


@pytest.fixture
def spans() -> Iterator[Spans]:
    made = Spans()
    yield made
    made.provider.shutdown()


# --- Kafka ------------------------------------------------------------------------------------


async def test_kafka_spans_are_named_operation_destination_with_current_attributes(
        spans: Spans) -> None:
    broker = KafkaBroker(middlewares=[kafka_telemetry_middleware(spans.provider,
                                                                 MeterProvider())])

    @broker.subscriber("intervention.ticket-submitted", group_id="auth")
    async def handle(body: Any) -> None:
        await broker.publish(b'{"x": 1}', "intervention.authorization-verified",
                             key=TICKET.encode())

    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(b'{"ticket": 1}', "intervention.ticket-submitted",
                                  key=TICKET.encode())
    by_name = {s.name: s for s in spans.finished()}
    process = by_name["process intervention.ticket-submitted"]
    assert process.kind == trace.SpanKind.CONSUMER
    attrs = dict(process.attributes or {})
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == "intervention.ticket-submitted"
    assert attrs["messaging.operation.type"] == attrs["messaging.operation.name"] == "process"
    assert attrs["messaging.destination.partition.id"] == "0"
    assert isinstance(attrs["messaging.kafka.offset"], int)
    assert attrs["messaging.kafka.message.key"] == TICKET  # text, not b'...'
    assert attrs["messaging.message.body.size"] == len(b'{"ticket": 1}')
    assert attrs[TICKET_ID_ATTRIBUTE] == TICKET
    send = by_name["send intervention.authorization-verified"]
    assert send.kind == trace.SpanKind.PRODUCER
    assert dict(send.attributes or {})["messaging.operation.type"] == "send"
    for span in spans.finished():
        assert "messaging.operation" not in (span.attributes or {}), span.name
        assert "messaging.destination_publish.name" not in (span.attributes or {}), span.name
    assert len({s.context.trace_id for s in spans.finished()}) == 1


async def test_an_audit_anchor_span_names_the_ticket_of_its_chain_key(spans: Spans) -> None:
    from services.runtime.audit_anchors import anchor_key

    broker = KafkaBroker(middlewares=[kafka_telemetry_middleware(spans.provider,
                                                                 MeterProvider())])
    async with TestKafkaBroker(broker):
        await broker.publish(b"{}", "t1.intervention.audit-anchored",
                             key=anchor_key(TICKET, "executor").encode())
    [send] = [s for s in spans.finished() if s.name == "send t1.intervention.audit-anchored"]
    attrs = dict(send.attributes or {})
    assert attrs["messaging.kafka.message.key"] == f"{TICKET}:executor"
    assert attrs[TICKET_ID_ATTRIBUTE] == TICKET


def test_only_faststream_messaging_names_are_rewritten() -> None:
    attrs = {"messaging.system": "kafka", "messaging.destination.name": "p.topic"}
    assert messaging_name("p.topic publish", attrs)[0] == "send p.topic"
    assert messaging_name("p.topic create", attrs)[1]["messaging.operation.type"] == "create"
    assert messaging_name("ssh connect", {}) == ("ssh connect", {})
    assert messaging_name("runbook step publish", {"runbook": "x"})[0] == "runbook step publish"


# --- HTTP server spans ------------------------------------------------------------------------


def test_server_span_continues_the_callers_traceparent(spans: Spans) -> None:
    headers = {"Traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "Content-Type": "x"}
    with server_span(spans.tracer, "POST", None, headers, path="/v1/tickets") as span:
        end_server_span(span, method="POST", route="/v1/tickets", status_code=202)
    [done] = spans.finished()
    assert done.name == "POST /v1/tickets"
    assert done.kind == trace.SpanKind.SERVER
    assert format(done.context.trace_id, "032x") == TRACE_ID
    assert done.parent is not None
    assert format(done.parent.span_id, "016x") == PARENT_ID
    assert dict(done.attributes or {}) == {
        "http.request.method": "POST", "url.scheme": "http", "url.path": "/v1/tickets",
        "http.route": "/v1/tickets", "http.response.status_code": 202}
    assert done.status.status_code == trace.StatusCode.UNSET


def test_server_span_without_traceparent_starts_a_trace_and_marks_5xx(spans: Spans) -> None:
    with server_span(spans.tracer, "GET", "/v1/tickets/{ticket_id}", {}) as span:
        end_server_span(span, method="GET", route="/v1/tickets/{ticket_id}", status_code=503)
    [done] = spans.finished()
    assert done.parent is None
    assert done.name == "GET /v1/tickets/{ticket_id}"
    assert done.status.status_code == trace.StatusCode.ERROR


# --- client spans and the ticket attribute ----------------------------------------------------


def test_ssh_client_span_names_the_server(spans: Spans) -> None:
    with client_span(spans.tracer, "ssh connect", host="203.0.113.10", port=22,
                     ticket_id=TICKET):
        pass
    [done] = spans.records()
    assert done["kind"] == "CLIENT"
    assert conformance.problems([done], TICKET) == []
    assert done["attributes"]["server.address"] == "203.0.113.10"


def test_every_span_names_the_ticket_being_handled_or_its_parents(spans: Spans) -> None:
    token = current_ticket.set(TICKET)
    try:
        with spans.tracer.start_as_current_span("handled"):
            pass
    finally:
        current_ticket.reset(token)
    with spans.tracer.start_as_current_span("claim", attributes={TICKET_ID_ATTRIBUTE: "HD-2"}), \
            spans.tracer.start_as_current_span("runbook step"):
        pass
    with spans.tracer.start_as_current_span("housekeeping"):
        pass
    tickets = {s.name: (s.attributes or {}).get(TICKET_ID_ATTRIBUTE) for s in spans.finished()}
    assert tickets == {"handled": TICKET, "claim": "HD-2", "runbook step": "HD-2",
                       "housekeeping": None}


# --- the checker ------------------------------------------------------------------------------


def _span(name: str, kind: str = "INTERNAL", trace_id: str = TRACE_ID,
          **attributes: Any) -> dict[str, Any]:
    return {"trace_id": trace_id, "span_id": "1", "parent_id": None, "name": name,
            "kind": kind, "service": "auth",
            "attributes": {TICKET_ID_ATTRIBUTE: TICKET, **attributes}}


PROCESS = {"messaging.system": "kafka", "messaging.destination.name": "t",
           "messaging.operation.type": "process", "messaging.operation.name": "process",
           "messaging.consumer.group.name": "auth", "messaging.destination.partition.id": "1",
           "messaging.kafka.offset": 7, "messaging.message.body.size": 10,
           "messaging.kafka.message.key": TICKET}


def test_conforming_spans_have_no_problems() -> None:
    spans = [_span("process t", "CONSUMER", **PROCESS),
             _span("ssh connect", "CLIENT", **{"server.address": "h", "server.port": 22}),
             _span("POST /v1/tickets", "SERVER", **{
                 "http.request.method": "POST", "http.route": "/v1/tickets",
                 "http.response.status_code": 202}),
             _span("executor intervention")]
    assert conformance.problems(spans, TICKET) == []


@pytest.mark.parametrize(("span", "problem"), [
    (_span("t process", "CONSUMER", **{**PROCESS, "messaging.operation": "process"}),
     "deprecated attribute messaging.operation"),
    (_span("t process", "CONSUMER", **PROCESS), "named 't process', not 'process t'"),
    (_span("process t", "CONSUMER", **{**PROCESS, "messaging.kafka.message.key": "b'HD-1'"}),
     "is not text"),
    (_span("process t", "CONSUMER", **{k: v for k, v in PROCESS.items()
                                       if k != "messaging.consumer.group.name"}),
     "no messaging.consumer.group.name"),
    (_span("ssh connect", "CLIENT", **{"net.peer.name": "h", "net.peer.port": 22}),
     "no server.address"),
    (_span("intake HTTP POST", "SERVER", **{"http.request.method": "POST"}), "no http.route"),
    ({**_span("x"), "attributes": {"ticket.id": TICKET}}, "deprecated attribute ticket.id"),
    ({**_span("x"), "attributes": {}}, f"{TICKET_ID_ATTRIBUTE} is None"),
])
def test_each_broken_rule_is_reported(span: dict[str, Any], problem: str) -> None:
    found = conformance.problems([span], TICKET)
    assert any(problem in p for p in found), found


def test_spans_in_two_traces_are_reported() -> None:
    found = conformance.problems([_span("a"), _span("b", trace_id="0" * 31 + "1")], TICKET)
    assert found == [f"{TICKET}'s spans are in 2 traces, not one"]
    assert conformance.problems([], TICKET) == [f"no spans for {TICKET}"]


def test_the_span_file_records_each_spans_kind_for_the_checker(tmp_path: Path) -> None:
    file = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(file)))
    with client_span(provider.get_tracer("test"), "ssh connect", host="h", port=22,
                     ticket_id=TICKET):
        pass
    provider.shutdown()
    [line] = file.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record["kind"] == "CLIENT"
    assert conformance.problems([record], TICKET) == []


async def test_server_span_in_an_http_middleware_names_the_matched_route(spans: Spans) -> None:
    """The way intake's HTTP middleware uses it: the route is known after the call."""
    app = FastAPI()

    @app.middleware("http")
    async def traced(request: Request, call_next: Any) -> Any:
        method = request.method
        with server_span(spans.tracer, method, None, request.headers,
                         path=request.url.path) as span:
            response = await call_next(request)
            route = getattr(request.scope.get("route"), "path", None)
            end_server_span(span, method=method, route=route,
                            status_code=response.status_code)
        return response

    @app.get("/v1/tickets/{ticket_id}")
    async def ticket(ticket_id: str) -> dict[str, str]:
        return {"ticket_id": ticket_id}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://intake.test") as client:
        answer = await client.get(f"/v1/tickets/{TICKET}",
                                  headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert answer.status_code == 200
    [done] = spans.finished()
    assert done.name == "GET /v1/tickets/{ticket_id}"
    assert format(done.context.trace_id, "032x") == TRACE_ID
    assert (done.attributes or {})["url.path"] == f"/v1/tickets/{TICKET}"
