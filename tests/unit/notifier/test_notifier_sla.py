"""The SLA clocks, pages and escalation as the procedure promises them (pure model)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from notifier_factories import (
    NOW,
    acknowledged,
    clarification,
    completed,
    manual_step,
    queued,
    started,
    step_completed,
    submitted,
)

from schemas.events import Event
from services.notifier.sla import (
    Alert,
    Fact,
    SlaPolicy,
    TicketState,
    fact_of,
    fired_fact,
    fold,
    timeline_extension,
)

POLICY = SlaPolicy()
MIN = timedelta(minutes=1)


def facts_of(*events: Event) -> list[Fact]:
    facts = [fact_of(e) for e in events]
    assert all(f is not None for f in facts)
    return [f for f in facts if f is not None]


def state_of(*events: Event, extra: tuple[Fact, ...] = ()) -> TicketState:
    return fold("T", [*facts_of(*events), *extra], POLICY)


def kinds(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(a.kind, a.clock.name if a.clock else f"level {a.level}") for a in alerts]


def fire_all(facts: list[Fact], now: datetime) -> list[Alert]:
    """What a sweep at ``now`` fires, recording it the way the sweeper does."""
    due = fold("T", facts, POLICY).due(now, POLICY)
    facts.extend(fired_fact(a, now) for a in due)
    return due


def test_initial_response_warns_at_80_percent_and_breaches_at_10_minutes_once() -> None:
    ticket = submitted(at=NOW)
    facts = facts_of(ticket)
    assert fire_all(facts, NOW + 7 * MIN) == []
    warned = fire_all(facts, NOW + 8 * MIN)
    assert [(a.kind, a.clock.name) for a in warned if a.clock] == [
        ("sla_warning", "initial_response")]
    assert [a.kind for a in fire_all(facts, NOW + 9 * MIN)] == []
    breached = fire_all(facts, NOW + 10 * MIN)
    assert ("sla_breach", "initial_response") in kinds(breached)
    assert all(a.kind == "escalation" for a in fire_all(facts, NOW + 11 * MIN))


def test_automation_taking_the_ticket_answers_the_initial_response_clock() -> None:
    ticket = submitted(at=NOW)
    state = state_of(ticket, started(ticket, at=NOW + 1 * MIN))
    initial = state.clock("initial_response")
    assert initial is not None
    assert initial.stopped
    assert initial.elapsed(NOW + 30 * MIN) == 1 * MIN
    # ... and the new-ticket page is resolved: no escalation for automated work.
    assert state.open_pages() == ()
    assert not any(a.clock and a.clock.name == "initial_response"
                   for a in state.due(NOW + 30 * MIN, POLICY))


def test_engineer_ack_of_the_page_answers_the_initial_response_clock() -> None:
    ticket = submitted(at=NOW)
    state = state_of(ticket, acknowledged(ticket, ticket.event_id, at=NOW + 3 * MIN))
    clock = state.clock("initial_response")
    assert clock is not None
    assert clock.stopped
    assert state.page(str(ticket.event_id)).closed_by == "acknowledged"  # type: ignore[union-attr]
    assert state.due(NOW + 60 * MIN, POLICY) == []


def test_intervention_clock_per_timeline() -> None:
    ticket = submitted(at=NOW)
    for timeline, budget in (("standard", 60 * MIN), ("complex", 240 * MIN),
                             ("datacenter", 1440 * MIN)):
        state = state_of(ticket, started(ticket, at=NOW, timeline=timeline))
        clock = state.clock("intervention")
        assert clock is not None
        assert clock.budget == budget
        assert clock.due_at(0.8) == NOW + budget * 0.8
        assert clock.deadline == NOW + budget


def test_standard_intervention_warns_at_48_and_breaches_at_60_minutes() -> None:
    ticket = submitted(at=NOW)
    facts = facts_of(ticket, started(ticket, at=NOW))
    assert fire_all(facts, NOW + 47 * MIN) == []
    assert kinds(fire_all(facts, NOW + 48 * MIN)) == [("sla_warning", "intervention")]
    assert kinds(fire_all(facts, NOW + 60 * MIN)) == [("sla_breach", "intervention")]
    assert fire_all(facts, NOW + 600 * MIN) == []


def test_clarification_pauses_the_intervention_and_the_answer_resumes_it() -> None:
    ticket = submitted(at=NOW)
    answer = submitted(ticket_id=ticket.ticket_id, revision=2, at=NOW + 100 * MIN)
    facts = facts_of(ticket, started(ticket, at=NOW),
                     clarification(ticket, at=NOW + 30 * MIN))
    paused = fold("T", facts, POLICY).clock("intervention")
    assert paused is not None
    assert paused.paused
    assert paused.elapsed(NOW + 90 * MIN) == 30 * MIN
    # Waiting on the customer consumes nothing: no warning however long they take.
    assert not [a for a in fire_all(facts, NOW + 99 * MIN) if a.clock
                and a.clock.name == "intervention"]
    facts += facts_of(answer)
    resumed = fold("T", facts, POLICY).clock("intervention")
    assert resumed is not None
    assert resumed.running
    assert resumed.paused_total == 70 * MIN
    assert resumed.deadline == NOW + 130 * MIN  # 60 min of work + 70 min waiting
    assert resumed.due_at(0.8) == NOW + 118 * MIN
    assert not [a for a in fire_all(facts, NOW + 117 * MIN) if a.kind == "sla_warning"
                and a.clock and a.clock.name == "intervention"]
    assert ("sla_warning", "intervention") in kinds(fire_all(facts, NOW + 118 * MIN))
    assert ("sla_breach", "intervention") in kinds(fire_all(facts, NOW + 130 * MIN))


def test_restarting_the_intervention_after_the_answer_continues_the_same_clock() -> None:
    ticket = submitted(at=NOW)
    state = state_of(ticket, started(ticket, at=NOW),
                     clarification(ticket, at=NOW + 20 * MIN),
                     started(ticket, at=NOW + 50 * MIN, revision=2))
    clocks = [c for c in state.clocks if c.name == "intervention"]
    assert len(clocks) == 1
    assert clocks[0].paused_total == 30 * MIN


def test_datacenter_step_extends_the_intervention_and_completion_stops_it() -> None:
    ticket = submitted(at=NOW)
    begun = state_of(ticket, started(ticket, at=NOW))
    step = manual_step(ticket, at=NOW + 10 * MIN, method="datacenter")
    extended = state_of(ticket, started(ticket, at=NOW), step)
    clock = extended.clock("intervention")
    assert clock is not None
    assert clock.budget == 1440 * MIN
    assert timeline_extension(begun, extended) == "datacenter"
    assert timeline_extension(extended, extended) is None
    done = state_of(ticket, started(ticket, at=NOW), step,
                    completed(ticket, at=NOW + 300 * MIN))
    assert done.clock("intervention").stopped  # type: ignore[union-attr]
    assert done.due(NOW + 3000 * MIN, POLICY) == []


def test_unacknowledged_page_escalates_tier_by_tier_until_acknowledged() -> None:
    ticket = submitted(at=NOW)
    facts = facts_of(ticket, started(ticket, at=NOW, mode="engineer"))
    levels = []
    for minute in range(0, 45):
        levels += [(minute, a.level, POLICY.tier_for(a.level))
                   for a in fire_all(facts, NOW + minute * MIN) if a.kind == "escalation"]
    assert levels == [(10, 1, 2), (20, 2, 3), (30, 3, 3), (40, 4, 3)]
    facts += facts_of(acknowledged(ticket, ticket.event_id, at=NOW + 45 * MIN))
    assert [a for a in fire_all(facts, NOW + 600 * MIN) if a.kind == "escalation"] == []


def test_after_an_outage_only_the_latest_escalation_level_fires() -> None:
    ticket = submitted(at=NOW)
    facts = facts_of(ticket, started(ticket, at=NOW, mode="engineer"))
    late = [a for a in fire_all(facts, NOW + 35 * MIN) if a.kind == "escalation"]
    assert [a.level for a in late] == [3]
    assert [a.level for a in fire_all(facts, NOW + 40 * MIN) if a.kind == "escalation"] == [4]


def test_manual_step_page_closes_when_the_step_is_reported() -> None:
    ticket = submitted(at=NOW)
    step = manual_step(ticket, at=NOW + 5 * MIN)
    open_state = state_of(ticket, started(ticket, at=NOW), step)
    assert [p.kind for p in open_state.open_pages()] == ["manual_step"]
    closed = state_of(ticket, started(ticket, at=NOW), step,
                      step_completed(ticket, step, at=NOW + 9 * MIN))
    assert closed.open_pages() == ()


def test_next_due_is_the_earliest_pending_alert() -> None:
    ticket = submitted(at=NOW)
    state = state_of(ticket, started(ticket, at=NOW + 1 * MIN, mode="engineer"))
    # initial clock stopped by the start; the page escalates at +10; the intervention
    # warns at +1+48.
    assert state.next_due(POLICY) == NOW + 10 * MIN
    assert state_of(ticket, started(ticket, at=NOW), completed(ticket, at=NOW + 5 * MIN)
                    ).next_due(POLICY) is None


def test_duplicate_facts_count_once() -> None:
    ticket = submitted(at=NOW)
    first, fact = facts_of(ticket, started(ticket, at=NOW))
    once = fold("T", [first, fact], POLICY)
    twice = fold("T", [first, fact, fact, fact], POLICY)
    assert once == twice


@given(st.randoms(use_true_random=False))
def test_the_state_does_not_depend_on_the_order_facts_were_recorded(rnd: random.Random) -> None:
    ticket = submitted(at=NOW)
    step = manual_step(ticket, at=NOW + 12 * MIN, method="datacenter")
    facts = facts_of(
        ticket, started(ticket, at=NOW + 1 * MIN), clarification(ticket, at=NOW + 5 * MIN),
        submitted(ticket_id=ticket.ticket_id, revision=2, at=NOW + 9 * MIN), step,
        acknowledged(ticket, step.event_id, at=NOW + 13 * MIN),
        step_completed(ticket, step, at=NOW + 30 * MIN))
    shuffled = list(facts)
    rnd.shuffle(shuffled)
    assert fold("T", shuffled, POLICY) == fold("T", facts, POLICY)


# --- a verified ticket the executor queued (graceful overload) ----------------------------


def test_a_queued_ticket_gets_its_notice_after_the_grace_and_it_answers_the_clock() -> None:
    ticket = submitted(at=NOW)
    facts = facts_of(ticket, queued(ticket, at=NOW + 1 * MIN))
    assert [a.kind for a in fire_all(facts, NOW + 1 * MIN + POLICY.queued_notice_after
                                     - timedelta(seconds=1))] == []
    [notice] = fire_all(facts, NOW + 1 * MIN + POLICY.queued_notice_after)
    assert notice.kind == "queued_notice"
    assert notice.queued is not None
    assert notice.queued.position == 3
    state = fold("T", facts, POLICY)
    initial = state.clock("initial_response")
    assert initial is not None
    assert initial.stopped
    # Answered in time: no warning, no breach, and never a second notice.
    assert [a.kind for a in fire_all(facts, NOW + 30 * MIN)
            if a.kind != "escalation"] == []


def test_a_start_within_the_grace_means_no_queued_notice() -> None:
    ticket = submitted(at=NOW)
    facts = facts_of(ticket, queued(ticket, at=NOW + 1 * MIN),
                     started(ticket, at=NOW + 1 * MIN + timedelta(seconds=10)))
    assert [a for a in fire_all(facts, NOW + 30 * MIN) if a.kind == "queued_notice"] == []


def test_a_ticket_queued_late_is_answered_at_once_without_a_warning() -> None:
    ticket = submitted(at=NOW)
    facts = facts_of(ticket)
    # Auth was slow: the verdict reached the executor after the warning point would pass.
    facts += facts_of(queued(ticket, at=NOW + 9 * MIN))
    due = fire_all(facts, NOW + 9 * MIN)
    assert [a.kind for a in due if a.kind != "escalation"] == ["queued_notice"]


def test_the_notice_is_due_no_later_than_the_warning_point() -> None:
    policy = SlaPolicy(queued_notice_after=timedelta(minutes=20))
    ticket = submitted(at=NOW)
    state = fold("T", facts_of(ticket, queued(ticket, at=NOW + 1 * MIN)), policy)
    [notice] = [a for a in state.pending(policy) if a.kind == "queued_notice"]
    assert notice.due_at == NOW + 8 * MIN


def test_one_queued_notice_per_revision_and_the_latest_estimate_is_told() -> None:
    ticket = submitted(at=NOW)
    first = queued(ticket, at=NOW + 1 * MIN, position=5)
    again = queued(ticket, at=NOW + 2 * MIN, position=2)  # a re-announcement (takeover)
    facts = facts_of(ticket, first, again)
    due = [a for a in fire_all(facts, NOW + 5 * MIN) if a.kind == "queued_notice"]
    assert len(due) == 1
    assert due[0].queued is not None
    assert due[0].queued.position == 2
    assert [a for a in fire_all(facts, NOW + 6 * MIN) if a.kind == "queued_notice"] == []
