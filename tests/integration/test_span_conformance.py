"""One ticket's spans through intake, auth and the notifier on the real broker conform.

Intake (its FastAPI app and helpdesk consumer), auth and the notifier run in this process on
this module's own topic prefix, each with its own tracer provider exporting to memory, as
in production each process has its own. A ticket goes in over intake's HTTP API; auth
refuses it (its server is in no inventory here) and the notifier answers the customer
twice (the acknowledgement, then the refusal). Every span of that ticket, in every service,
is then held to the attribute list (tests/span_conformance.py). The executor's part of a
lifecycle (verdict in, SSH, runbook steps, events out) is held to the same list in
test_executor_service.py; the whole lifecycle in one trace is the end-to-end suite's.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import span_conformance as conformance
from intake_rig import Intake, start_intake

from services.auth.app import build as build_auth
from services.auth.settings import AuthSettings
from services.intake.examples import example_request
from services.notifier.app import build as build_notifier
from services.notifier.settings import NotifierSettings
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import init_keys
from services.runtime.telemetry import TICKET_ID_ATTRIBUTE, setup_telemetry

pytestmark = pytest.mark.integration

WAIT_S = 60.0


@dataclass
class Pipeline:
    intake: Intake
    auth: InMemorySpanExporter
    notifier: InMemorySpanExporter

    def spans_of(self, ticket_id: str) -> list[dict[str, Any]]:
        finished = [*self.intake.spans.get_finished_spans(),
                    *self.auth.get_finished_spans(), *self.notifier.get_finished_spans()]
        records = [conformance.from_sdk(s) for s in finished]
        traces = {r["trace_id"] for r in records
                  if r["attributes"].get(TICKET_ID_ATTRIBUTE) == ticket_id}
        return [r for r in records if r["trace_id"] in traces]


@pytest.fixture(scope="module")
async def pipeline(kafka_bootstrap: str, topic_prefix: str, database_name: str,
                   real_parts: Any, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[Pipeline]:
    prefix = f"{topic_prefix}spans{uuid.uuid4().hex[:6]}."
    await ensure_topics(kafka_bootstrap, prefix=prefix)
    common: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap, "kafka_topic_prefix": prefix,
        "mongodb_uri": real_parts.mongodb_uri, "handler_retry_backoff_s": 0.05}
    keys = init_keys(tmp_path_factory.mktemp("auth-keys"))
    auth_spans, notifier_spans = InMemorySpanExporter(), InMemorySpanExporter()
    auth = build_auth(AuthSettings(**common, mongodb_database=f"{database_name}_spans_auth",
                                   auth_signing_key=keys.signing_private,
                                   auth_intake_verify_keys=str(keys.intake_signing_public)),
                      telemetry=setup_telemetry("auth", span_exporter=auth_spans))
    notifier = build_notifier(
        NotifierSettings(**common, mongodb_database=f"{database_name}_spans_notifier",
                         notifier_signing_key=keys.notifier_signing_private),
        serve_http=False, run_sweeper=False,
        telemetry=setup_telemetry("notifier", span_exporter=notifier_spans))
    await auth.start()
    await notifier.start()
    try:
        async for intake in start_intake(kafka_bootstrap, prefix, f"{database_name}_spans",
                                         real_parts, tmp_path_factory, keys=keys.directory):
            yield Pipeline(intake=intake, auth=auth_spans, notifier=notifier_spans)
    finally:
        await notifier.stop()
        await auth.stop()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(real_parts.mongodb_uri)
        for name in ("auth", "notifier"):
            await client.drop_database(f"{database_name}_spans_{name}")
        await client.close()


async def test_every_span_of_a_ticket_through_intake_auth_and_notifier_conforms(
        pipeline: Pipeline, unique: str) -> None:
    ticket = f"HD-{unique}-spans"
    response = await pipeline.intake.http.post("/v1/tickets", json=example_request(
        ticket_id=ticket))
    assert response.status_code == 202, response.text

    def answered() -> bool:
        names = [s["name"] for s in pipeline.spans_of(ticket) if s["service"] == "notifier"]
        return sum(n.startswith("send ") and n.endswith("intervention.ticket-updated")
                   for n in names) >= 2

    deadline = time.monotonic() + WAIT_S
    while not answered():
        assert time.monotonic() < deadline, [
            (s["service"], s["name"]) for s in pipeline.spans_of(ticket)]
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)  # spans of the handlers' last steps end after their publish
    spans = pipeline.spans_of(ticket)
    assert {s["service"] for s in spans} == {"intake", "auth", "notifier"}
    assert {s["kind"] for s in spans} >= {"PRODUCER", "CONSUMER"}
    consumed = {s["attributes"].get("messaging.consumer.group.name") for s in spans
                if s["kind"] == "CONSUMER" and s["name"].startswith("process ")}
    assert len(consumed) >= 3, consumed  # auth's group and the notifier's
    assert conformance.problems(spans, ticket) == []
