"""Graceful overload, through the real broker and FerretDB: a saturated executor still lets
every verified ticket's customer hear, within the initial-response clock, that the work is
queued and roughly when it starts - once, across a notifier restart and redelivery.

A real executor runs in-process with one worker. The first ticket's server is a local TCP
listener that accepts and never speaks SSH (an unresponsive customer server, which cannot
be faked more really here): its run holds the only worker until the connect timeout. The
next two tickets, on the real sshd, wait in the executor's queue. A real notifier (shortened
initial-response clock, 1 s grace before the "queued" update) consumes what the executor
publishes.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
import executor_targets as targets
from executor_verdicts import resolved_server, verdict
from notifier_harness import module_topics, notifier_stack, settings_for
from polling import eventually

from schemas.events import (
    AuthorizationVerified,
    InterventionQueued,
    SlaBreached,
    SlaWarning,
    TicketUpdated,
)
from schemas.registry import encode, topic_for
from schemas.topics import physical
from services.executor.app import build
from services.executor.settings import ExecutorSettings
from services.runtime.keys import init_keys, load_sealing_public, load_signing_key

pytestmark = pytest.mark.integration

INITIAL_RESPONSE = timedelta(minutes=2)
CONNECT_TIMEOUT_S = 8.0


class SilentServer:
    """Accepts TCP connections and never sends an SSH banner: a hung customer server."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> int:
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *_exc: object) -> None:
        for writer in self.writers:
            writer.close()
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def prefix(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[str]:
    async with module_topics(kafka_bootstrap, topic_prefix) as made:
        yield made


async def test_a_queued_ticket_s_customer_hears_it_is_queued_in_time_once_across_a_restart(
        kafka_bootstrap: str, prefix: str, database_name: str, real_parts: Any,
        mongo_client: Any, ssh_targets: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = uuid.uuid4().hex[:6]
    keys = init_keys(tmp_path_factory.mktemp("keys"))
    executor_settings = ExecutorSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=f"{database_name}_ovx{run}",
        intervention_keys_dir=str(keys.directory), handler_retry_backoff_s=0.05,
        executor_service_settle_s=0.3, executor_lease_s=15, executor_rescan_s=30,
        executor_concurrency=1, executor_connect_timeout_s=CONNECT_TIMEOUT_S,
        executor_typical_run_s=90)
    notifier_settings = settings_for(
        kafka_bootstrap, real_parts.mongodb_uri, prefix, f"{database_name}_ovn{run}",
        notifier_sla_initial_response_min=INITIAL_RESPONSE.total_seconds() / 60,
        notifier_queued_notice_after_s=1.0, notifier_sweep_interval_s=0.2)
    signing = load_signing_key(keys.signing_private)
    sealing = load_sealing_public(keys.sealing_public)
    executor = build(executor_settings)
    bus = targets.EventBus(kafka_bootstrap, prefix)

    def verdict_for(port: int, service_id: str) -> AuthorizationVerified:
        return verdict(signing_key=signing, sealing_key=sealing,
                       username=ssh_targets.admin.name, password=ssh_targets.admin.password,
                       server=resolved_server(ip="127.0.0.1", ssh_port=port,
                                              service_id=service_id, rescue=False),
                       category="diagnostics")

    async def to_executor(event: AuthorizationVerified) -> None:
        await executor.runtime.broker.publish(
            encode(event), topic=physical(topic_for(event), prefix),
            key=event.ticket_id.encode())

    await bus.start()
    await executor.start()
    try:
        async with SilentServer() as silent_port:
            blocker = verdict_for(silent_port, "SRV-HUNG")
            queued = [verdict_for(ssh_targets.port, f"SRV-Q{n}") for n in (1, 2)]
            # The first notifier records what happens but is stopped before it sweeps: the
            # "queued" update must come from the next process, from the stored facts alone.
            async with notifier_stack(notifier_settings, run_sweeper=False,
                                      drop=False) as first:
                for event in (blocker, *queued):
                    await first.bus.publish(event.ticket)  # what intake published earlier
                await to_executor(blocker)

                async def saturated() -> bool:
                    return executor.worker.running == 1

                await eventually(saturated)
                for event in queued:
                    await to_executor(event)
                announced = [(await bus.wait(e.ticket_id, "InterventionQueued"))[0]
                             for e in queued]
                assert all(isinstance(a, InterventionQueued) for a in announced)
                assert [a.position for a in announced] == [1, 2]  # type: ignore[attr-defined]
                first_start, second_start = (a.expected_start_at for a in announced)  # type: ignore[attr-defined]
                assert first_start < second_start  # behind the hung run, then behind that
                assert bus.of(blocker.ticket_id, "InterventionQueued") == []  # a free worker

                for event in queued:
                    await first.bus.wait(event.ticket_id, TicketUpdated)  # acknowledgement

                    async def recorded(ticket_id: str = event.ticket_id) -> bool:
                        facts = await first.service.ledger.facts(ticket_id)
                        return any(f.kind == "queued" for f in facts)

                    await eventually(recorded)
                assert all(u.kind == "acknowledgement" for e in queued
                           for u in first.bus.of(e.ticket_id, TicketUpdated))
            notices: dict[str, TicketUpdated] = {}
            async with notifier_stack(notifier_settings, run_sweeper=True,
                                      drop=False) as second:
                for event, announcement in zip(queued, announced, strict=True):
                    updates = await second.bus.wait(event.ticket_id, TicketUpdated, 2)
                    [notice] = [u for u in updates if u.kind == "queued"]
                    notices[event.ticket_id] = notice
                    assert notice.causation_id == announcement.event_id  # type: ignore[attr-defined]
                    # Within the initial-response clock, counted from the ticket's submission.
                    assert notice.occurred_at - event.ticket.occurred_at < INITIAL_RESPONSE
                    assert "your intervention is queued" in notice.message
                    assert "expected to start in about" in notice.message
                assert "number 1 in line" in notices[queued[0].ticket_id].message
                assert "number 2 in line" in notices[queued[1].ticket_id].message
                # The executor's announcements delivered again (a redelivery): no second word.
                for event in queued:
                    for raw in bus.values(event.ticket_id, "InterventionQueued"):
                        await executor.runtime.broker.publish(
                            raw, topic=physical(topic_for(InterventionQueued), prefix),
                            key=event.ticket_id.encode())
                # The work starts once the hung server times out; the customer then hears it.
                for event in queued:
                    await bus.wait(event.ticket_id, "InterventionCompleted", timeout=90)
                    await second.bus.wait(event.ticket_id, TicketUpdated, 4, timeout=30)
                await second.bus.settle(2.0)
                for event in queued:
                    kinds = [u.kind for u in second.bus.of(event.ticket_id, TicketUpdated)]
                    assert sorted(kinds) == ["acknowledgement", "completion",
                                             "intervention_started", "queued"], kinds
                    # Answered in time: the clock neither warned nor breached.
                    assert [w.clock for w in second.bus.of(event.ticket_id, SlaWarning)
                            if w.clock == "initial_response"] == []
                    assert second.bus.of(event.ticket_id, SlaBreached) == []
                    state = await second.service.deadlines.state(event.ticket_id)
                    initial = state.clock("initial_response")
                    assert initial is not None
                    assert initial.stopped_at is not None
                    assert initial.stopped_at - initial.started_at < INITIAL_RESPONSE
    finally:
        await executor.stop()
        await bus.stop()
        await mongo_client.drop_database(executor_settings.mongodb_database)
        await mongo_client.drop_database(notifier_settings.mongodb_database)
