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
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import executor_targets as targets
from executor_process import Executor, Stack, executor_stack, start_executor
from executor_verdicts import resolved_server, verdict

from schemas.events import (
    AuthorizationVerified,
    InterventionCompleted,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
)
from services.runtime.audit import verify_chain
from services.runtime.facts import sign_fact
from services.runtime.keys import load_sealing_public, load_signing_key

pytestmark = pytest.mark.integration
ONSITE_TIMEOUT_S = 10  # EXECUTOR_DATACENTER_STEP_TIMEOUT_S: the on-site step that times out


@pytest.fixture
async def stack(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                mongo_client: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with executor_stack(
            "manual", kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
            database_name=database_name, mongodb_uri=real_parts.mongodb_uri,
            mongo_client=mongo_client, tmp_path=tmp_path,
            env={"EXECUTOR_RESCAN_S": "0.5", "EXECUTOR_LEASE_S": "30",
                 "EXECUTOR_CONNECT_TIMEOUT_S": "3",
                 # The console step's deadline is far: its report, published after the
                 # restart, must be in time whichever the new process handles first.
                 "EXECUTOR_MANUAL_STEP_TIMEOUT_S": "600",
                 "EXECUTOR_DATACENTER_STEP_TIMEOUT_S": str(ONSITE_TIMEOUT_S)}) as stack:
        yield stack


def report(stack: Stack, request: ManualStepRequested, status: str, notes: str,
           engineer: str = "eng-marta") -> ManualStepCompleted:
    """What the notifier publishes when an engineer answers in chat: signed with its key."""
    return sign_fact(ManualStepCompleted.new(
        ticket_id=request.ticket_id, revision=request.revision,
        causation_id=request.event_id, occurred_at=datetime.now(UTC),
        step_id=request.step_id, status=status, notes=notes,  # type: ignore[arg-type]
        engineer_id=engineer, display_name="Marta Rossi", channel="matrix"),
        load_signing_key(stack.keys.notifier_signing_private))


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
    # A dedicated server without IP-KVM or rescue, unreachable: hands in the data centre;
    # nobody will answer in time.
    onsite = make(category="diagnostics", server=resolved_server(
        service_id="SRV-MDC", type="dedicated", ipkvm=False, rescue=False, ssh_port=closed))
    # A verdict auth flagged for review: an engineer approves, then the automation runs.
    # (Published after the restart, so its deadline does not run out with the on-site step's.)
    review = make(category="diagnostics", review_required=True,
                  review_reason="3 interventions in 30 days",
                  server=resolved_server(service_id="SRV-MREV", ip="127.0.0.1",
                                         ssh_port=ssh_targets.port,
                                         # Rescue-capable: no trust on first use.
                                         ssh_host_key=ssh_targets.sshd.host_key_line))

    first = start_executor(stack, executors)
    for event in (windows, onsite):
        await stack.publish(event)
    requests: dict[str, ManualStepRequested] = {}

    async def requested(event: AuthorizationVerified) -> ManualStepRequested:
        [request] = await stack.bus.wait(event.ticket_id, "ManualStepRequested", timeout=60)
        assert isinstance(request, ManualStepRequested)
        assert request.deadline is not None
        requests[event.ticket_id] = request
        return request

    for event in (windows, onsite):
        await requested(event)

    boot = requests[windows.ticket_id]
    assert boot.method == "ipkvm"
    text = " ".join(boot.instructions)
    for command in ("bootrec /fixmbr", "bootrec /rebuildbcd", "bcdboot C:\\Windows",
                    "bcdedit /export"):
        assert command in text  # exact instructions, backup of the BCD first
    assert any("RDP login works" in v for v in boot.verification)
    assert requests[onsite.ticket_id].method == "datacenter"
    claims = stack.db["executor_claims"]

    async def parked() -> bool:
        docs = [await claims.find_one({"_id": f"{e.ticket_id}:1"}) for e in (windows, onsite)]
        return all(d is not None and d["status"] == "handed_over" for d in docs)

    deadline = asyncio.get_running_loop().time() + 30
    while not await parked():  # the request is published first, the claim parked after
        assert asyncio.get_running_loop().time() < deadline, "claims not parked"
        await asyncio.sleep(0.1)
    first.kill()  # both claims parked, no process left
    # What the operator sees: both claims handed over, both steps waiting for an engineer.
    listed = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "services.cli.main", "executor", "claims"], env=stack.env,
        capture_output=True, text=True, timeout=60, check=True)
    for event in (windows, onsite):
        assert f"{event.ticket_id}:1  handed_over  attempt 1" in listed.stdout
    waiting = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "services.cli.main", "executor", "manual"], env=stack.env,
        capture_output=True, text=True, timeout=60, check=True)
    assert f"{windows.ticket_id} r1" in waiting.stdout
    assert "ipkvm  waiting" in waiting.stdout
    assert "datacenter  waiting" in waiting.stdout
    # The on-site step's deadline passes while no executor runs at all.
    onsite_deadline = requests[onsite.ticket_id].deadline
    assert onsite_deadline is not None
    await asyncio.sleep(max(0.0, (onsite_deadline - datetime.now(UTC)).total_seconds()) + 0.5)
    assert all(not stack.bus.of(e.ticket_id, "InterventionCompleted") for e in (windows, onsite))

    start_executor(stack, executors)
    await stack.publish(report(stack, requests[windows.ticket_id], "done",
                               "bootrec /fixmbr, /fixboot, /rebuildbcd; BCD exported to "
                               "C:\\os-intervention; Windows boots, RDP login works"))
    # The review is asked for (and answered) after the restart: its deadline is its own.
    await stack.publish(review)
    assert (await requested(review)).step_id == "r1-review"
    await stack.publish(report(stack, requests[review.ticket_id], "done", "request checked with "
                               "the account owner"))

    [done] = await stack.bus.wait(windows.ticket_id, "InterventionCompleted", timeout=60)
    assert isinstance(done, InterventionCompleted)
    assert done.outcome == "resolved"
    assert done.access_method == "ipkvm"
    [action] = done.actions
    assert action.result == "changed"
    assert "Marta Rossi" in action.command
    assert "bootrec" in action.command

    [timed_out] = await stack.bus.wait(onsite.ticket_id, "InterventionCompleted", timeout=60)
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
    await stack.publish(report(stack, requests[onsite.ticket_id], "done", "sorry, late"))

    async def ignored() -> bool:
        records = [r async for r in stack.db["audit"].find(
            {"ticket_id": onsite.ticket_id, "kind": "manual_step_report_ignored"})]
        return bool(records)

    deadline = asyncio.get_running_loop().time() + 30
    while not await ignored():
        assert asyncio.get_running_loop().time() < deadline, "late report not audited"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    for event in (windows, onsite, review):
        assert len(stack.bus.values(event.ticket_id, "InterventionCompleted")) == 1
        assert (await verify_chain(stack.db, event.ticket_id)).ok
    assert await stack.db["executor_manual_waiting"].count_documents({}) == 0
