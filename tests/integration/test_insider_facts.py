"""An insider who can write the bus cannot speak for an engineer.

The executor runs as its real process (``python -m services.executor``) against the real
Kafka and FerretDB. Auth flags a verdict for review, so the claim parks on the step
``r1-review`` until an engineer reports it done - a report that lifts auth's signed
``review_required`` and lets the automation run as root. Forged reports, published straight
onto ``intervention.manual-step-completed`` for that step (unsigned, signed with a
stranger's key, and the notifier's genuine ``failed`` report edited to ``done``), change
nothing: the claim stays parked, each forgery is in the topic's DLQ with its reason and in
the ticket's audit trail as ``fact_refused``. Then the notifier's properly signed report
lets the automation run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from executor_process import Executor, Stack, executor_stack, start_executor
from executor_verdicts import resolved_server, verdict

from schemas.events import (
    InterventionCompleted,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
)
from schemas.registry import encode
from services.runtime.audit import verify_chain
from services.runtime.crypto import SigningKey
from services.runtime.facts import sign_fact
from services.runtime.keys import load_sealing_public, load_signing_key

pytestmark = pytest.mark.integration

DLQ = "intervention.manual-step-completed.dlq"


@pytest.fixture
async def stack(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                mongo_client: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with executor_stack(
            "insider", kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
            database_name=database_name, mongodb_uri=real_parts.mongodb_uri,
            mongo_client=mongo_client, tmp_path=tmp_path,
            env={"EXECUTOR_RESCAN_S": "0.5", "EXECUTOR_LEASE_S": "30",
                 "EXECUTOR_CONNECT_TIMEOUT_S": "3",
                 "EXECUTOR_MANUAL_STEP_TIMEOUT_S": "600"}) as stack:
        yield stack


def report_on(request: ManualStepRequested, status: str = "done",
              engineer: str = "eng-marta") -> ManualStepCompleted:
    return ManualStepCompleted.new(
        ticket_id=request.ticket_id, revision=request.revision,
        causation_id=request.event_id, occurred_at=datetime.now(UTC),
        step_id=request.step_id, status=status,  # type: ignore[arg-type]
        notes="request checked with the account owner", engineer_id=engineer,
        display_name="Marta Rossi", channel="matrix")


async def eventually(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)


async def test_forged_reports_on_the_bus_do_not_lift_a_review_and_a_signed_one_does(
        stack: Stack, executors: list[Executor], ssh_targets: Any) -> None:
    notifier = load_signing_key(stack.keys.notifier_signing_private)
    review = verdict(
        signing_key=load_signing_key(stack.keys.signing_private),
        sealing_key=load_sealing_public(stack.keys.sealing_public),
        username=ssh_targets.admin.name, password=ssh_targets.admin.password,
        category="diagnostics", review_required=True,
        review_reason="3 interventions in 30 days",
        server=resolved_server(service_id="SRV-INSIDE", ip="127.0.0.1",
                               ssh_port=ssh_targets.port,
                               # Rescue-capable: no trust on first use.
                               ssh_host_key=ssh_targets.sshd.host_key_line))
    start_executor(stack, executors)
    await stack.publish(review)
    [request] = await stack.bus.wait(review.ticket_id, "ManualStepRequested", timeout=60)
    assert isinstance(request, ManualStepRequested)
    assert request.step_id == "r1-review"
    claims = stack.db["executor_claims"]
    claim_id = f"{review.ticket_id}:1"

    async def claim_status() -> str | None:
        doc = await claims.find_one({"_id": claim_id})
        return None if doc is None else str(doc["status"])

    await eventually("claim not parked", lambda: _is(claim_status, "handed_over"))

    # The insider's three forgeries, each lifting the review if it were believed.
    unsigned = report_on(request)
    stranger = sign_fact(report_on(request), SigningKey.generate(key_id_prefix="notifier"))
    genuine_failed = sign_fact(report_on(request, status="failed"), notifier)
    edited = json.loads(encode(genuine_failed))
    edited["status"] = "done"
    forgeries = {"unsigned": unsigned.event_id, "unknown_key": stranger.event_id,
                 "bad_signature": genuine_failed.event_id}
    await stack.publish(unsigned)
    await stack.publish(stranger)
    await stack.publish_raw(genuine_failed, json.dumps(edited).encode())

    # Each forgery is dead-lettered with its reason ...
    async def dead_letters() -> list[Any]:
        found = [r for r in stack.bus.records
                 if r.topic == DLQ and r.key == review.ticket_id.encode()]
        return found if len(found) >= 3 else []

    letters = await eventually("forgeries not dead-lettered", dead_letters)
    assert sorted(r.headers["x-dlq-error-class"] for r in letters) == [
        "FactRefused.bad_signature", "FactRefused.unknown_key", "FactRefused.unsigned"]
    assert {r.headers["x-dlq-reason"] for r in letters} == {"unauthenticated"}
    for letter in letters:
        assert review.ticket_id in letter.headers["x-dlq-error-message"]

    # ... and audited as a refusal, never as a report.
    audit = stack.db["audit"]

    async def refusals() -> list[dict[str, Any]]:
        found = [r async for r in audit.find({"ticket_id": review.ticket_id,
                                              "kind": "fact_refused"})]
        return found if len(found) >= 3 else []

    refused = await eventually("refusals not audited", refusals)
    assert {r["data"]["reason"]: r["data"]["event_id"] for r in refused} == {
        reason: str(event_id) for reason, event_id in forgeries.items()}
    assert all(r["actor"].startswith("executor") for r in refused)

    # Nothing moved: the claim is parked, the step waits, the automation never started.
    await asyncio.sleep(2)  # several rescans of open claims
    assert await claim_status() == "handed_over"
    step = await stack.db["executor_manual_steps"].find_one({"_id": f"{claim_id}:r1-review"})
    assert step is not None
    assert step["status"] == "waiting"
    assert await audit.count_documents({"ticket_id": review.ticket_id,
                                        "kind": "manual_step_reported"}) == 0
    assert stack.bus.of(review.ticket_id, "InterventionCompleted") == []
    assert len(stack.bus.of(review.ticket_id, "InterventionStarted")) == 1  # the engineer's

    # The notifier's properly signed report lifts the review: the automation runs.
    await stack.publish(sign_fact(report_on(request), notifier))
    [done] = await stack.bus.wait(review.ticket_id, "InterventionCompleted", timeout=90)
    assert isinstance(done, InterventionCompleted)
    assert done.outcome == "resolved", done.reason
    started = [s for s in stack.bus.of(review.ticket_id, "InterventionStarted")
               if isinstance(s, InterventionStarted)]
    assert [(s.mode, s.runbook) for s in started] == [
        ("engineer", "review.diagnostics"), ("automated", "diagnostics")]
    # Both access decisions are audited: the one made after the approval is not taken
    # for a repeat of the review decision's record.
    decisions = [r["data"] async for r in audit.find({"ticket_id": review.ticket_id,
                                                        "kind": "access_decision"})]
    assert sorted((d["mode"], d["runbook"]) for d in decisions) == [
        ("automated", "diagnostics"), ("engineer", "review.diagnostics")]
    assert (await verify_chain(stack.db, review.ticket_id)).ok


async def _is(read: Any, value: str) -> bool:
    return bool(await read() == value)
