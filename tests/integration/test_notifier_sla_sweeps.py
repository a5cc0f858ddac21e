"""SLA clocks and escalation with an injected clock, through the real broker and FerretDB:
warnings, breaches, escalation tiers, pause/resume and a restart midway each fire once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

from notifier_factories import clarification, started, submitted
from notifier_harness import (
    FakeClock,
    RecordingBot,
    Stack,
    module_topics,
    notifier_stack,
    settings_for,
)
from polling import eventually

from schemas import (
    EngineerAcknowledged,
    SlaBreached,
    SlaWarning,
    TicketUpdated,
    topic_for,
)
from services.notifier.acks import Engineer
from services.notifier.app import CONSUMED
from services.notifier.claims import Claims
from services.notifier.deadlines import ALERT_CLAIMS, Sweeper
from services.notifier.settings import NotifierSettings

pytestmark = pytest.mark.integration

MIN = timedelta(minutes=1)
ENGINEERS = [
    Engineer(engineer_id="ENG-T1", display_name="Tier One", tier=1, identities={"webhook": "t1"}),
    Engineer(engineer_id="ENG-T2", display_name="Tier Two", tier=2, identities={"webhook": "t2"}),
    Engineer(engineer_id="ENG-T3", display_name="Tier Three", tier=3,
             identities={"webhook": "t3"}),
]


@dataclass
class Env:
    settings: NotifierSettings
    clock: FakeClock
    bot: RecordingBot


@pytest.fixture(scope="module")
async def env(kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str
              ) -> AsyncIterator[Env]:
    async with module_topics(kafka_bootstrap, topic_prefix) as prefix:
        settings = settings_for(kafka_bootstrap, real_parts.mongodb_uri, prefix,
                                f"{database_name}_notifier_sla")
        yield Env(settings=settings, clock=FakeClock(datetime.now(UTC).replace(microsecond=0)),
                  bot=RecordingBot("webhook"))
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri)
        await client.drop_database(settings.mongodb_database)
        await client.close()


@pytest.fixture
async def stack(env: Env) -> AsyncIterator[Stack]:
    async with notifier_stack(env.settings, bots=[env.bot], clock=env.clock,
                              drop=False) as running:
        for engineer in ENGINEERS:
            await running.service.directory.register(engineer)
        yield running


async def recorded(stack: Stack, ticket_id: str, n: int) -> None:
    """Wait until the notifier has recorded ``n`` facts of the ticket and finished handling
    every event it consumed (its deadline hint is then up to date)."""
    ledger = stack.service.ledger
    runtime = stack.service.runtime

    async def enough() -> bool:
        facts = await ledger.facts(ticket_id)
        if len(facts) < n:
            return False
        for fact in facts:
            if fact.kind == "alert_fired":
                continue
            prefix = stack.settings.kafka_topic_prefix
            groups = [f"{prefix}notifier.{topic_for(m)}" for m in CONSUMED]
            if not any([await runtime.processed.seen(g, fact.fact_id) for g in groups]):
                return False
        return True

    await eventually(enough)


async def sweep(stack: Stack, at: datetime) -> list[str]:
    fired = await stack.service.sweeper.sweep_once(at)
    return [a.alert_id.split(":", 1)[1] for a in fired]


async def test_warning_and_breach_fire_once_each_across_a_restart(env: Env) -> None:
    t0 = env.clock.now
    ticket = submitted(at=t0)
    async with notifier_stack(env.settings, bots=[env.bot], clock=env.clock,
                              drop=False) as first:
        await first.bus.publish(ticket)
        await first.bus.publish(started(ticket, at=t0 + 1 * MIN, mode="engineer"))
        await recorded(first, ticket.ticket_id, 2)
        for engineer in ENGINEERS:
            await first.service.directory.register(engineer)
        answer = await first.service.desk.acknowledge_page(
            str(ticket.event_id), channel="webhook", identity="t1")
        assert answer.changed
        await recorded(first, ticket.ticket_id, 3)  # the EngineerAcknowledged came back

        assert await sweep(first, t0 + 48 * MIN) == []
        assert await sweep(first, t0 + 49 * MIN) == ["r1:intervention:warning"]
        assert await sweep(first, t0 + 50 * MIN) == []
        assert await first.service.deadlines.hint(ticket.ticket_id) == t0 + 61 * MIN
        # Both customer updates are out before this process stops (the acknowledgement's
        # group is not among those recorded() waits for).
        await first.bus.wait(ticket.ticket_id, TicketUpdated, 2)
    # The notifier restarts: a new process with nothing in memory, the same database.
    async with notifier_stack(env.settings, bots=[env.bot], clock=env.clock,
                              drop=False) as second:
        assert await sweep(second, t0 + 60 * MIN) == []
        assert await sweep(second, t0 + 61 * MIN) == ["r1:intervention:breach"]
        assert await sweep(second, t0 + 300 * MIN) == []
        await second.bus.wait(ticket.ticket_id, SlaBreached)
        overdue = await second.bus.wait(ticket.ticket_id, TicketUpdated, 3)
        await second.bus.settle()
        assert [e.clock for e in second.bus.of(ticket.ticket_id, SlaWarning)] == ["intervention"]
        [breach] = second.bus.of(ticket.ticket_id, SlaBreached)
        assert breach.deadline == t0 + 61 * MIN
        assert breach.elapsed_seconds == 60 * 60
        # The acknowledgement and the "started" update come from two consumer groups
        # publishing to the ticket's partition independently: the acknowledgement's own
        # group (kept apart so that it never waits behind SLA bookkeeping) usually wins,
        # but when it lags - as under CI load, seen once in five runs - "started" is first.
        # Nothing orders them (docs/architecture.md §7.4); the overdue notice comes last.
        assert sorted(u.kind for u in overdue[:2]) == ["acknowledgement",
                                                       "intervention_started"]
        assert overdue[2].kind == "extension"
        assert len(second.bus.of(ticket.ticket_id, EngineerAcknowledged)) == 1


async def test_waiting_on_the_customer_pauses_the_intervention_clock(env: Env, stack: Stack
                                                                    ) -> None:
    t0 = env.clock.now
    ticket = submitted(at=t0)
    await stack.bus.publish(ticket)
    await stack.bus.publish(started(ticket, at=t0 + 1 * MIN))
    await recorded(stack, ticket.ticket_id, 2)
    await stack.bus.publish(clarification(ticket, at=t0 + 11 * MIN))
    await recorded(stack, ticket.ticket_id, 3)
    # Paused after 10 minutes of work; the customer takes three hours to answer.
    assert await stack.service.deadlines.hint(ticket.ticket_id) is None
    assert await sweep(stack, t0 + 180 * MIN) == []
    answer = submitted(ticket_id=ticket.ticket_id, revision=2, at=t0 + 191 * MIN)
    await stack.bus.publish(answer)
    await stack.bus.publish(started(answer, at=t0 + 192 * MIN))
    await recorded(stack, ticket.ticket_id, 5)
    # 50 minutes of work remain: warning at 48 min of work, breach at 60.
    assert await sweep(stack, t0 + 228 * MIN) == []
    assert await sweep(stack, t0 + 229 * MIN) == ["r1:intervention:warning"]
    assert await sweep(stack, t0 + 241 * MIN) == ["r1:intervention:breach"]
    assert await sweep(stack, t0 + 999 * MIN) == []
    await stack.bus.wait(ticket.ticket_id, SlaBreached)
    await stack.bus.settle()
    assert len(stack.bus.of(ticket.ticket_id, SlaWarning)) == 1
    assert len(stack.bus.of(ticket.ticket_id, SlaBreached)) == 1


async def test_unacknowledged_ticket_escalates_tier_by_tier_once_each_until_acked(
    env: Env, stack: Stack,
) -> None:
    t0 = env.clock.now
    ticket = submitted(at=t0)
    await stack.bus.publish(ticket)
    await recorded(stack, ticket.ticket_id, 1)
    fired: list[str] = []
    for minute in (5, 8, 8, 10, 10, 15, 20, 21):
        fired += await sweep(stack, t0 + minute * MIN)
    page = str(ticket.event_id)
    assert fired == ["r1:initial_response:warning", "r1:initial_response:breach",
                     f"page:{page}:escalation:1", f"page:{page}:escalation:2"]

    async def delivered() -> bool:
        return sum("Escalation" in t for t in env.bot.texts(ticket.ticket_id)) >= 2

    await eventually(delivered)
    escalations = [p for p in env.bot.posts
                   if p.ticket_id == ticket.ticket_id and "Escalation" in p.text]
    assert ["tier 2" in escalations[0].text, "tier 3" in escalations[1].text] == [True, True]
    assert {m.identity for m in escalations[0].mentions} == {"t1", "t2"}
    assert {m.identity for m in escalations[1].mentions} == {"t1", "t2", "t3"}
    # Reacting to an escalation acknowledges the page it escalates.
    assert escalations[1].page_id == page
    await stack.service.desk.acknowledge_page(page, channel="webhook", identity="t3")
    await recorded(stack, ticket.ticket_id, 6)  # 1 ticket + 4 fired + the ack
    assert await sweep(stack, t0 + 600 * MIN) == []
    await stack.bus.settle()
    assert len(stack.bus.of(ticket.ticket_id, SlaWarning)) == 1
    assert len(stack.bus.of(ticket.ticket_id, SlaBreached)) == 1


async def test_two_sweepers_at_once_fire_each_alert_once(env: Env, stack: Stack) -> None:
    t0 = env.clock.now
    tickets = [submitted(at=t0) for _ in range(5)]
    for ticket in tickets:
        await stack.bus.publish(ticket)
    for ticket in tickets:
        await recorded(stack, ticket.ticket_id, 1)
    service = stack.service
    other = Sweeper(ledger=service.ledger, deadlines=service.deadlines,
                    claims=Claims(service.runtime.db, ALERT_CLAIMS),
                    policy=service.settings.sla_policy(), fire=service.notifier.fire,
                    clock=env.clock, owner="replica-2")
    results = await asyncio.gather(service.sweeper.sweep_once(t0 + 8 * MIN),
                                   other.sweep_once(t0 + 8 * MIN))
    fired = sorted(a.alert_id for batch in results for a in batch)
    assert fired == sorted(f"{t.ticket_id}:r1:initial_response:warning" for t in tickets)
    for ticket in tickets:
        await stack.bus.wait(ticket.ticket_id, SlaWarning)
    await stack.bus.settle()
    assert all(len(stack.bus.of(t.ticket_id, SlaWarning)) == 1 for t in tickets)
