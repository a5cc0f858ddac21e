"""Zammad and WHMCS deliveries through intake's real HTTP app, broker and store.

Payloads are built in the shapes the products send (see the builders' sources in
``tests/unit/intake/test_intake_adapters.py``): Zammad's trigger webhook body and headers,
and the body the shipped WHMCS hook (``deploy/helpdesk/whmcs/os_intervention.php``) signs.
Each helpdesk is a registered integration whose account map names its customers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from intake_rig import REJECTED, SUBMITTED, Intake, start_intake
from signed_requests import Registered, register

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "intake"))
from test_intake_adapters import (
    whmcs_form,
    whmcs_open,
    whmcs_reply,
    zammad_delivery,
    zammad_payload,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def intake(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Intake]:
    async for running in start_intake(kafka_bootstrap, topic_prefix, database_name,
                                      real_parts, tmp_path_factory):
        yield running


async def _helpdesk(intake: Intake, kind: str, unique: str, accounts: dict[str, str]
                    ) -> Registered:
    return await register(intake.service.runtime.db, intake.keys, f"{kind}-{unique}",
                          kind=kind, scopes=("submit",), accounts=accounts)


async def _quiet(intake: Intake, ticket_id: str, n_submitted: int = 0) -> None:
    await asyncio.sleep(1.0)
    assert len(intake.tap.on(SUBMITTED, ticket_id)) == n_submitted
    assert intake.tap.on(REJECTED, ticket_id) == []


async def _reasons(intake: Intake, ticket_id: str) -> list[Any]:
    return [r.data.get("reason") for r in await intake.service.runtime.audit.records(ticket_id)]


# --- Zammad ----------------------------------------------------------------------------


async def test_zammad_delivery_retry_replay_and_follow_up(intake: Intake, unique: str) -> None:
    zammad = await _helpdesk(intake, "zammad", unique, {"customer:7": "ACC-1001"})
    number = f"Z{unique}"
    url = f"/v1/webhooks/zammad/{zammad.name}"
    payload = zammad_payload(number=number)
    body, headers = zammad_delivery(payload, secret=zammad.secret.encode(),
                                    delivery=f"d-{unique}")
    _, forged = zammad_delivery(payload, secret=b"not-the-secret")
    async with intake.unsigned() as zammad_host:
        refused = await zammad_host.post(url, content=body, headers=forged)
        first = await zammad_host.post(url, content=body, headers=headers)
        retry = await zammad_host.post(url, content=body, headers=headers)
        replay = await zammad_host.post(url, content=body, headers={
            **headers, "X-Zammad-Delivery": f"d-{unique}-replayed"})
        follow = zammad_payload(number=number)
        follow["article"]["id"] = 100
        body2, headers2 = zammad_delivery(follow, secret=zammad.secret.encode(),
                                          delivery=f"d-{unique}-2")
        second = await zammad_host.post(url, content=body2, headers=headers2)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["field"] == "X-Hub-Signature"
    assert first.status_code == 202, first.text
    assert (first.json()["revision"], retry.json()["revision"]) == (1, 1)
    assert retry.json()["duplicate"] is True
    assert replay.status_code == 409
    assert replay.json()["errors"][0]["code"] == "replayed_delivery"
    assert "replayed_delivery" in await _reasons(intake, number)
    assert second.json()["revision"] == 2
    event = await intake.tap.event(SUBMITTED, number)
    assert (event.account_id, event.language, event.channel) == ("ACC-1001", "it",
                                                                 "client_area")
    assert event.vouched_by is not None
    assert (event.vouched_by.integration, event.vouched_by.customer) == (zammad.name,
                                                                         "customer:7")


@pytest.mark.parametrize(("change", "code"), [
    ({"internal": True}, "internal_article"),
    ({"sender": "Agent"}, "not_customer"),
    ({"article_type": "email"}, "not_logged_in"),
])
async def test_zammad_article_that_is_no_customer_request_is_ignored_and_audited(
        intake: Intake, unique: str, change: dict[str, Any], code: str) -> None:
    zammad = await _helpdesk(intake, "zammad", unique, {"customer:7": "ACC-1001"})
    number = f"Z{unique}"
    body, headers = zammad_delivery(zammad_payload(number=number, **change),
                                    secret=zammad.secret.encode(), delivery=f"d-{unique}")
    async with intake.unsigned() as zammad_host:
        answer = await zammad_host.post(f"/v1/webhooks/zammad/{zammad.name}", content=body,
                                        headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "ignored"
    assert await _reasons(intake, number) == [code]
    await _quiet(intake, number)


async def test_zammad_form_naming_another_account_is_refused_on_the_field(
        intake: Intake, unique: str) -> None:
    zammad = await _helpdesk(intake, "zammad", unique, {"customer:7": f"ACC-{unique}"})
    number = f"Z{unique}"
    body, headers = zammad_delivery(
        zammad_payload(number=number, intervention_account="ACC-VICTIM"),
        secret=zammad.secret.encode(), delivery=f"d-{unique}")
    async with intake.unsigned() as zammad_host:
        answer = await zammad_host.post(f"/v1/webhooks/zammad/{zammad.name}", content=body,
                                        headers=headers)
    assert answer.status_code == 422
    assert answer.json()["errors"][0] == {
        "field": "account_id", "code": "account_mismatch",
        "message": answer.json()["errors"][0]["message"]}
    assert await _reasons(intake, number) == ["account_mismatch"]
    await _quiet(intake, number)


# --- WHMCS -----------------------------------------------------------------------------


async def _post_whmcs(intake: Intake, whmcs: Registered, payload: dict[str, Any],
                      customer: str | None = None) -> Any:
    body = json.dumps(payload).encode()
    headers = whmcs.headers("POST", "/v1/webhooks/whmcs", body,
                            customer if customer is not None else f"client:{payload['userid']}")
    async with intake.unsigned() as whmcs_host:
        return await whmcs_host.post("/v1/webhooks/whmcs", content=body, headers=headers)


async def test_whmcs_open_and_reply_are_one_ticket_of_the_clients_account(
        intake: Intake, unique: str) -> None:
    whmcs = await _helpdesk(intake, "whmcs", unique, {"client:55": "ACC-1001"})
    mask = f"W-{unique}"
    opened = await _post_whmcs(intake, whmcs, whmcs_open(
        ticketid=int(uuid.uuid4().int % 10**9), ticketmask=mask,
        ticket={"tid": mask, "userid": 55}))
    assert opened.status_code == 202, opened.text
    reply = await _post_whmcs(intake, whmcs, whmcs_reply(
        replyid=int(uuid.uuid4().int % 10**9), ticket={"tid": mask, "userid": 55}))
    assert reply.status_code == 202, reply.text
    assert (opened.json()["ticket_id"], reply.json()["ticket_id"]) == (mask, mask)
    assert (opened.json()["revision"], reply.json()["revision"]) == (1, 2)
    first = await intake.tap.event(SUBMITTED, mask)
    assert first.account_id == "ACC-1001"
    assert first.vouched_by.customer == "client:55"


async def test_whmcs_reply_whose_form_names_another_account_is_refused(
        intake: Intake, unique: str) -> None:
    whmcs = await _helpdesk(intake, "whmcs", unique, {"client:55": f"ACC-{unique}"})
    mask = f"W-{unique}"
    reply = whmcs_reply(replyid=int(uuid.uuid4().int % 10**9), ticket={"tid": mask, "userid": 55},
                        customfields=whmcs_form(intervention_account="ACC-VICTIM"))
    answer = await _post_whmcs(intake, whmcs, reply)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["code"] == "account_mismatch"
    assert await _reasons(intake, mask) == ["account_mismatch"]
    await _quiet(intake, mask)


async def test_whmcs_delivery_unsigned_or_signed_for_another_client_is_refused(
        intake: Intake, unique: str) -> None:
    whmcs = await _helpdesk(intake, "whmcs", unique, {"client:55": "ACC-1001",
                                                      "client:56": f"ACC-{unique}"})
    mask = f"W-{unique}"
    payload = whmcs_open(ticketmask=mask, ticket={"tid": mask, "userid": 55})
    async with intake.unsigned() as outsider:
        unsigned = await outsider.post("/v1/webhooks/whmcs", json=payload)
    other = await _post_whmcs(intake, whmcs, payload, customer="client:56")
    assert unsigned.status_code == 401
    assert other.status_code == 403
    assert other.json()["errors"][0]["code"] == "customer_mismatch"
    await _quiet(intake, mask)
