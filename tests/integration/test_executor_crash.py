"""Kill the executor mid-runbook and restart it: no step is applied twice, and the ticket
revision ends in exactly one InterventionCompleted.

The executor runs as its real process (``python -m services.executor``) on this test's own
topic prefix and database. A service restart's verification waits a settle period; the
first process is SIGKILLed inside it — after the restart was journalled, before it was
verified — and a second process resumes the claim from the journal.
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
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
import executor_targets as targets
from executor_verdicts import resolved_server, verdict

from schemas.events import AuthorizationVerified, InterventionCompleted
from schemas.registry import encode, topic_for
from schemas.topics import physical
from services.runtime.audit import verify_chain
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import (
    KeySetPaths,
    init_keys,
    load_sealing_public,
    load_signing_key,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    prefix: str
    database: str
    keys: KeySetPaths
    env: dict[str, str]
    logs: Path
    bus: targets.EventBus
    db: AsyncDatabase[dict[str, Any]]


@pytest.fixture
async def stack(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                mongo_client: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    run = uuid.uuid4().hex[:6]
    prefix = f"{topic_prefix}crash{run}."
    database = f"{database_name}_crash{run}"
    await ensure_topics(kafka_bootstrap, prefix=prefix)
    keys = init_keys(tmp_path / "keys")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
        "MONGODB_URI": real_parts.mongodb_uri, "MONGODB_DATABASE": database,
        "INTERVENTION_KEYS_DIR": str(keys.directory),
        # A wide window between the restart and its verification, to kill the process in.
        "EXECUTOR_SERVICE_SETTLE_S": "8", "EXECUTOR_LEASE_S": "30", "EXECUTOR_RESCAN_S": "1",
        "PYTHONPATH": str(REPO),
    })
    bus = targets.EventBus(kafka_bootstrap, prefix)
    await bus.start()
    try:
        yield Stack(prefix=prefix, database=database, keys=keys, env=env, logs=tmp_path,
                    bus=bus, db=mongo_client[database])
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
def executors(stack: Stack) -> Iterator[list[Executor]]:
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


async def until(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


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
                               service_id="SRV-CRASH"))
    claim_id = f"{event.ticket_id}:1"
    claims = stack.db["executor_claims"]

    first = start_executor(stack, executors)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(physical(topic_for(AuthorizationVerified), stack.prefix),
                                     encode(event), key=event.ticket_id.encode())
    finally:
        await producer.stop()

    async def restart_journalled() -> bool:
        doc = await claims.find_one({"_id": claim_id})
        step = (doc or {}).get("steps", {}).get("002", {})
        return step.get("name") == "restart" and step.get("state") == "changed"

    await until(restart_journalled, "the restart to be journalled", timeout=90)
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
    doc = await claims.find_one({"_id": claim_id})
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
                               service_id="SRV-CRASH2"))
    claim_id = f"{event.ticket_id}:1"
    claims = stack.db["executor_claims"]
    first = start_executor(stack, executors)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(physical(topic_for(AuthorizationVerified), stack.prefix),
                                     encode(event), key=event.ticket_id.encode())
    finally:
        await producer.stop()

    async def installing() -> bool:
        doc = await claims.find_one({"_id": claim_id})
        step = (doc or {}).get("steps", {}).get("001", {})
        return step.get("state") == "changing"

    await until(installing, "the install to start", timeout=90)
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
    doc = await claims.find_one({"_id": claim_id})
    assert doc is not None
    assert doc["steps"]["001"]["result"] == "changed"
    records = [r async for r in stack.db["audit"].find({"ticket_id": event.ticket_id})]
    resumed = [(r["data"]["phase"]) for r in records if r["kind"] == "command"
               and r["data"]["attempt"] == 2 and r["data"]["step"] == f"install:{package}"]
    assert resumed[0] == "precheck"  # the pre-check decided what to do after the crash
