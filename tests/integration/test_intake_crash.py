"""A real intake process SIGKILLed at every point between receipt and publish loses nothing.

``INTAKE_FAULT_AT`` (test-only) makes the process kill itself at ``after_claim`` (claim
inserted, nothing durable), ``after_outbox`` (the sealed TicketSubmitted durable, not
published, no answer sent) or ``after_publish`` (broker acknowledged, claim not marked,
outbox entry not deleted). After a restart, the helpdesk's retry (HTTP) or the topic's
redelivery must end with the request published exactly once by ``event_id``: one distinct
id on ``intervention.ticket-submitted``, and byte-identical bytes if a crash after the
broker's acknowledgement made a second copy.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from intake_process import REPO, IntakeProcess
from polling import eventually
from signed_requests import register

from schemas.topics import HELPDESK_REQUESTS, event_topic
from services.intake.examples import example_request
from services.intake.sealing import load_recipient, seal_request
from services.intake.submission import submitted_event_id
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import init_keys

pytestmark = pytest.mark.integration

SUBMITTED = event_topic("TicketSubmitted")


@pytest.fixture
async def intake(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                 mongo_client: Any, tmp_path: Path, unique: str
                 ) -> AsyncIterator[IntakeProcess]:
    prefix = f"{topic_prefix}crash{unique}."
    database = f"{database_name}_crash{unique}"
    await ensure_topics(kafka_bootstrap, prefix=prefix)
    keys = init_keys(tmp_path / "keys")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INTAKE_"))}
    env.update({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
                "MONGODB_URI": real_parts.mongodb_uri, "MONGODB_DATABASE": database,
                "INTERVENTION_KEYS_DIR": str(keys.directory), "PYTHONPATH": str(REPO),
                "HANDLER_RETRY_BACKOFF_S": "0.05"})
    process = IntakeProcess(env=env, logs=tmp_path)
    process.desk = await register(mongo_client[database], keys.directory, "crash-desk",
                                  accounts={"portal:ACC-1001": "ACC-1001"})
    try:
        yield process
    finally:
        process.kill()
        await mongo_client.drop_database(database)


async def submitted_records(bootstrap: str, topic: str, ticket_id: str, *, settle: float = 2.0
                            ) -> list[bytes]:
    """Every TicketSubmitted record of ``ticket_id`` on the topic (read from the start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        found: list[bytes] = []
        quiet_until = asyncio.get_running_loop().time() + settle
        while asyncio.get_running_loop().time() < quiet_until:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                found.extend(r.value for r in records if r.key == ticket_id.encode())
        return found
    finally:
        await consumer.stop()


def request(ticket_id: str) -> dict[str, Any]:
    return example_request(ticket_id=ticket_id,
                           credentials={"username": "root", "password": "Crash-Canary-1"})


async def post(intake: IntakeProcess, body: dict[str, Any]) -> httpx.Response:
    payload = json.dumps(body).encode()  # signed anew (a fresh nonce) on every retry
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{intake.url}/v1/tickets", content=payload, headers={
            "Content-Type": "application/json",
            **intake.desk.headers("POST", "/v1/tickets", payload, "portal:ACC-1001")})


def assert_published_once(records: list[bytes], ticket_id: str) -> None:
    ids = {json.loads(r)["event_id"] for r in records}
    assert ids == {str(submitted_event_id(ticket_id, 1))}, f"{len(records)} records: {ids}"
    assert len(set(records)) == 1, "a copy differs from the first: two different events"
    assert b"Crash-Canary-1" not in b"".join(records)


@pytest.mark.parametrize("point", ["after_claim", "after_outbox", "after_publish"])
async def test_http_request_killed_at_each_point_is_published_exactly_once_after_restart(
        intake: IntakeProcess, kafka_bootstrap: str, point: str, unique: str) -> None:
    tid = f"HD-CRASH-{unique}"
    topic = intake.env["KAFKA_TOPIC_PREFIX"] + SUBMITTED
    body = request(tid)  # the helpdesk retries the very same request
    intake.start(INTAKE_FAULT_AT=point).wait_healthy()
    with pytest.raises(httpx.TransportError):  # the process died before it answered
        await post(intake, body)
    assert intake.wait_exit() == -9
    intake.start().wait_healthy()
    if point != "after_claim":
        # Durable before the kill: published at start by the relay, nobody retrying.
        await eventually(lambda: submitted_records(kafka_bootstrap, topic, tid, settle=0.5),
                         timeout=30, interval=0.5, what="the relay publishing at start")
    # The helpdesk got no answer, so it retries: accepted, a duplicate only if it was
    # durable before the kill.
    retry = await post(intake, body)
    assert retry.status_code == 202, retry.text
    assert retry.json()["duplicate"] is (point != "after_claim")
    assert retry.json()["event_id"] == str(submitted_event_id(tid, 1))
    records = await submitted_records(kafka_bootstrap, topic, tid)
    assert_published_once(records, tid)
    if point != "after_publish":
        assert len(records) == 1  # killed before the broker had it: one copy exactly


@pytest.mark.parametrize("point", ["after_claim", "after_outbox", "after_publish"])
async def test_topic_request_killed_at_each_point_is_published_exactly_once_after_restart(
        intake: IntakeProcess, kafka_bootstrap: str, point: str, unique: str) -> None:
    tid = f"HD-CRASHT-{unique}"
    prefix = intake.env["KAFKA_TOPIC_PREFIX"]
    keys = Path(intake.env["INTERVENTION_KEYS_DIR"])
    sealed = seal_request(request(tid), recipient=load_recipient(keys / "executor-sealing.pub"))
    intake.start(INTAKE_FAULT_AT=point).wait_healthy()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        body = json.dumps(sealed).encode()
        await producer.send_and_wait(prefix + HELPDESK_REQUESTS, body, key=tid.encode(),
                                     headers=await intake.desk.topic_headers(body))
    finally:
        await producer.stop()
    assert await asyncio.to_thread(intake.wait_exit, 60) == -9
    # The offset was not committed: the restarted intake reads the message again.
    intake.start().wait_healthy()
    topic = prefix + SUBMITTED
    records = await eventually(lambda: submitted_records(kafka_bootstrap, topic, tid,
                                                         settle=0.5),
                               timeout=60, interval=0.5, what="TicketSubmitted after restart")
    records = await submitted_records(kafka_bootstrap, topic, tid)
    assert_published_once(records, tid)
    if point != "after_publish":
        assert len(records) == 1
