"""Intake end to end through the real Kafka broker and FerretDB.

One intake (FastAPI app with its lifespan, so HTTP and the helpdesk-topic consumer run in
this process, as in production) serves the module, on this run's topic prefix and
database. A tap reads intake's output topics and the helpdesk DLQ from the beginning;
each test filters it by its own ticket ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from signed_requests import register

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "intake"))
from intake_rig import DLQ, REJECTED, SUBMITTED, Intake, assigned, start_intake
from pymongo.asynchronous.database import AsyncDatabase
from test_intake_adapters import zammad_delivery, zammad_payload

from schemas import SealedSecret, TicketRejected, TicketSubmitted, parse_event
from schemas.topics import HELPDESK_REQUESTS
from services.intake.examples import example_request
from services.intake.ratelimit import RateLimiter
from services.intake.sealing import load_recipient, seal_request
from services.runtime.crypto import PrivateSealingKey, UnknownKeyError, open_text
from services.runtime.keys import key_set_paths, load_sealing_keyring
from services.runtime.ops import ops_app


@pytest.fixture(scope="module")
async def intake(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Intake]:
    async for running in start_intake(kafka_bootstrap, topic_prefix, database_name,
                                      real_parts, tmp_path_factory):
        yield running


def ticket_id(unique: str, n: int = 1) -> str:
    return f"HD-{unique}-{n}"


# --- HTTP ------------------------------------------------------------------------------


async def test_http_submission_is_published_with_credentials_only_the_executor_opens(
    intake: Intake, unique: str
) -> None:
    password = f"Pw-{uuid.uuid4().hex}"
    tid = ticket_id(unique)
    response = await intake.http.post("/v1/tickets", json=example_request(
        ticket_id=tid, category=None, description="I forgot the root password, please reset it.",
        error_messages=[], credentials={"username": "root", "password": password}))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["ticket_id"] == tid
    assert body["duplicate"] is False
    assert (body["category"], body["scope"], body["category_source"]) == (
        "root_password_reset", "included", "classified")
    assert response.headers["location"] == f"/v1/tickets/{tid}"

    event = await intake.tap.event(SUBMITTED, tid)
    assert isinstance(event, TicketSubmitted)
    assert str(event.event_id) == body["event_id"]
    raw = intake.tap.on(SUBMITTED, tid)[0].value
    assert password.encode() not in raw
    executor = load_sealing_keyring(key_set_paths(intake.keys).sealing_private)
    assert open_text(event.credentials.sealed, executor) == password
    stranger = PrivateSealingKey.generate()
    with pytest.raises(UnknownKeyError):
        open_text(event.credentials.sealed, {stranger.key_id: stranger})
    assert "traceparent" in intake.tap.on(SUBMITTED, tid)[0].headers


async def test_http_duplicates_yield_one_event_also_when_concurrent(
    intake: Intake, unique: str
) -> None:
    document = example_request(ticket_id=ticket_id(unique))
    answers = await asyncio.gather(*(intake.http.post("/v1/tickets", json=document)
                                     for _ in range(5)))
    assert [a.status_code for a in answers] == [202] * 5
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 4
    assert len({a.json()["event_id"] for a in answers}) == 1
    again = await intake.http.post("/v1/tickets", json=document)
    assert again.json()["duplicate"] is True
    await intake.tap.wait(lambda: intake.tap.on(SUBMITTED, ticket_id(unique)))
    await asyncio.sleep(0.5)  # a wrong second event would have arrived by now
    assert len(intake.tap.on(SUBMITTED, ticket_id(unique))) == 1


async def test_http_revisions_new_conflicting_and_stale(intake: Intake, unique: str) -> None:
    tid = ticket_id(unique)
    first = example_request(ticket_id=tid)
    assert (await intake.http.post("/v1/tickets", json=first)).status_code == 202
    follow_up = example_request(ticket_id=tid, revision=2,
                                description="Still no SSH after your reboot, please look again.")
    assert (await intake.http.post("/v1/tickets", json=follow_up)).status_code == 202
    events = await intake.tap.wait(lambda: intake.tap.on(SUBMITTED, tid), n=2)
    assert sorted(parse_event(r.value).revision for r in events) == [1, 2]

    changed = dict(follow_up, description="Something else entirely happened to the server.")
    conflict = await intake.http.post("/v1/tickets", json=changed)
    assert conflict.status_code == 409
    assert conflict.json()["errors"][0]["code"] == "revision_conflict"
    assert "revision 3" in conflict.json()["errors"][0]["message"]
    stale = await intake.http.post("/v1/tickets", json=dict(first, description="Old news "
                                                            "arriving much too late, sorry."))
    assert stale.status_code == 409
    assert stale.json()["errors"][0]["code"] in {"revision_conflict", "revision_stale"}
    unseen_stale = example_request(ticket_id=tid, revision=1)
    unseen_stale["ticket_id"] = ticket_id(unique, 2)
    assert (await intake.http.post("/v1/tickets", json=dict(
        unseen_stale, revision=5))).status_code == 202
    older = await intake.http.post("/v1/tickets", json=dict(unseen_stale, revision=4))
    assert older.status_code == 409
    assert older.json()["errors"][0]["code"] == "revision_stale"


async def test_http_refusals_name_the_field_and_publish_nothing(
    intake: Intake, unique: str
) -> None:
    tid = ticket_id(unique)
    document = example_request(ticket_id=tid, channel="live_chat", department="Sales")
    response = await intake.http.post("/v1/tickets", json=document)
    assert response.status_code == 422
    assert [(e["field"], e["code"]) for e in response.json()["errors"]] == [
        ("department", "wrong_department"), ("channel", "channel_not_allowed")]
    broken = await intake.http.post("/v1/tickets", content=b'{"ticket_id": 12}')
    assert broken.status_code == 422
    assert {"ticket_id", "revision", "credentials"} <= {
        e["field"] for e in broken.json()["errors"]}
    not_json = await intake.http.post("/v1/tickets", content=b"\xff\xfe<xml/>")
    assert not_json.status_code == 422
    assert not_json.json()["errors"][0]["field"] == "$"
    await asyncio.sleep(0.5)
    assert intake.tap.on(SUBMITTED, tid) == []
    assert intake.tap.on(REJECTED, tid) == []  # the HTTP caller got the errors directly


async def test_http_limits_body_size_and_account_rate(intake: Intake, unique: str) -> None:
    huge = example_request(ticket_id=ticket_id(unique), description="x" * 300_000)
    too_large = await intake.http.post("/v1/tickets", json=huge)
    assert too_large.status_code == 413
    assert "larger than 262144 bytes" in too_large.json()["errors"][0]["message"]

    doors = intake.app.state.doors
    original = doors.limiter
    doors.limiter = RateLimiter(per_minute=1, burst=2)
    try:
        answers = [await intake.http.post("/v1/tickets", json=example_request(
            ticket_id=ticket_id(unique, n), account_id=f"ACC-{unique}")) for n in range(3)]
        other_account = await intake.http.post("/v1/tickets", json=example_request(
            ticket_id=ticket_id(unique, 9), account_id=f"ACC-{unique}-other"))
    finally:
        doors.limiter = original
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert int(answers[2].headers["retry-after"]) >= 1
    assert answers[2].json()["errors"][0]["code"] == "rate_limited"
    assert other_account.status_code == 202


async def test_ticket_status_shows_the_timeline_without_secrets(
    intake: Intake, unique: str
) -> None:
    tid = ticket_id(unique)
    password = f"Pw-{uuid.uuid4().hex}"
    await intake.http.post("/v1/tickets", json=example_request(
        ticket_id=tid, credentials={"username": "root", "password": password}))
    event = await intake.tap.event(SUBMITTED, tid)
    response = await intake.http.get(f"/v1/tickets/{tid}")
    assert response.status_code == 200
    status = response.json()
    assert (status["status"], status["revision"], status["category"], status["credentials"]) == (
        "submitted", 1, "diagnostics", "sealed")
    assert [e["kind"] for e in status["timeline"]] == ["event"]
    assert status["timeline"][0]["event_type"] == "TicketSubmitted"
    assert status["timeline"][0]["details"]["credentials"] == "sealed"
    assert password not in response.text
    assert event.credentials.sealed.ciphertext not in response.text

    missing = await intake.http.get(f"/v1/tickets/HD-{unique}-none")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["field"] == "ticket_id"
    bad = await intake.http.get("/v1/tickets/has%20space")
    assert bad.status_code == 422


async def test_health_and_metrics_are_on_the_ops_listener_only(intake: Intake) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(
            app=ops_app(intake.service.runtime, intake.service.health)),
            base_url="http://ops.test") as ops:
        health = await ops.get("/healthz")
        metrics = await ops.get("/metrics")
    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["ok"]) == ("ok", True)
    assert body["checks"] == {"sealing_key": True, "kafka": True, "mongodb": True,
                              "outbox": True}
    assert {name: d["ok"] for name, d in body["dependencies"].items()} == body["checks"]
    for path in ("/healthz", "/metrics"):  # never on the public API
        assert (await intake.http.get(path)).status_code == 404
    assert metrics.status_code == 200
    text = metrics.text
    assert 'intake_requests_total{outcome="submitted",source="http"}' in text
    assert 'intake_http_responses_total{method="POST",route="/v1/tickets",status="202"}' in text
    assert "HD-" not in text  # no ticket ids as labels
    unknown = await intake.http.get("/no/such/path")
    assert unknown.status_code == 404
    assert "errors" in unknown.json()


# --- the helpdesk topic ----------------------------------------------------------------


async def test_sealed_request_on_the_topic_is_submitted(intake: Intake, unique: str) -> None:
    tid = ticket_id(unique)
    await intake.publish(json.dumps(intake.sealed(ticket_id=tid, language="it")).encode(), tid)
    event = await intake.tap.event(SUBMITTED, tid)
    assert isinstance(event, TicketSubmitted)
    assert (event.ticket_id, event.language, event.scope) == (tid, "it", "included")


async def test_invalid_request_on_the_topic_gets_ticket_rejected_with_the_same_errors(
    intake: Intake, unique: str
) -> None:
    tid = ticket_id(unique)
    document = intake.sealed(ticket_id=tid, language="it", channel="live_chat",
                             department="Sales")
    await intake.publish(json.dumps(document).encode(), tid)
    rejected = await intake.tap.event(REJECTED, tid)
    assert isinstance(rejected, TicketRejected)
    assert rejected.language == "it"
    over_http = await intake.http.post("/v1/tickets", json=dict(document, ticket_id=tid + "h"))
    assert [e.model_dump(exclude_none=True) for e in rejected.errors] == over_http.json()[
        "errors"]


async def test_plaintext_on_the_topic_is_rejected_and_its_content_copied_nowhere(
    intake: Intake, unique: str
) -> None:
    tid = ticket_id(unique)
    password = f"Pw-{uuid.uuid4().hex}"
    document = example_request(ticket_id=tid, credentials={"username": "root",
                                                           "password": password})
    await intake.publish(json.dumps(document).encode(), tid)
    rejected = await intake.tap.event(REJECTED, tid)
    assert [(e.field, e.code) for e in rejected.errors] == [
        ("credentials", "credentials_not_sealed")]
    assert "intervene seal" in rejected.errors[0].message
    assert password.encode() not in intake.tap.on(REJECTED, tid)[0].value
    assert intake.tap.on(DLQ, tid) == []
    # The helpdesk fixes it and publishes the same revision sealed: now it is accepted.
    await intake.publish(json.dumps(seal_request(document, recipient=load_recipient(
        key_set_paths(intake.keys).sealing_public))).encode(), tid)
    assert isinstance(await intake.tap.event(SUBMITTED, tid), TicketSubmitted)


async def test_message_naming_no_ticket_goes_to_the_dlq_scrubbed_and_the_next_flows(
    intake: Intake, unique: str
) -> None:
    key = f"K-{unique}"
    password = f"Pw-{uuid.uuid4().hex}"
    unnamed = json.dumps({"revision": 1, "credentials": {"username": "root",
                                                         "password": password}}).encode()
    partition, offset = await intake.publish(unnamed, key)
    await intake.publish(b"\x00\x01 not json " + password.encode(), key)
    tid = ticket_id(unique)
    await intake.publish(json.dumps(intake.sealed(ticket_id=tid)).encode(), key)
    await intake.tap.event(SUBMITTED, tid)
    dead = await intake.tap.wait(lambda: intake.tap.on(DLQ, key), n=2)
    first = next(r for r in dead if r.headers["x-dlq-original-offset"] == str(offset))
    assert first.headers["x-dlq-reason"] == "decode"
    assert first.headers["x-dlq-original-partition"] == str(partition)
    assert first.headers["x-dlq-error-class"] == "HelpdeskTicketRequest.unnamed"
    assert "ticket_id" in first.headers["x-dlq-error-message"]
    copy = json.loads(first.value)
    assert copy["revision"] == 1
    for record in dead:
        assert password.encode() not in record.value
        assert password not in json.dumps(record.headers)


async def test_the_same_request_twice_on_the_topic_is_one_event(
    intake: Intake, unique: str
) -> None:
    tid, marker = ticket_id(unique), ticket_id(unique, 2)
    body = json.dumps(intake.sealed(ticket_id=tid)).encode()
    await intake.publish(body, tid)
    await intake.publish(body, tid)
    resealed = json.dumps(intake.sealed(ticket_id=tid)).encode()  # a retry that re-sealed
    await intake.publish(resealed, tid)
    await intake.publish(json.dumps(intake.sealed(ticket_id=marker)).encode(), tid)
    await intake.tap.event(SUBMITTED, marker)  # same partition: the copies were handled
    await asyncio.sleep(0.5)
    assert len(intake.tap.on(SUBMITTED, tid)) == 1
    assert intake.tap.on(REJECTED, tid) == []


async def test_http_and_topic_share_one_submission_per_revision(
    intake: Intake, unique: str
) -> None:
    tid = ticket_id(unique)
    document = intake.sealed(ticket_id=tid)
    assert (await intake.http.post("/v1/tickets", json=document)).status_code == 202
    await intake.publish(json.dumps(document).encode(), tid)
    marker = ticket_id(unique, 2)
    await intake.publish(json.dumps(intake.sealed(ticket_id=marker)).encode(), tid)
    await intake.tap.event(SUBMITTED, marker)
    await asyncio.sleep(0.5)
    assert len(intake.tap.on(SUBMITTED, tid)) == 1


# --- helpdesk webhooks -----------------------------------------------------------------


# --- the canary: one secret, looked for everywhere -------------------------------------


async def _every_message(bootstrap: str, prefix: str
                         ) -> list[tuple[tuple[str, int, int], bytes]]:
    """Key, value and headers of every record on every topic of this run's prefix."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = await assigned(consumer, topics)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[tuple[tuple[str, int, int], bytes]] = []
        while [p for p in parts if await consumer.position(p) < ends[p]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(((r.topic, r.partition, r.offset), (r.key or b"") + r.value
                            + json.dumps([(k, v.decode("latin-1")) for k, v in r.headers]
                                         ).encode())
                           for r in records)
        return out
    finally:
        await consumer.stop()


async def test_canary_password_is_absent_from_topics_store_logs_spans_and_metrics(
    intake: Intake, unique: str, kafka_bootstrap: str,
    mongo_db: AsyncDatabase[dict[str, object]], caplog: pytest.LogCaptureFixture,
) -> None:
    canary = f"Canary-{uuid.uuid4().hex}"
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="intervention")
    # Every way in: HTTP (sealed at the edge), the topic in plaintext (refused), a broken
    # named message in plaintext, an unnamed one, a Zammad webhook, and a failing publish.
    plain = {"username": "root", "password": canary}
    assert (await intake.http.post("/v1/tickets", json=example_request(
        ticket_id=ticket_id(unique, 1), credentials=plain))).status_code == 202
    assert (await intake.http.post("/v1/tickets", json=example_request(
        ticket_id=ticket_id(unique, 2), credentials=plain, channel="live_chat",
    ))).status_code == 422
    # What the misbehaving helpdesk itself put on its topic is its own leak; everything
    # else on the bus is looked at.
    ours = {intake.prefix + HELPDESK_REQUESTS}
    broken = example_request(ticket_id=ticket_id(unique, 3), credentials=plain)
    published = [await intake.publish(json.dumps(broken).encode(), ticket_id(unique, 3))]
    broken["server"] = {"ip": canary}
    broken["ticket_id"] = ticket_id(unique, 4)
    published.append(await intake.publish(json.dumps(broken).encode(), ticket_id(unique, 3)))
    published.append(await intake.publish(json.dumps({"credentials": plain}).encode(),
                                          ticket_id(unique, 3)))
    theirs = {(topic, partition, offset) for topic in ours for partition, offset in published}
    zammad = await register(intake.service.runtime.db, intake.keys, f"zammad-{unique}",
                            kind="zammad", accounts={"customer:7": "ACC-1001"})
    body, headers = zammad_delivery(zammad_payload(
        number=f"Z{unique}", intervention_os_password=canary), secret=zammad.secret.encode(),
        delivery=f"canary-{unique}")
    zammad_answer = await intake.http.post(f"/v1/webhooks/zammad/{zammad.name}", content=body,
                                           headers=headers)
    assert zammad_answer.status_code == 202, zammad_answer.text
    await intake.tap.event(SUBMITTED, ticket_id(unique, 1))
    await intake.tap.event(REJECTED, ticket_id(unique, 3))
    await intake.tap.event(REJECTED, ticket_id(unique, 4))
    await intake.tap.wait(lambda: intake.tap.on(DLQ, ticket_id(unique, 3)))
    status = await intake.http.get(f"/v1/tickets/{ticket_id(unique, 1)}")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(
            app=ops_app(intake.service.runtime)), base_url="http://ops.test") as ops:
        metrics = await ops.get("/metrics")

    needle = canary.encode()
    messages = await _every_message(kafka_bootstrap, intake.prefix)
    assert messages, "the run's topics hold messages"
    assert theirs <= {where for where, _ in messages}
    assert [m[:200] for where, m in messages if needle in m and where not in theirs] == []

    stored: list[str] = []
    for name in await mongo_db.list_collection_names():
        stored.extend([json.dumps(doc, default=str) async for doc in mongo_db[name].find()])
    assert stored, "the run's database holds documents"
    assert [d[:200] for d in stored if canary in d] == []

    formatter = logging.Formatter("%(name)s %(message)s %(exc_text)s")
    lines = [formatter.format(record) for record in caplog.records]
    assert any(" accepted: " in line for line in lines), "intake logged its work"
    assert [line for line in lines if canary in line] == []

    spans = repr([(s.name, dict(s.attributes or {}), [(e.name, dict(e.attributes or {}))
                                                      for e in s.events], s.status.description)
                  for s in intake.spans.get_finished_spans()])
    assert "POST /v1/tickets" in spans  # the SERVER span of the request
    assert canary not in spans
    assert canary not in metrics.text
    assert canary not in status.text


async def test_sealed_secret_values_are_well_formed(intake: Intake, unique: str) -> None:
    # The ciphertext on the bus is a valid SealedSecret naming the executor's key id.
    tid = ticket_id(unique)
    await intake.http.post("/v1/tickets", json=example_request(ticket_id=tid))
    event = await intake.tap.event(SUBMITTED, tid)
    sealed = SealedSecret.model_validate(event.credentials.sealed.model_dump())
    assert sealed.key_id == intake.service.intake.sealer.key_id  # type: ignore[union-attr]
