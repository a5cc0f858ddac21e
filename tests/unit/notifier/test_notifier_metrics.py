"""The notifier's domain metrics and open-ticket board, as pure projections of ticket facts."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from notifier_factories import (
    NOW,
    acknowledged,
    auth_rejected,
    clarification,
    completed,
    hardware,
    manual_step,
    queued,
    started,
    step_completed,
    submitted,
)
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.events import Event
from services.cli.stuck import stuck_tickets
from services.notifier.board import board_entry, from_document, to_document
from services.notifier.metrics import (
    Milestone,
    NotifierMetrics,
    category_of,
    milestones,
    snapshot,
)
from services.notifier.sla import Fact, SlaPolicy, TicketState, fact_of, fold, sla_alert_id

POLICY = SlaPolicy()
MIN = timedelta(minutes=1)


def facts_of(*events: Event) -> list[Fact]:
    facts = [fact_of(e) for e in events]
    return [f for f in facts if f is not None]


def project(*events: Event, ticket_id: str | None = None) -> tuple[list[Fact], TicketState]:
    facts = facts_of(*events)
    tid = ticket_id or events[0].ticket_id
    return facts, fold(tid, facts, POLICY)


def stones(*events: Event) -> list[Milestone]:
    facts, state = project(*events)
    return milestones(events[0].ticket_id, facts, state)


def test_initial_response_is_measured_to_the_first_response_and_counted_as_met() -> None:
    ticket = submitted(at=NOW)
    [stopped] = stones(ticket, started(ticket, at=NOW + 3 * MIN))
    assert stopped.kind == "clock_stopped"
    assert stopped.attrs == {"clock": "initial_response"}
    assert stopped.seconds == 180
    assert stopped.met
    assert stopped.key == f"{ticket.ticket_id}:r1:initial_response:stopped"


def test_a_response_after_the_deadline_is_a_breach_under_the_sweepers_alert_id() -> None:
    ticket = submitted(at=NOW)
    response = auth_rejected(ticket, at=NOW + 12 * MIN)
    facts, state = project(ticket, response)
    found = milestones(ticket.ticket_id, facts, state)
    assert [m.kind for m in found] == ["clock_stopped", "clock_late"]
    assert not found[0].met
    clock = state.clock("initial_response")
    assert clock is not None
    # The same key the sweeper's SlaBreached counts under: one breach, whoever sees it first.
    assert found[1].key == sla_alert_id(ticket.ticket_id, clock, "sla_breach")


def test_completion_time_excludes_the_customers_pauses_and_carries_the_final_timeline() -> None:
    ticket = submitted(at=NOW)
    answer = submitted(ticket_id=ticket.ticket_id, revision=2, at=NOW + 40 * MIN)
    events = [ticket, started(ticket, at=NOW + MIN, timeline="standard"),
              clarification(ticket, at=NOW + 10 * MIN),
              answer, started(answer, at=NOW + 41 * MIN, timeline="complex"),
              completed(answer, at=NOW + 70 * MIN)]
    completion = [m for m in stones(*events) if m.attrs.get("clock") == "intervention"]
    [stopped] = completion
    assert stopped.attrs == {"clock": "intervention", "timeline": "complex"}
    assert stopped.seconds == (9 + 30) * 60  # 1→10 min, then 40→70 min
    assert stopped.met


def test_an_acknowledged_page_measures_time_to_ack_by_page_kind_and_channel() -> None:
    ticket = submitted(at=NOW)
    step = manual_step(ticket, at=NOW + 2 * MIN)
    found = stones(ticket, started(ticket, at=NOW + MIN, mode="engineer"), step,
                   acknowledged(ticket, step.event_id, at=NOW + 7 * MIN))
    [ack] = [m for m in found if m.kind == "acknowledged"]
    assert ack.attrs == {"page_kind": "manual_step", "channel": "matrix"}
    assert ack.seconds == 300


def test_milestones_do_not_depend_on_the_order_facts_were_recorded_in() -> None:
    ticket = submitted(at=NOW)
    step = manual_step(ticket, at=NOW + 2 * MIN)
    events: list[Event] = [ticket, started(ticket, at=NOW + MIN), step,
                           acknowledged(ticket, step.event_id, at=NOW + 4 * MIN),
                           step_completed(ticket, step, at=NOW + 20 * MIN),
                           completed(ticket, at=NOW + 90 * MIN)]
    expected = stones(*events)
    for seed in range(5):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        facts = facts_of(*shuffled)
        assert milestones(ticket.ticket_id, facts, fold(ticket.ticket_id, facts, POLICY)) \
            == expected


def test_the_category_is_the_latest_submitted_revisions() -> None:
    first = submitted(at=NOW, category="diagnostics")
    second = submitted(ticket_id=first.ticket_id, revision=2, at=NOW + MIN,
                       category="service_restart", parameters={"unit": "nginx"})
    facts = facts_of(first, second)
    assert category_of(facts, 1) == "diagnostics"
    assert category_of(facts, 2) == "service_restart"
    assert category_of(facts_of(started(first)), 1) == "unknown"


# --- the board -------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "phase"), [
    (lambda t: [t], "submitted"),
    (lambda t: [t, clarification(t, at=NOW + MIN)], "waiting_customer"),
    (lambda t: [t, started(t, at=NOW + MIN)], "in_progress"),
    (lambda t: [t, started(t, at=NOW + MIN), manual_step(t, at=NOW + 2 * MIN)],
     "waiting_engineer"),
    (lambda t: [t, auth_rejected(t, at=NOW + MIN)], None),
    (lambda t: [t, started(t, at=NOW + MIN), completed(t, at=NOW + 2 * MIN)], None),
])
def test_the_board_shows_the_lifecycle_state_of_the_latest_fact(steps, phase) -> None:
    ticket = submitted(at=NOW)
    events = steps(ticket)
    facts, state = project(*reversed(events))  # recorded order must not matter
    assert board_entry(ticket.ticket_id, facts, state).phase == phase


def test_a_closed_ticket_stays_on_the_board_while_a_hardware_page_waits() -> None:
    ticket = submitted(at=NOW)
    facts, state = project(ticket, started(ticket, at=NOW + MIN),
                           hardware(ticket, at=NOW + 2 * MIN),
                           completed(ticket, at=NOW + 3 * MIN, outcome="unresolved"))
    entry = board_entry(ticket.ticket_id, facts, state)
    assert entry.phase is None
    assert [p.kind for p in entry.pages] == ["hardware"]
    assert entry.listed
    assert from_document({"_id": ticket.ticket_id, **to_document(entry, len(facts))}) == entry

    facts, state = project(ticket, started(ticket, at=NOW + MIN),
                           completed(ticket, at=NOW + 3 * MIN))
    assert not board_entry(ticket.ticket_id, facts, state).listed


def test_a_reopened_ticket_ages_from_its_reopening() -> None:
    ticket = submitted(at=NOW)
    again = submitted(ticket_id=ticket.ticket_id, revision=2, at=NOW + 60 * MIN)
    facts, state = project(ticket, auth_rejected(ticket, at=NOW + MIN), again)
    entry = board_entry(ticket.ticket_id, facts, state)
    assert (entry.phase, entry.opened_at) == ("submitted", NOW + 60 * MIN)


def test_gauges_count_open_tickets_by_state_and_age_band_and_waiting_pages() -> None:
    now = NOW + 5 * 60 * MIN
    entries = []
    for opened, extra in ((now - 5 * MIN, False), (now - 30 * MIN, False),
                          (now - 3 * 60 * MIN, True)):
        ticket = submitted(at=opened)
        events: list[Event] = [ticket]
        if extra:
            events.append(started(ticket, at=opened + MIN))
        facts, state = project(*events)
        entries.append(board_entry(ticket.ticket_id, facts, state))
    board = snapshot(entries, now)
    assert board.open == {("submitted", "0-10m"): 1, ("submitted", "10m-1h"): 1,
                          ("in_progress", "1h-4h"): 1}
    assert board.oldest["in_progress"] == 3 * 3600
    # The two new tickets' pages wait; the started one's page was resolved by the automation.
    assert board.pages == {"new_ticket": 2}
    assert board.oldest_page["new_ticket"] == 30 * 60
    # 30 min without a response, and 3 h into a 60-minute intervention.
    assert board.overdue == {"initial_response": 1, "intervention": 1}


def test_the_least_time_left_on_an_initial_response_clock_is_the_at_risk_gauge() -> None:
    now = NOW + 7 * MIN
    waiting, answered, silent = submitted(at=NOW + 4 * MIN), submitted(at=NOW), \
        submitted(at=NOW - 20 * MIN)
    entries = [_entry(waiting),
               _entry(answered, started(answered, at=NOW + MIN)),
               _entry(silent)]
    # The silent ticket passed its deadline 17 min ago; the waiting one has 7 min left.
    assert snapshot(entries, now).initial_time_left == -17 * 60
    assert snapshot(entries[:2], now).initial_time_left == 7 * 60
    assert snapshot(entries[1:2], now).initial_time_left is None  # nothing at risk


def test_a_queued_ticket_shows_on_the_board_as_waiting_for_executor_capacity() -> None:
    ticket = submitted(at=NOW)
    entry = _entry(ticket, queued(ticket, at=NOW + MIN))
    assert (entry.phase, entry.queued_at) == ("submitted", NOW + MIN)
    assert from_document({"_id": ticket.ticket_id, **to_document(entry, 2)}) == entry
    # Started: no longer queued.
    assert _entry(ticket, queued(ticket, at=NOW + MIN),
                  started(ticket, at=NOW + 2 * MIN)).queued_at is None


# --- stuck tickets ---------------------------------------------------------------------------


def _entry(*events: Event):  # type: ignore[no-untyped-def]
    facts, state = project(*events)
    return board_entry(events[0].ticket_id, facts, state)


def test_a_ticket_is_stuck_when_a_running_clock_passed_its_deadline_without_progress() -> None:
    now = NOW + 3 * 60 * MIN
    quiet = submitted(at=NOW)
    late = _entry(quiet, started(quiet, at=NOW + MIN), manual_step(quiet, at=NOW + 2 * MIN))
    moving = submitted(at=NOW)
    step = manual_step(moving, at=NOW + 2 * MIN)
    progressing = _entry(moving, started(moving, at=NOW + MIN), step,
                         step_completed(moving, step, at=NOW + 2 * 60 * MIN))
    waiting = submitted(at=NOW)
    paused = _entry(waiting, started(waiting, at=NOW + MIN),
                    clarification(waiting, at=NOW + 5 * MIN))
    fresh = submitted(at=now - MIN)
    on_time = _entry(fresh)

    [stuck] = stuck_tickets([late, progressing, paused, on_time], now)
    assert stuck.ticket_id == quiet.ticket_id
    assert (stuck.state, stuck.clock, stuck.revision) == ("waiting_engineer", "intervention", 1)
    assert stuck.deadline == NOW + 61 * MIN
    assert stuck.overdue == now - (NOW + 61 * MIN)
    assert stuck.last_progress_at == NOW + 2 * MIN
    assert "engineer" in stuck.waiting_for


def test_stuck_tickets_are_listed_most_overdue_first() -> None:
    now = NOW + 10 * 60 * MIN
    older, newer = submitted(at=NOW), submitted(at=NOW + 60 * MIN)
    found = stuck_tickets([_entry(newer), _entry(older)], now)
    assert [s.ticket_id for s in found] == [older.ticket_id, newer.ticket_id]
    assert {s.clock for s in found} == {"initial_response"}


# --- the instruments -------------------------------------------------------------------------


def _scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def test_instruments_export_bounded_labels_and_start_sla_counters_at_zero() -> None:
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    metrics = NotifierMetrics(provider, POLICY)
    before = _scrape(registry)
    # SLO ratios need both series from the start: breaches / (breaches + met).
    # (The exporter writes a label missing from one series as "", which Prometheus treats as
    # absent.)
    zero = {(lb.get("clock"), lb.get("timeline") or None) for lb, v in
            before["intervention_sla_breaches_total"] if v == 0}
    assert zero == {("initial_response", None), ("intervention", "standard"),
                    ("intervention", "complex"), ("intervention", "datacenter")}
    assert "intervention_tickets_open" not in before  # unknown until the board was read

    ticket = submitted(at=NOW)
    events: list[Event] = [ticket, started(ticket, at=NOW + MIN),
                           hardware(ticket, at=NOW + 2 * MIN),
                           completed(ticket, at=NOW + 50 * MIN)]
    facts, state = project(*events)
    for event in events:
        metrics.event(event, category=category_of(facts, event.revision))
    for milestone in milestones(ticket.ticket_id, facts, state):
        metrics.milestone(milestone)
    metrics.board(snapshot([board_entry(ticket.ticket_id, facts, state)],
                           NOW + datetime.resolution))
    after = _scrape(registry)

    [(labels, value)] = after["intervention_interventions_completed_total"]
    assert labels | {"otel_scope_name": ""} == {
        "category": "diagnostics", "access_method": "ssh", "outcome": "resolved",
        "dry_run": "false", "otel_scope_name": "", "otel_scope_schema_url": "",
        "otel_scope_version": ""}
    assert value == 1
    # Every component/severity pair exported from zero; the escalation counted once.
    escalations = [v for _, v in after["intervention_hardware_escalations_total"]]
    assert (len(escalations), sum(escalations)) == (12, 1)
    assert after["intervention_sla_initial_response_duration_seconds_count"][0][1] == 1
    completion = {lb["le"]: v for lb, v in
                  after["intervention_sla_completion_duration_seconds_bucket"]}
    assert (completion["2880.0"], completion["3600.0"]) == (0, 1)  # 49 min: within 60 min
    met = {lb.get("timeline") or None: v for lb, v in after["intervention_sla_met_total"]}
    assert met == {None: 1, "standard": 1, "complex": 0, "datacenter": 0}
    pages = {lb["page_kind"]: v for lb, v in after["intervention_pages_open"]}
    assert pages == {"new_ticket": 0, "manual_step": 0, "hardware": 1}

    text = generate_latest(registry).decode()
    assert ticket.ticket_id not in text
    assert str(ticket.event_id) not in text
