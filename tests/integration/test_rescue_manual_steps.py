"""Engineer-driven steps: requested, waited for durably, finished by a report or a deadline.

The executor runs as its real process (``python -m services.executor``) on this module's
topic prefix and database; it is SIGKILLed while two tickets wait for engineers and a
new process takes over. The engineers' reports are published as the notifier publishes
them (ManualStepCompleted). Nothing the first process held in memory is needed: one
step's deadline passes while no executor runs at all, and is still honoured. A review
asked for by auth, once approved, lets the automation run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
import executor_targets as targets
from executor_verdicts import resolved_server, verdict

from schemas.envelope import EventEnvelope
from schemas.events import (
    AuthorizationVerified,
    InterventionCompleted,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
)
from schemas.registry import encode, topic_for
from schemas.topics import physical
from services.runtime.audit import verify_chain
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import KeySetPaths, init_keys, load_sealing_public, load_signing_key

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
VNC_TIMEOUT_S = 10  # EXECUTOR_MANUAL_STEP_TIMEOUT_S: the console step that times out


@dataclass
class Stack:
    prefix: str
    keys: KeySetPaths
    env: dict[str, str]
    logs: Path
    bus: targets.EventBus
    db: AsyncDatabase[dict[str, Any]]
    bootstrap: str

    async def publish(self, event: EventEnvelope) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(physical(topic_for(event), self.prefix),  # type: ignore[arg-type]
                                         encode(event), key=event.ticket_id.encode())
        finally:
            await producer.stop()


@pytest.fixture
async def stack(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                mongo_client: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    run = uuid.uuid4().hex[:6]
    prefix = f"{topic_prefix}manual{run}."
    database = f"{database_name}_manual{run}"
    await ensure_topics(kafka_bootstrap, prefix=prefix)
    keys = init_keys(tmp_path / "keys")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
        "MONGODB_URI": real_parts.mongodb_uri, "MONGODB_DATABASE": database,
        "INTERVENTION_KEYS_DIR": str(keys.directory), "EXECUTOR_RESCAN_S": "0.5",
        "EXECUTOR_LEASE_S": "30", "EXECUTOR_CONNECT_TIMEOUT_S": "3",
        "EXECUTOR_MANUAL_STEP_TIMEOUT_S": str(VNC_TIMEOUT_S),
        "EXECUTOR_DATACENTER_STEP_TIMEOUT_S": "600", "PYTHONPATH": str(REPO),
    })
    bus = targets.EventBus(kafka_bootstrap, prefix)
    await bus.start()
    try:
        yield Stack(prefix=prefix, keys=keys, env=env, logs=tmp_path, bus=bus,
                    db=mongo_client[database], bootstrap=kafka_bootstrap)
    finally:
        await bus.stop()
        await mongo_client.drop_database(database)


@dataclass
class Executor:
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def executors() -> Iterator[list[Executor]]:
    started: list[Executor] = []
    yield started
    for executor in started:
        executor.stop()


def start_executor(stack: Stack, started: list[Executor]) -> Executor:
    log = stack.logs / f"executor-{len(started)}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.executor"], cwd=REPO,
                                   env=stack.env, stdout=out, stderr=out,
                                   start_new_session=True)
    executor = Executor(process=process, log=log)
    started.append(executor)
    return executor


def report(request: ManualStepRequested, status: str, notes: str,
           engineer: str = "eng-marta") -> ManualStepCompleted:
    """What the notifier publishes when an engineer answers in chat."""
    return ManualStepCompleted.new(
        ticket_id=request.ticket_id, revision=request.revision,
        causation_id=request.event_id, occurred_at=datetime.now(UTC),
        step_id=request.step_id, status=status, notes=notes,  # type: ignore[arg-type]
        engineer_id=engineer, display_name="Marta Rossi", channel="matrix")


async def test_manual_steps_survive_an_executor_restart_and_time_out_clearly(
        stack: Stack, executors: list[Executor], ssh_targets: Any) -> None:
    signing = load_signing_key(stack.keys.signing_private)
    sealing = load_sealing_public(stack.keys.sealing_public)
    closed = targets.free_port()

    def make(**kw: Any) -> AuthorizationVerified:
        return verdict(signing_key=signing, sealing_key=sealing,
                       username=ssh_targets.admin.name, password=ssh_targets.admin.password,
                       **kw)

    # A Windows server that does not boot: Windows Boot Manager repair is console work.
    windows = make(category="boot_repair", server=resolved_server(
        service_id="SRV-MWIN", os_family="windows", type="dedicated", ipkvm=True,
        rescue=False, ssh_port=closed))
    # A VPS without rescue, unreachable: its VNC console; nobody will answer in time.
    vnc = make(category="diagnostics", server=resolved_server(
        service_id="SRV-MVNC", type="vps", ipkvm=False, rescue=False, ssh_port=closed))
    # A verdict auth flagged for review: an engineer approves, then the automation runs.
    # (Published after the restart, so its deadline does not run out with the VNC step's.)
    review = make(category="diagnostics", review_required=True,
                  review_reason="3 interventions in 30 days",
                  server=resolved_server(service_id="SRV-MREV", ip="127.0.0.1",
                                         ssh_port=ssh_targets.port))

    first = start_executor(stack, executors)
    for event in (windows, vnc):
        await stack.publish(event)
    requests: dict[str, ManualStepRequested] = {}

    async def requested(event: AuthorizationVerified) -> ManualStepRequested:
        [request] = await stack.bus.wait(event.ticket_id, "ManualStepRequested", timeout=60)
        assert isinstance(request, ManualStepRequested)
        assert request.deadline is not None
        requests[event.ticket_id] = request
        return request

    for event in (windows, vnc):
        await requested(event)

    boot = requests[windows.ticket_id]
    assert boot.method == "ipkvm"
    text = " ".join(boot.instructions)
    for command in ("bootrec /fixmbr", "bootrec /rebuildbcd", "bcdboot C:\\Windows",
                    "bcdedit /export"):
        assert command in text  # exact instructions, backup of the BCD first
    assert any("RDP login works" in v for v in boot.verification)
    assert requests[vnc.ticket_id].method == "vnc"
    claims = stack.db["executor_claims"]

    async def parked() -> bool:
        docs = [await claims.find_one({"_id": f"{e.ticket_id}:1"}) for e in (windows, vnc)]
        return all(d is not None and d["status"] == "handed_over" for d in docs)

    deadline = asyncio.get_running_loop().time() + 30
    while not await parked():  # the request is published first, the claim parked after
        assert asyncio.get_running_loop().time() < deadline, "claims not parked"
        await asyncio.sleep(0.1)
    first.kill()  # both claims parked, no process left
    # The VNC step's deadline passes while no executor runs at all.
    vnc_deadline = requests[vnc.ticket_id].deadline
    assert vnc_deadline is not None
    await asyncio.sleep(max(0.0, (vnc_deadline - datetime.now(UTC)).total_seconds()) + 0.5)
    assert all(not stack.bus.of(e.ticket_id, "InterventionCompleted") for e in (windows, vnc))

    start_executor(stack, executors)
    await stack.publish(report(requests[windows.ticket_id], "done",
                               "bootrec /fixmbr, /fixboot, /rebuildbcd; BCD exported to "
                               "C:\\os-intervention; Windows boots, RDP login works"))
    # The review is asked for (and answered) after the restart: its deadline is its own.
    await stack.publish(review)
    assert (await requested(review)).step_id == "r1-review"
    await stack.publish(report(requests[review.ticket_id], "done", "request checked with "
                               "the account owner"))

    [done] = await stack.bus.wait(windows.ticket_id, "InterventionCompleted", timeout=60)
    assert isinstance(done, InterventionCompleted)
    assert done.outcome == "resolved"
    assert done.access_method == "ipkvm"
    [action] = done.actions
    assert action.result == "changed"
    assert "Marta Rossi" in action.command
    assert "bootrec" in action.command

    [timed_out] = await stack.bus.wait(vnc.ticket_id, "InterventionCompleted", timeout=60)
    assert isinstance(timed_out, InterventionCompleted)
    assert timed_out.outcome == "unresolved"
    assert "No engineer reported" in (timed_out.reason or "")
    assert "by its deadline" in (timed_out.reason or "")

    # After the review the automation runs: a second InterventionStarted, then diagnostics.
    [approved] = await stack.bus.wait(review.ticket_id, "InterventionCompleted", timeout=90)
    assert isinstance(approved, InterventionCompleted)
    assert approved.outcome == "resolved", approved.reason
    started = stack.bus.of(review.ticket_id, "InterventionStarted")
    assert [(s.mode, s.runbook) for s in started  # type: ignore[attr-defined]
            if isinstance(s, InterventionStarted)] == [
        ("engineer", "review.diagnostics"), ("automated", "diagnostics")]
    assert approved.actions[0].step == "Detect available diagnostic tools"

    # A late report changes nothing and is on the record.
    await stack.publish(report(requests[vnc.ticket_id], "done", "sorry, late"))

    async def ignored() -> bool:
        records = [r async for r in stack.db["audit"].find(
            {"ticket_id": vnc.ticket_id, "kind": "manual_step_report_ignored"})]
        return bool(records)

    deadline = asyncio.get_running_loop().time() + 30
    while not await ignored():
        assert asyncio.get_running_loop().time() < deadline, "late report not audited"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    for event in (windows, vnc, review):
        assert len(stack.bus.values(event.ticket_id, "InterventionCompleted")) == 1
        assert (await verify_chain(stack.db, event.ticket_id)).ok
    assert await stack.db["executor_manual_waiting"].count_documents({}) == 0
