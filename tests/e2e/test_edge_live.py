"""Trust at the edge, against the running system: the four service processes, the real broker
and store, the demo customer's real servers.

The helpdesks are set up as a provider would (``intervene integrations add``, ``intervene
accounts import``); requests go only through the public doors - intake's HTTP port and the
helpdesk topic - as the helpdesks, and as attackers:

- legitimate: a sealed request on the topic, a Zammad customer's web article, a WHMCS
  ticket and its reply: each reaches a completed intervention on the customer's server;
- attacks: unsigned POST and GET, a signature over another body, a replayed request, an
  integration naming another customer's account, a Zammad internal note, a Zammad delivery
  replayed under a new id, a WHMCS reply whose form names another account, and a revision
  of a ticket that belongs to another account. Each is refused and audited, and nothing of
  it reaches auth or the executor (no TicketSubmitted, no verdict, no intervention).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_system import System
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "intake"))
from test_intake_adapters import (
    whmcs_form,
    whmcs_open,
    whmcs_reply,
    zammad_delivery,
    zammad_payload,
)

from devstack.demo.estate import Estate
from devstack.demo.helpdesk import post_ticket, publish_sealed
from devstack.demo.operator import intervene
from devstack.demo.progress import BusRecorder
from devstack.demo.scenarios import SCENARIOS
from schemas.topics import HELPDESK_REQUESTS, physical
from services.intake.signing import Signer
from services.runtime.keys import load_sealing_public

pytestmark = pytest.mark.integration

SETTLE_S = 120.0
AUDIT = "audit"  # services.runtime.audit.DEFAULT_COLLECTION
# Everything downstream of intake: none of it may exist for a refused request.
DOWNSTREAM = ("TicketSubmitted", "AuthorizationVerified", "AuthorizationRejected",
              "ClarificationRequested", "InterventionStarted", "InterventionCompleted")
FORM_SERVER_OFF = {"intervention_server_ip": ""}


def _register(system: System, name: str, kind: str, accounts: dict[str, str]) -> Signer:
    added = intervene(["integrations", "add", name, "--kind", kind, "--scopes", "submit,read"],
                      system.env)
    assert added.returncode == 0, added.stdout + added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    csv = system.workdir / f"{name}-accounts.csv"
    csv.write_text("customer,account_id\n" + "".join(f"{c},{a}\n" for c, a in accounts.items()))
    imported = intervene(["accounts", "import", str(csv), "--integration", name], system.env)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    return Signer(integration=name, secret=secret)


def _diagnostics(estate: Estate, ticket_id: str) -> dict[str, Any]:
    (scenario,) = [s for s in SCENARIOS if s.key == "diagnostics"]
    return {**scenario.build(estate, ticket_id), "ticket_id": ticket_id}


def _form(estate: Estate) -> dict[str, Any]:
    """The intervention form as the customer fills it in a helpdesk (plaintext over TLS to
    the helpdesk; intake seals it at once)."""
    return {**FORM_SERVER_OFF, "intervention_service": estate.server("healthy").service_id,
            "intervention_category": "diagnostics", "intervention_language": "en",
            "intervention_os_username": estate.admin.name,
            "intervention_os_password": estate.admin.password,
            "intervention_account": estate.account_id}


def _phase(bus: BusRecorder, ticket: str) -> tuple[str, str | None]:
    progress = bus.ticket(ticket)
    completed = [e for e in progress.events if e.event_type == "InterventionCompleted"]
    return progress.phase, (completed[-1].outcome if completed else None)


async def _completed(bus: BusRecorder, ticket: str, revisions: int = 1) -> None:
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        done = [e for e in bus.ticket(ticket).events if e.event_type == "InterventionCompleted"]
        if len({e.revision for e in done}) >= revisions:
            assert {e.outcome for e in done} == {"resolved"}, _phase(bus, ticket)
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{ticket} did not complete {revisions} revision(s): "
                         f"{_phase(bus, ticket)}")


async def _untouched(bus: BusRecorder, db: AsyncDatabase[dict[str, Any]], ticket: str) -> None:
    """Nothing of ``ticket`` reached auth or the executor: no event past intake on the bus,
    and no audit record written by them."""
    await asyncio.sleep(2.0)  # what would have been published has had time to arrive
    reached = [e.event_type for e in bus.ticket(ticket).events if e.event_type in DOWNSTREAM]
    assert reached == [], f"{ticket} reached {reached}"
    actors = {d.get("actor") async for d in db[AUDIT].find({"ticket_id": ticket})}
    assert actors <= {"intake"}, actors


async def _audited(db: AsyncDatabase[dict[str, Any]], ticket: str | None,
                   reason: str | tuple[str, ...]) -> None:
    reasons = [reason] if isinstance(reason, str) else list(reason)
    query: dict[str, Any] = {"kind": "intake.refused", "data.reason": {"$in": reasons}}
    if ticket is not None:
        query["ticket_id"] = ticket
    for _ in range(40):
        if await db[AUDIT].find_one(query) is not None:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"no audit record of {reason} for {ticket}")


# --- the legitimate doors -------------------------------------------------------------


async def test_topic_zammad_and_whmcs_open_and_reply_reach_completed_interventions(
        system: System, bus: BusRecorder, estate: Estate) -> None:
    run = uuid.uuid4().hex[:6]
    recipient = load_sealing_public(
        Path(system.env["INTERVENTION_KEYS_DIR"]) / "executor-sealing.pub")
    topic_ticket = f"HD-{estate.run}-topic-{run}"
    await publish_sealed(_diagnostics(estate, topic_ticket), recipient=recipient,
                         bootstrap=system.bootstrap, prefix=system.prefix, signer=system.signer)

    zammad = _register(system, f"zammad-{run}", "zammad", {"customer:7": estate.account_id})
    number = f"Z{estate.run}{run}"
    payload = zammad_payload(number=number, **_form(estate))
    payload["article"]["created_at"] = datetime.now(UTC).isoformat()
    body, headers = zammad_delivery(payload, secret=zammad.secret.encode(),
                                    delivery=str(uuid.uuid4()))
    whmcs = _register(system, f"whmcs-{run}", "whmcs", {"client:55": estate.account_id})
    mask = f"W-{estate.run}-{run}"
    form = whmcs_form(**_form(estate))
    opened = whmcs_open(ticketid=int(uuid.uuid4().int % 10**9), ticketmask=mask,
                        ticket={"tid": mask, "userid": 55}, customfields=form)
    async with httpx.AsyncClient(base_url=system.intake_url, timeout=30) as http:
        z = await http.post(f"/v1/webhooks/zammad/{zammad.integration}", content=body,
                            headers=headers)
        w = await _whmcs(http, whmcs, opened)
        assert (z.status_code, w.status_code) == (202, 202), (z.text, w.text)
        await _completed(bus, mask)
        reply = whmcs_reply(replyid=int(uuid.uuid4().int % 10**9),
                            ticket={"tid": mask, "userid": 55}, customfields=form)
        r = await _whmcs(http, whmcs, reply)
        assert r.status_code == 202, r.text
        assert r.json()["revision"] == 2
    await asyncio.gather(_completed(bus, topic_ticket), _completed(bus, number),
                         _completed(bus, mask, revisions=2))


async def _whmcs(http: httpx.AsyncClient, whmcs: Signer, payload: dict[str, Any]
                 ) -> httpx.Response:
    body = json.dumps(payload).encode()
    signer = Signer(integration=whmcs.integration, secret=whmcs.secret,
                    customer=f"client:{payload['userid']}")
    return await http.post("/v1/webhooks/whmcs", content=body,
                           headers=signer.headers("POST", "/v1/webhooks/whmcs", body))


# --- attacks --------------------------------------------------------------------------


async def test_outsider_without_a_signature_can_neither_submit_nor_read(
        system: System, bus: BusRecorder, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    ticket = f"HD-{estate.run}-outsider"
    async with httpx.AsyncClient(base_url=system.intake_url, timeout=30) as http:
        post = await http.post("/v1/tickets", json=_diagnostics(estate, ticket))
        get = await http.get(f"/v1/tickets/HD-{estate.run}-diagnostics")
    assert (post.status_code, get.status_code) == (401, 401)
    assert post.json()["errors"][0]["code"] == "unsigned"
    await _audited(e2e_db, None, "unsigned")
    await _untouched(bus, e2e_db, ticket)


async def test_signature_over_another_body_and_a_replay_are_refused(
        system: System, bus: BusRecorder, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    swapped, replayed = f"HD-{estate.run}-swapped", f"HD-{estate.run}-replayed"
    innocent = json.dumps(_diagnostics(estate, swapped)).encode()
    harmful = json.dumps({**_diagnostics(estate, swapped),
                          "category": "root_password_reset"}).encode()
    captured = json.dumps(_diagnostics(estate, replayed)).encode()
    headers = system.signer.headers("POST", "/v1/tickets", captured)
    async with httpx.AsyncClient(base_url=system.intake_url, timeout=30) as http:
        forged = await http.post("/v1/tickets", content=harmful,
                                 headers=system.signer.headers("POST", "/v1/tickets", innocent))
        original = await http.post("/v1/tickets", content=captured, headers=headers)
        replay = await http.post("/v1/tickets", content=captured, headers=headers)
    assert forged.status_code == 401
    assert forged.json()["errors"][0]["code"] == "bad_signature"
    assert original.status_code == 202
    assert replay.status_code == 401
    assert replay.json()["errors"][0]["code"] == "replayed"
    await _audited(e2e_db, None, "replayed")
    await _untouched(bus, e2e_db, swapped)
    # The original went through once; the replay added nothing.
    await asyncio.sleep(1)
    assert len(bus.on("intervention.ticket-submitted", replayed)) == 1


async def test_an_integration_naming_another_customers_account_is_refused(
        system: System, bus: BusRecorder, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    ticket = f"HD-{estate.run}-otheraccount"
    victim = {**_diagnostics(estate, ticket), "account_id": f"ACC-VICTIM-{estate.run}"}
    answer = await post_ticket(system.intake_url, victim, signer=system.signer)
    assert answer.status == 422
    assert answer.body["errors"][0]["code"] == "account_mismatch"
    await _audited(e2e_db, ticket, "account_mismatch")
    await _untouched(bus, e2e_db, ticket)


async def test_zammad_internal_note_and_replayed_delivery_do_nothing(
        system: System, bus: BusRecorder, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    run = uuid.uuid4().hex[:6]
    zammad = _register(system, f"zammad-att-{run}", "zammad", {"customer:7": estate.account_id})
    note, replayed = f"N{estate.run}{run}", f"R{estate.run}{run}"
    note_body, note_headers = zammad_delivery(
        zammad_payload(number=note, internal=True, sender="Agent", **_form(estate)),
        secret=zammad.secret.encode(), delivery=str(uuid.uuid4()))
    # A customer article Zammad delivered once; the attacker re-sends its body under a new
    # delivery id to have it worked on again.
    payload = zammad_payload(number=replayed, **_form(estate))
    payload["article"]["created_at"] = datetime.now(UTC).isoformat()
    body, headers = zammad_delivery(payload, secret=zammad.secret.encode(),
                                    delivery=str(uuid.uuid4()))
    url = f"/v1/webhooks/zammad/{zammad.integration}"
    async with httpx.AsyncClient(base_url=system.intake_url, timeout=30) as http:
        ignored = await http.post(url, content=note_body, headers=note_headers)
        first = await http.post(url, content=body, headers=headers)
        again = await http.post(url, content=body,
                                headers={**headers, "X-Zammad-Delivery": str(uuid.uuid4())})
    assert ignored.status_code == 202
    assert ignored.json()["status"] == "ignored"
    assert first.status_code == 202
    assert again.status_code == 409
    assert again.json()["errors"][0]["code"] == "replayed_delivery"
    # An agent's internal note: refused as not the customer's (or as internal).
    await _audited(e2e_db, note, ("not_customer", "internal_article"))
    await _audited(e2e_db, replayed, "replayed_delivery")
    await _untouched(bus, e2e_db, note)
    # The delivery was taken once (revision 1); the replay made no second revision.
    await asyncio.sleep(2)
    assert len(bus.on("intervention.ticket-submitted", replayed)) == 1
    assert {e.revision for e in bus.ticket(replayed).events} == {1}


async def test_whmcs_reply_naming_another_account_is_refused(
        system: System, bus: BusRecorder, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    run = uuid.uuid4().hex[:6]
    whmcs = _register(system, f"whmcs-att-{run}", "whmcs", {"client:55": estate.account_id})
    mask = f"WA-{estate.run}-{run}"
    reply = whmcs_reply(replyid=int(uuid.uuid4().int % 10**9),
                        ticket={"tid": mask, "userid": 55},
                        customfields=whmcs_form(**{**_form(estate),
                                                   "intervention_account": "ACC-VICTIM"}))
    async with httpx.AsyncClient(base_url=system.intake_url, timeout=30) as http:
        answer = await _whmcs(http, whmcs, reply)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["code"] == "account_mismatch"
    await _audited(e2e_db, mask, "account_mismatch")
    await _untouched(bus, e2e_db, mask)


async def test_a_revision_of_another_accounts_ticket_is_refused(
        system: System, bus: BusRecorder, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    # Another helpdesk, acting for another account, reuses a ticket number of ours.
    run = uuid.uuid4().hex[:6]
    ours = f"HD-{estate.run}-owned-{run}"
    mine = await post_ticket(system.intake_url, _diagnostics(estate, ours), signer=system.signer)
    assert mine.status == 202, mine.body
    stranger = _register(system, f"stranger-{run}", "api",
                         {f"portal:ACC-OTHER-{run}": f"ACC-OTHER-{run}"})
    squat = {**_diagnostics(estate, ours), "revision": 7, "account_id": f"ACC-OTHER-{run}"}
    answer = await post_ticket(system.intake_url, squat, signer=Signer(
        integration=stranger.integration, secret=stranger.secret,
        customer=f"portal:ACC-OTHER-{run}"))
    assert answer.status == 403
    assert answer.body["errors"][0]["code"] == "ticket_not_yours"
    await _audited(e2e_db, ours, "ticket_not_yours")
    await asyncio.sleep(2)
    assert 7 not in {e.revision for e in bus.ticket(ours).events}


async def test_an_unsigned_helpdesk_topic_message_is_dead_lettered(
        system: System, bus: BusRecorder, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    from aiokafka import AIOKafkaProducer

    from services.intake.sealing import seal_request

    ticket = f"HD-{estate.run}-unsigned-topic"
    recipient = load_sealing_public(
        Path(system.env["INTERVENTION_KEYS_DIR"]) / "executor-sealing.pub")
    body = json.dumps(seal_request(_diagnostics(estate, ticket), recipient=recipient)).encode()
    producer = AIOKafkaProducer(bootstrap_servers=system.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(physical(HELPDESK_REQUESTS, system.prefix), body,
                                     key=ticket.encode())
    finally:
        await producer.stop()
    await _audited(e2e_db, None, "unsigned")
    await _untouched(bus, e2e_db, ticket)
