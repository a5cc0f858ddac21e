"""Trust at the edge, tried as attackers would, against the real broker and store.

Attackers: an outsider who reaches intake's port; a registered integration naming another
customer's account; a customer of one helpdesk reusing another's ticket number; someone who
captured a signed request; someone who can write intake's collections but has no key file.
Each refusal must be the documented status and code, audited with the integration and the
source address, and nothing may reach the bus (no TicketSubmitted, no TicketRejected).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from intake_rig import DLQ, REJECTED, SUBMITTED, Intake, start_intake
from signed_requests import Registered, register

from schemas.topics import HELPDESK_REQUESTS
from services.intake.edge import EDGE_CHAIN_PREFIX
from services.intake.examples import example_request
from services.intake.integrations import IntegrationKey
from services.intake.signing import KAFKA_METHOD

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def intake(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Intake]:
    async for running in start_intake(kafka_bootstrap, topic_prefix, database_name,
                                      real_parts, tmp_path_factory):
        yield running


def _doc(unique: str, n: int = 1, **changes: Any) -> dict[str, Any]:
    return example_request(ticket_id=f"EA-{unique}-{n}", **changes)


async def _edge_records(intake: Intake) -> list[dict[str, Any]]:
    day = f"{EDGE_CHAIN_PREFIX}{time.strftime('%Y%m%d', time.gmtime())}"
    return [r.data for r in await intake.service.runtime.audit.records(day)]


async def _nothing_published(intake: Intake, ticket_id: str) -> None:
    # A refusal publishes nothing; give a wrongly published event time to arrive.
    await asyncio.sleep(1.0)
    assert intake.tap.on(SUBMITTED, ticket_id) == []
    assert intake.tap.on(REJECTED, ticket_id) == []


async def _refused(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["errors"][0]["code"] == code, body
    return body


async def test_outsider_post_and_get_without_signature_are_401_audited_and_publish_nothing(
        intake: Intake, unique: str) -> None:
    document = _doc(unique)
    async with intake.unsigned() as outsider:
        post = await outsider.post("/v1/tickets", json=document)
        get = await outsider.get(f"/v1/tickets/{document['ticket_id']}")
    await _refused(post, 401, "unsigned")
    await _refused(get, 401, "unsigned")
    assert post.headers["www-authenticate"] == "OSI-HMAC-SHA256"
    audited = [r for r in await _edge_records(intake) if r["reason"] == "unsigned"]
    assert {r["door"].split()[0] for r in audited} >= {"POST", "GET"}
    assert all(r["source_address"] == "127.0.0.1" for r in audited)
    await _nothing_published(intake, document["ticket_id"])


async def test_signature_over_another_body_is_refused(intake: Intake, unique: str) -> None:
    innocent = json.dumps(_doc(unique, category="diagnostics")).encode()
    harmful = json.dumps(_doc(unique, category="root_password_reset")).encode()
    headers = intake.desk.headers("POST", "/v1/tickets", innocent, "portal:ACC-1001")
    async with intake.unsigned() as attacker:
        answer = await attacker.post("/v1/tickets", content=harmful, headers=headers)
    await _refused(answer, 401, "bad_signature")
    await _nothing_published(intake, f"EA-{unique}-1")


async def test_a_captured_request_sent_again_is_refused_as_replayed(
        intake: Intake, unique: str) -> None:
    await intake.desk.map("portal:ACC-1001", "ACC-1001")
    body = json.dumps(_doc(unique)).encode()
    headers = intake.desk.headers("POST", "/v1/tickets", body, "portal:ACC-1001")
    async with intake.unsigned() as wire:
        first = await wire.post("/v1/tickets", content=body, headers=headers)
        again = await wire.post("/v1/tickets", content=body, headers=headers)
    assert first.status_code == 202, first.text
    await _refused(again, 401, "replayed")
    assert any(r["reason"] == "replayed" and r["integration"] == intake.desk.name
               for r in await _edge_records(intake))


async def test_a_stale_timestamp_is_refused(intake: Intake, unique: str) -> None:
    body = json.dumps(_doc(unique)).encode()
    headers = intake.desk.headers("POST", "/v1/tickets", body, "portal:ACC-1001",
                                  now=time.time() - 600)
    async with intake.unsigned() as wire:
        answer = await wire.post("/v1/tickets", content=body, headers=headers)
    await _refused(answer, 401, "stale_timestamp")


async def test_an_integration_naming_another_customers_account_is_refused_on_the_field(
        intake: Intake, unique: str) -> None:
    await intake.desk.map(f"client:{unique}", f"ACC-{unique}")
    victim = _doc(unique, account_id="ACC-VICTIM")
    answer = await intake.http.post("/v1/tickets", json=victim,
                                    auth=intake.desk.auth(customer=f"client:{unique}",
                                                          auto_map=False))
    body = await _refused(answer, 422, "account_mismatch")
    assert body["errors"][0]["field"] == "account_id"
    records = await intake.service.runtime.audit.records(victim["ticket_id"])
    assert [r.data["reason"] for r in records] == ["account_mismatch"]
    assert records[0].data["integration"] == intake.desk.name
    await _nothing_published(intake, victim["ticket_id"])


async def test_an_unmapped_customer_is_refused(intake: Intake, unique: str) -> None:
    answer = await intake.http.post("/v1/tickets", json=_doc(unique),
                                    auth=intake.desk.auth(customer=f"client:nobody-{unique}",
                                                          auto_map=False))
    await _refused(answer, 403, "customer_unmapped")


async def test_a_revision_of_another_accounts_ticket_is_refused_and_audited(
        intake: Intake, unique: str) -> None:
    first = await intake.http.post("/v1/tickets", json=_doc(unique, account_id=f"ACC-A{unique}"))
    assert first.status_code == 202, first.text
    squat = _doc(unique, revision=2, account_id=f"ACC-B{unique}")
    answer = await intake.http.post("/v1/tickets", json=squat)
    await _refused(answer, 403, "ticket_not_yours")
    records = await intake.service.runtime.audit.records(squat["ticket_id"])
    assert "ticket_not_yours" in [r.data.get("reason") for r in records]
    await asyncio.sleep(1.0)
    assert [json.loads(r.value)["revision"] for r in intake.tap.on(SUBMITTED,
                                                                   squat["ticket_id"])] == [1]


async def test_another_integration_sees_no_ticket_it_may_not_act_for(
        intake: Intake, unique: str) -> None:
    document = _doc(unique, account_id=f"ACC-R{unique}")
    assert (await intake.http.post("/v1/tickets", json=document)).status_code == 202
    await intake.tap.event(SUBMITTED, document["ticket_id"])
    stranger = await register(intake.service.runtime.db, intake.keys, f"other-{unique}")
    partner = await register(intake.service.runtime.db, intake.keys, f"partner-{unique}",
                             accounts={"client:7": f"ACC-R{unique}"})
    path = f"/v1/tickets/{document['ticket_id']}"
    own = await intake.http.get(path)
    hidden = await intake.http.get(path, auth=stranger.auth(customer=""))
    shared = await intake.http.get(path, auth=partner.auth(customer=""))
    assert own.status_code == 200
    assert shared.status_code == 200
    await _refused(hidden, 404, "not_found")  # the same answer as for no ticket at all


async def test_missing_scope_revoked_and_rotated_secrets(intake: Intake, unique: str) -> None:
    db, keys = intake.service.runtime.db, intake.keys
    reader = await register(db, keys, f"reader-{unique}", scopes=("read",))
    answer = await intake.http.post("/v1/tickets", json=_doc(unique), auth=reader.auth())
    await _refused(answer, 403, "missing_scope")

    registry = intake.service.guard.registry
    rotating = await register(db, keys, f"rot-{unique}")
    _, new_secret = await registry.rotate(rotating.name)
    rotated = Registered(name=rotating.name, secret=new_secret, db=db, keys=keys)
    old = await intake.http.post("/v1/tickets", json=_doc(unique, 2), auth=rotating.auth())
    new = await intake.http.post("/v1/tickets", json=_doc(unique, 3), auth=rotated.auth())
    assert (old.status_code, new.status_code) == (202, 202)  # the old one within its grace

    await registry.revoke(rotating.name)
    revoked = await intake.http.post("/v1/tickets", json=_doc(unique, 4), auth=rotated.auth())
    await _refused(revoked, 401, "bad_signature")


async def test_a_database_writer_cannot_add_an_integration_or_remap_a_customer(
        intake: Intake, unique: str) -> None:
    db = intake.service.runtime.db
    # An integration record written straight into the store, sealed with a key of the
    # attacker's own (they have the database, not intake's key file).
    forged_secret = f"osi_{uuid.uuid4().hex}"
    forged = {"name": f"forged-{unique}", "kind": "api", "scopes": ["submit", "read"],
              "status": "active", "created_at": "2026-12-01T00:00:00+00:00",
              "fingerprints": [], "secrets": [{"value": forged_secret, "valid_until": None}]}
    await db["intake_integrations"].insert_one({
        "_id": forged["name"], **{k: v for k, v in forged.items() if k != "secrets"},
        "sealed": IntegrationKey.generate().seal(forged)})
    fake = Registered(name=str(forged["name"]), secret=forged_secret, db=db, keys=intake.keys)
    answer = await intake.http.post("/v1/tickets", json=_doc(unique), auth=fake.auth(
        auto_map=False, customer="portal:ACC-1001"))
    await _refused(answer, 401, "bad_signature")

    # A mapping edited in place to point a customer at the victim's account.
    customer = f"client:edit-{unique}"
    await intake.desk.map(customer, f"ACC-E{unique}")
    await db["intake_account_map"].update_one(
        {"_id": f"{intake.desk.name}|{customer}"}, {"$set": {"account_id": "ACC-VICTIM"}})
    await asyncio.sleep(5.1)  # past the account map's cache
    edited = await intake.http.post("/v1/tickets", json=_doc(unique, 2, account_id="ACC-VICTIM"),
                                    auth=intake.desk.auth(customer=customer, auto_map=False))
    await _refused(edited, 403, "customer_unmapped")


async def test_the_rate_limit_is_per_integration_and_account(intake: Intake, unique: str
                                                             ) -> None:
    from services.intake.ratelimit import RateLimiter

    doors = intake.app.state.doors
    original = doors.limiter
    doors.limiter = RateLimiter(per_minute=1, burst=1)
    second = await register(intake.service.runtime.db, intake.keys, f"second-{unique}")
    try:
        account = f"ACC-L{unique}"
        one = await intake.http.post("/v1/tickets", json=_doc(unique, 1, account_id=account))
        again = await intake.http.post("/v1/tickets", json=_doc(unique, 2, account_id=account))
        other = await intake.http.post("/v1/tickets", json=_doc(unique, 3, account_id=account),
                                       auth=second.auth())
    finally:
        doors.limiter = original
    assert (one.status_code, again.status_code, other.status_code) == (202, 429, 202)


# --- the helpdesk topic ----------------------------------------------------------------


async def test_an_unsigned_topic_message_is_dead_lettered_as_unauthenticated(
        intake: Intake, unique: str) -> None:
    tid = f"EA-{unique}-t"
    await intake.publish(json.dumps(intake.sealed(ticket_id=tid)).encode(), tid, signed=False)
    (dead, *_) = await intake.tap.wait(lambda: intake.tap.on(DLQ, tid))
    assert dead.headers["x-dlq-reason"] == "unauthenticated"
    assert "unsigned" in dead.headers["x-dlq-error-message"]
    await _nothing_published(intake, tid)


async def test_a_signed_topic_message_for_another_account_is_dropped_without_rejection(
        intake: Intake, unique: str) -> None:
    tid = f"EA-{unique}-k"
    body = json.dumps(intake.sealed(ticket_id=tid, account_id="ACC-VICTIM")).encode()
    await intake.desk.map(f"client:k{unique}", f"ACC-K{unique}")
    headers = [(k, v.encode()) for k, v in intake.desk.headers(
        KAFKA_METHOD, HELPDESK_REQUESTS, body, f"client:k{unique}").items()]
    await intake.producer.send_and_wait(intake.prefix + HELPDESK_REQUESTS, body,
                                        key=tid.encode(), headers=headers)
    async def audited() -> list[str]:
        return [r.data.get("reason") for r in await intake.service.runtime.audit.records(tid)]
    for _ in range(100):
        if "account_mismatch" in await audited():
            break
        await asyncio.sleep(0.1)
    assert "account_mismatch" in await audited()
    await _nothing_published(intake, tid)
