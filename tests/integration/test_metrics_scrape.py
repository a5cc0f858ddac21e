"""The notifier's /metrics after real events through the real broker and store.

A notifier runs in-process with its operations endpoint; four tickets go through it (one
resolved with a hardware escalation an engineer acknowledged, one complex, one waiting on a
manual step for hours, one nobody answered), one event twice, one poison message; the
sweeper fires what is due. Then the scrape must show non-zero domain metrics, every
dashboard query on a metric the notifier exports must find its series, no label may carry
a ticket or event id, and the stuck tickets are the two that should be.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

import metrics_catalogue as catalogue
from notifier_factories import (
    acknowledged,
    completed,
    hardware,
    manual_step,
    started,
    submitted,
)
from notifier_harness import Stack, module_topics, notifier_stack, settings_for
from polling import eventually

from schemas import topic_for
from schemas.envelope import EventEnvelope
from schemas.events import HardwareEscalated
from schemas.topics import physical
from services.cli.stuck import find_stuck_tickets
from services.runtime.ops import OpsServer

pytestmark = pytest.mark.integration

MIN = timedelta(minutes=1)
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Every label the notifier's scrape may carry: bounded enums, topics, partitions, groups.
ALLOWED_LABELS = {
    "messaging_destination_name", "messaging_destination_publish_name", "messaging_system",
    "messaging_destination_partition_id", "messaging_consumer_group_name", "error_type",
    "outcome", "reason", "le", "state", "age", "clock", "timeline", "page_kind", "channel",
    "tier", "category", "access_method", "mode", "dry_run", "component", "severity",
    "runbook", "step", "result", "otel_scope_name", "otel_scope_version",
    "dependency",  # intervention_dependency_up: kafka or mongodb, a fixed pair
    # intervention_store_round_trips: command names and collection names (partitions
    # folded into one name), both bounded by the code.
    "db_operation_name", "db_collection_name",
    "otel_scope_schema_url",
    # target_info: the process's resource, one series.
    "service_name", "service_namespace", "service_instance_id", "telemetry_sdk_language",
    "telemetry_sdk_name", "telemetry_sdk_version",
}
# Dashboard series the scenario has no reason to make non-zero: handler errors, breaches of
# the complex timeline (the compliance panel divides met by met + breached clocks), and the
# lag of a consumer that keeps up.
MAY_BE_ZERO = {("intervention_messages_handled_total", "outcome", "error"),
               ("intervention_sla_breaches_total", "timeline", "complex")}
ZERO_AT_REST = {"intervention_consumer_lag"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Scenario:
    def __init__(self, now: datetime) -> None:
        self.now = now
        # Resolved in 18 min; its disk escalation acknowledged after 5 min.
        self.resolved = submitted(at=now - 30 * MIN)
        self.disk = hardware(self.resolved, at=now - 20 * MIN)
        # Complex: 2 h of work, well within 4 h.
        self.complex = submitted(at=now - 3 * 60 * MIN, category="software_installation",
                                 scope="included", parameters={"packages": ["htop"]})
        # An engineer took it 3 h ago and asked for a console step; nothing since: stuck.
        self.waiting = submitted(at=now - 3 * 60 * MIN)
        # Nobody answered for 30 min: stuck, and its initial response breaches.
        self.silent = submitted(at=now - 30 * MIN)

    def events(self) -> list[EventEnvelope]:
        r, c, w = self.resolved, self.complex, self.waiting
        return [
            r, started(r, at=self.now - 28 * MIN), self.disk,
            acknowledged(r, self.disk.event_id, at=self.now - 15 * MIN),
            completed(r, at=self.now - 10 * MIN),
            c, started(c, at=c.occurred_at + MIN, timeline="complex"),
            completed(c, at=c.occurred_at + 121 * MIN),
            w, started(w, at=w.occurred_at + MIN, mode="engineer"),
            manual_step(w, at=w.occurred_at + 2 * MIN),
            self.silent,
        ]

    def ids(self) -> set[str]:
        return {e.ticket_id for e in self.events()} | {str(e.event_id) for e in self.events()}


@pytest.fixture(scope="module")
async def scraped(kafka_bootstrap: str, topic_prefix: str, real_parts: Any,
                  database_name: str) -> AsyncIterator[tuple[Stack, Scenario, str]]:
    async with module_topics(kafka_bootstrap, topic_prefix) as prefix:
        settings = settings_for(kafka_bootstrap, real_parts.mongodb_uri, prefix,
                                f"{database_name}_metrics_scrape",
                                notifier_metrics_refresh_s=0.2)
        async with notifier_stack(settings) as stack:
            port = _free_port()
            ops = OpsServer(stack.service.runtime, "127.0.0.1", port)
            await ops.start()
            try:
                scenario = Scenario(datetime.now(UTC))
                ledger = stack.service.ledger
                for event in scenario.events():
                    # One at a time, as the real services space them: each ticket's events
                    # arrive on different topics, and a milestone is measured from the facts
                    # recorded when it first shows (docs/operations-metrics.md).
                    await stack.bus.publish(event)

                    async def recorded(event: EventEnvelope = event) -> bool:
                        facts = await ledger.facts(event.ticket_id)
                        return any(f.fact_id == str(event.event_id) for f in facts)
                    await eventually(recorded, timeout=20)
                await stack.bus.publish(scenario.disk)  # redelivered: dropped, counted once
                await stack.bus._producer.send_and_wait(  # type: ignore[union-attr]
                    physical(topic_for(HardwareEscalated), prefix), b"{not json",
                    key=b"poison")
                url = f"http://127.0.0.1:{port}/metrics"
                async with httpx.AsyncClient() as client:
                    async def flowed() -> bool:
                        # The board is written after the deadline hints the sweeper reads.
                        await stack.service.projection.refresh_gauges()  # type: ignore[union-attr]
                        samples = catalogue.parse_scrape((await client.get(url)).text)
                        return (_total(samples, "intervention_tickets_open",
                                       state="waiting_engineer") == 1
                                and _total(samples, "intervention_tickets_open",
                                           state="submitted") == 1
                                and _total(samples, "intervention_interventions_completed_total")
                                == 2
                                and _total(samples, "intervention_acknowledgements_total") == 1
                                and _total(samples, "intervention_dlq_messages_total") == 1
                                and _total(samples, "intervention_messages_duplicates_total")
                                >= 1
                                and _total(samples,
                                           "intervention_sla_initial_response_duration_"
                                           "seconds_count") == 3)
                    await eventually(flowed, timeout=30)
                    # What is due now: the silent ticket's and the waiting one's SLA alerts,
                    # and escalations of the pages nobody acknowledged.
                    await stack.service.sweeper.sweep_once()
                    await stack.service.projection.refresh_gauges()  # type: ignore[union-attr]
                    text = (await client.get(url)).text
                yield stack, scenario, text
            finally:
                await ops.stop()


def _total(samples: list[catalogue.Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_domain_metrics_count_what_happened_to_the_tickets(
    scraped: tuple[Stack, Scenario, str],
) -> None:
    _, _, text = scraped
    samples = catalogue.parse_scrape(text)

    def total(name: str, **labels: str) -> float:
        return _total(samples, name, **labels)

    assert total("intervention_interventions_started_total") == 3
    assert total("intervention_interventions_completed_total", category="diagnostics",
                 access_method="ssh", outcome="resolved", dry_run="false") == 1
    assert total("intervention_interventions_completed_total",
                 category="software_installation") == 1
    assert total("intervention_hardware_escalations_total", component="disk",
                 severity="critical") == 1  # delivered twice, counted once
    assert total("intervention_acknowledgements_total", page_kind="hardware",
                 channel="matrix") == 1
    # (Bounds a little above the exact durations: event times are kept to the millisecond.)
    assert total("intervention_acknowledgement_duration_seconds_bucket", page_kind="hardware",
                 le="600.0") == 1
    # Three revisions answered (2, 1 and 1 min); the silent one breached instead.
    assert total("intervention_sla_initial_response_duration_seconds_bucket", le="300.0") == 3
    assert total("intervention_sla_met_total", clock="initial_response") == 3
    assert total("intervention_sla_breaches_total", clock="initial_response") == 1
    assert total("intervention_sla_warnings_total", clock="initial_response") == 1
    # Completed within budget: 18 min standard, 2 h complex; the waiting one breached.
    assert total("intervention_sla_completion_duration_seconds_bucket", timeline="standard",
                 le="3600.0") == 1
    assert total("intervention_sla_completion_duration_seconds_bucket", timeline="complex",
                 le="10800.0") == 1
    assert total("intervention_sla_met_total", clock="intervention") == 2
    assert total("intervention_sla_breaches_total", clock="intervention",
                 timeline="standard") == 1
    assert total("intervention_pages_escalations_total") >= 2
    # The board: one waiting on an engineer for 3 h, one never answered for 30 min.
    assert total("intervention_tickets_open", state="waiting_engineer", age="1h-4h") == 1
    assert total("intervention_tickets_open", state="submitted", age="10m-1h") == 1
    assert total("intervention_tickets_open") == 2
    assert total("intervention_tickets_overdue", clock="intervention") == 1
    assert total("intervention_tickets_overdue", clock="initial_response") == 1
    # The silent ticket's clock ran out 20 min ago: the initial response's least time left.
    assert -21 * 60 < total("intervention_sla_initial_response_time_left_seconds") < -19 * 60
    assert total("intervention_pages_open", page_kind="manual_step") == 1
    assert total("intervention_pages_open", page_kind="hardware") == 0
    assert total("intervention_pages_oldest_age_seconds", page_kind="new_ticket") >= 3 * 3600
    # The runtime's own: lag per partition of the notifier's groups, the poison message.
    assert any(s.name == "intervention_consumer_lag" for s in samples)
    assert total("intervention_dlq_messages_total", reason="decode",
                 messaging_destination_name="intervention.hardware-escalated") == 1


def test_every_dashboard_query_on_the_notifiers_metrics_finds_non_zero_series(
    scraped: tuple[Stack, Scenario, str],
) -> None:
    _, _, text = scraped
    samples = catalogue.parse_scrape(text)
    names = {s.name for s in samples}
    checked, problems = 0, []
    for target, selector in catalogue.dashboard_selectors():
        if selector.name not in names:
            continue  # another service's (intake, executor) or Prometheus's own
        checked += 1
        # The target labels Prometheus adds to every scraped series (the dashboard's job and
        # instance variables select on them).
        found = [s for s in samples if s.name == selector.name
                 and selector.matches({"job": "notifier", "instance": "scraped", **s.labels})]
        zero_ok = selector.name in ZERO_AT_REST or any(
            (selector.name, m.label, m.value) in MAY_BE_ZERO for m in selector.matchers)
        if not found:
            problems.append(f"{target.panel}: no series for {selector}")
        # Non-zero, not positive: the initial response's least time left is rightly negative
        # here (the silent ticket is 20 min past its deadline).
        elif not zero_ok and not any(s.value != 0 for s in found):
            problems.append(f"{target.panel}: only zeros for {selector}")
    assert checked >= 30, checked
    assert not problems, "\n".join(problems)


def test_no_label_carries_a_ticket_or_event_id(scraped: tuple[Stack, Scenario, str]) -> None:
    _, scenario, text = scraped
    for value in scenario.ids():
        assert value not in text
    for sample in catalogue.parse_scrape(text):
        unknown = set(sample.labels) - ALLOWED_LABELS
        assert not unknown, f"{sample.name} has unexpected labels {unknown}"
        for key, value in sample.labels.items():
            if key != "service_instance_id":  # target_info's one process id
                assert not UUID_RE.search(value), (sample.name, key, value)
            assert not value.startswith("HD-"), (sample.name, key, value)
            assert len(value) <= 120, (sample.name, key)


async def test_stuck_tickets_are_those_past_a_deadline_without_progress(
    scraped: tuple[Stack, Scenario, str],
) -> None:
    stack, scenario, _ = scraped
    stuck = await find_stuck_tickets(stack.service.runtime.db, datetime.now(UTC))
    by_ticket = {s.ticket_id: s for s in stuck}
    assert set(by_ticket) == {scenario.waiting.ticket_id, scenario.silent.ticket_id}
    waiting = by_ticket[scenario.waiting.ticket_id]
    assert (waiting.state, waiting.clock) == ("waiting_engineer", "intervention")
    # Event times are kept to the millisecond.
    expected = scenario.waiting.occurred_at + 61 * MIN
    assert abs(waiting.deadline - expected) < timedelta(milliseconds=1)
    silent = by_ticket[scenario.silent.ticket_id]
    assert (silent.state, silent.clock) == ("submitted", "initial_response")
    assert stuck[0].ticket_id == scenario.waiting.ticket_id  # most overdue first
