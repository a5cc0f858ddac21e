"""Kill the executor mid-runbook and restart it: no step is applied twice, and the ticket
revision ends in exactly one InterventionCompleted.

The executor runs as its real process (``python -m services.executor``) on this test's own
topic prefix and database. A service restart's verification waits a settle period; the
first process is SIGKILLed inside it — after the restart was journalled, before it was
verified — and a second process resumes the claim from the journal.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import executor_targets as targets
from executor_process import Executor, Stack, executor_stack, start_executor
from executor_verdicts import resolved_server, verdict
from polling import eventually

from schemas.events import InterventionCompleted
from services.runtime.audit import verify_chain
from services.runtime.keys import (
    load_sealing_public,
    load_signing_key,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                mongo_client: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    # A wide window between the restart and its verification, to kill the process in.
    async with executor_stack(
            "crash", kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
            database_name=database_name, mongodb_uri=real_parts.mongodb_uri,
            mongo_client=mongo_client, tmp_path=tmp_path,
            env={"EXECUTOR_SERVICE_SETTLE_S": "8", "EXECUTOR_LEASE_S": "30",
                 "EXECUTOR_RESCAN_S": "1"}) as stack:
        yield stack


@pytest.fixture
def executors(stack: Stack) -> Iterator[list[Executor]]:
    started: list[Executor] = []
    yield started
    for executor in started:
        executor.stop()


async def test_killed_mid_runbook_resumes_without_repeating_a_step(
        stack: Stack, executors: list[Executor], ssh_targets: Any,
        kafka_bootstrap: str) -> None:
    service = ssh_targets.service
    starts_before = service.starts()
    event = verdict(
        signing_key=load_signing_key(stack.keys.signing_private),
        sealing_key=load_sealing_public(stack.keys.sealing_public),
        username=ssh_targets.admin.name, password=ssh_targets.admin.password,
        category="service_restart", parameters={"unit": service.name},
        server=resolved_server(ip="127.0.0.1", ssh_port=ssh_targets.port,
                               service_id="SRV-CRASH", rescue=False))
    claim_id = f"{event.ticket_id}:1"
    claims = stack.db["executor_claims"]

    first = start_executor(stack, executors)
    await stack.publish(event)

    async def restart_journalled() -> bool:
        doc = await claims.find_one({"_id": claim_id})
        step = (doc or {}).get("steps", {}).get("002", {})
        return step.get("name") == "restart" and step.get("state") == "changed"

    await eventually(restart_journalled, 90, interval=0.1, what="the restart to be journalled")
    first.kill()  # inside the settle period: restarted, not yet verified
    assert service.starts() == starts_before + 1
    doc = await claims.find_one({"_id": claim_id})
    assert doc is not None
    assert (doc["status"], doc["attempt"]) == ("open", 1)
    assert stack.bus.of(event.ticket_id, "InterventionCompleted") == []

    start_executor(stack, executors)
    [completed] = await stack.bus.wait(event.ticket_id, "InterventionCompleted", timeout=90)
    await asyncio.sleep(2)  # a second, different completion would show up by now

    # Exactly one completion: one message, one id.
    assert len(stack.bus.values(event.ticket_id, "InterventionCompleted")) == 1
    assert len(stack.bus.values(event.ticket_id, "InterventionStarted")) == 1
    assert isinstance(completed, InterventionCompleted)
    assert completed.outcome == "resolved", completed.reason
    assert [a.result for a in completed.actions] == ["ok", "ok", "changed", "ok"]
    # The service was restarted once, by the first process; the second only verified.
    assert service.starts() == starts_before + 1
    assert service.pid() is not None
    # Finished: moved out of the in-flight claims, whole journal and all.
    assert await claims.find_one({"_id": claim_id}) is None
    doc = await stack.db["executor_claims_archive"].find_one({"_id": claim_id})
    assert doc is not None
    assert (doc["status"], doc["attempt"]) == ("finished", 2)
    assert doc["steps"]["002"]["state"] == "done"
    assert doc["steps"]["002"]["result"] == "changed"

    records = [r async for r in stack.db["audit"].find({"ticket_id": event.ticket_id})]
    changes = [r for r in records if r["kind"] == "command" and r["data"]["phase"] == "change"]
    assert len(changes) == 1
    assert changes[0]["data"]["attempt"] == 1
    second_run = [r["data"]["step"] for r in records
                  if r["kind"] == "command" and r["data"]["attempt"] == 2]
    # Completed steps were not run again; the interrupted one re-ran its check and
    # verification only; the last step ran for the first time.
    assert "detect" not in second_run
    assert "config_check" not in second_run
    assert {"restart", "log_tail"} == set(second_run)
    assert any(r["kind"] == "claim_resumed" for r in records)
    assert (await verify_chain(stack.db, event.ticket_id)).ok

    canary = ssh_targets.admin.password
    for executor in executors:
        assert canary not in executor.log.read_text(errors="replace")
    for record in stack.bus.records:
        assert canary.encode() not in record.value


@pytest.fixture
def slow_repo() -> Iterator[targets.AptRepo]:
    repo = targets.AptRepo.create(count=1, postinst_sleep_s=4)
    yield repo
    repo.remove()


async def test_killed_during_a_change_the_precheck_decides_and_nothing_is_applied_twice(
        stack: Stack, executors: list[Executor], ssh_targets: Any, kafka_bootstrap: str,
        slow_repo: targets.AptRepo) -> None:
    package = slow_repo.packages[0]
    event = verdict(
        signing_key=load_signing_key(stack.keys.signing_private),
        sealing_key=load_sealing_public(stack.keys.sealing_public),
        username=ssh_targets.admin.name, password=ssh_targets.admin.password,
        category="software_installation", parameters={"packages": [package]},
        server=resolved_server(ip="127.0.0.1", ssh_port=ssh_targets.port,
                               service_id="SRV-CRASH2", rescue=False))
    claim_id = f"{event.ticket_id}:1"
    claims = stack.db["executor_claims"]
    first = start_executor(stack, executors)
    await stack.publish(event)

    async def installing() -> bool:
        doc = await claims.find_one({"_id": claim_id})
        step = (doc or {}).get("steps", {}).get("001", {})
        return step.get("state") == "changing"

    await eventually(installing, 90, interval=0.1, what="the install to start")
    await asyncio.sleep(1.5)  # apt-get is running, the postinst is sleeping
    first.kill()
    start_executor(stack, executors)
    [completed] = await stack.bus.wait(event.ticket_id, "InterventionCompleted", timeout=120)
    await asyncio.sleep(1)
    assert len(stack.bus.values(event.ticket_id, "InterventionCompleted")) == 1
    assert isinstance(completed, InterventionCompleted)
    assert completed.outcome == "resolved", completed.reason
    assert slow_repo.installed(package)
    assert slow_repo.postinst_runs(package) == 1  # configured once, whatever the crash did
    doc = await stack.db["executor_claims_archive"].find_one({"_id": claim_id})
    assert doc is not None
    assert doc["steps"]["001"]["result"] == "changed"
    records = [r async for r in stack.db["audit"].find({"ticket_id": event.ticket_id})]
    resumed = [(r["data"]["phase"]) for r in records if r["kind"] == "command"
               and r["data"]["attempt"] == 2 and r["data"]["step"] == f"install:{package}"]
    assert resumed[0] == "precheck"  # the pre-check decided what to do after the crash


QUEUED = 3


async def test_killed_with_claims_queued_each_runs_once_after_the_restart_and_never_again(
        stack: Stack, executors: list[Executor], ssh_targets: Any) -> None:
    """One worker: a service restart holds it (killed inside its settle period) while three
    diagnostics tickets wait in the claim queue, outside ``executor_claims``. The restarted
    executor resumes the one and takes the three from the queue; a third process, started
    after all four finished, runs none of them again (their queued copies stay)."""
    stack.env["EXECUTOR_CONCURRENCY"] = "1"
    service = ssh_targets.service

    def event(category: str, **kw: Any) -> Any:
        return verdict(
            signing_key=load_signing_key(stack.keys.signing_private),
            sealing_key=load_sealing_public(stack.keys.sealing_public),
            username=ssh_targets.admin.name, password=ssh_targets.admin.password,
            category=category, server=resolved_server(
                ip="127.0.0.1", ssh_port=ssh_targets.port, service_id="SRV-QUEUE",
                rescue=False), **kw)

    running = event("service_restart", parameters={"unit": service.name})
    waiting = [event("diagnostics") for _ in range(QUEUED)]
    everything = [running, *waiting]
    ids = [f"{e.ticket_id}:1" for e in everything]
    claims = stack.db["executor_claims"]
    first = start_executor(stack, executors)
    await stack.publish(running)

    async def restart_journalled() -> bool:
        doc = await claims.find_one({"_id": ids[0]})
        step = (doc or {}).get("steps", {}).get("002", {})
        return step.get("state") == "changed"

    await eventually(restart_journalled, 90, interval=0.1, what="the restart to be journalled")
    for e in waiting:
        await stack.publish(e)

    async def queued() -> int:
        return sum([await stack.db[name].count_documents({"_id": {"$in": ids[1:]}})
                    for name in await stack.db.list_collection_names()
                    if name.startswith("executor_claims_queued_")])

    async def all_queued() -> bool:
        return await queued() == QUEUED

    await eventually(all_queued, 30, interval=0.1,
                     what="the three claims to wait in the claim queue")
    assert [d["_id"] async for d in claims.find({}, {"_id": 1})] == [ids[0]]
    first.kill()  # inside the settle period: restarted, not yet verified

    second = start_executor(stack, executors)
    for e in everything:
        await stack.bus.wait(e.ticket_id, "InterventionCompleted", timeout=120)
    await asyncio.sleep(2)
    second.stop()
    start_executor(stack, executors)  # its start-up scan sees the queued copies
    await asyncio.sleep(6)
    for e in everything:
        assert len(stack.bus.values(e.ticket_id, "InterventionCompleted")) == 1
        assert len(stack.bus.values(e.ticket_id, "InterventionStarted")) == 1
    assert await claims.count_documents({}) == 0
    archived = {d["_id"]: d async for d in stack.db["executor_claims_archive"].find({})}
    assert sorted(archived) == sorted(ids)
    assert {d["status"] for d in archived.values()} == {"finished"}
    assert archived[ids[0]]["attempt"] == 2  # resumed by the second process
    assert await queued() == QUEUED  # never deleted: the done markers keep them down
