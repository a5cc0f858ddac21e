"""Every demo scenario through the whole system, read back from what the system did.

Runs in file order: the scenarios settle once (the ``submitted`` fixture), then each test
looks at one aspect; the engineer acts in chat before the last test searches every sink for
the passwords.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from e2e_system import Submitted, System
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polling import eventually

from devstack.demo import rescue_lab
from devstack.demo.chat import OnCallRoom
from devstack.demo.estate import Estate
from devstack.demo.helpdesk import HttpAnswer
from devstack.demo.operator import VAULT_PRIVATE, intervene
from devstack.demo.progress import BusRecorder
from devstack.demo.scenarios import SCENARIOS
from schemas.events import (
    AuthorizationRejected,
    EngineerAcknowledged,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
    ManualStepRequested,
    TicketRejected,
    TicketSubmitted,
)
from schemas.topics import HELPDESK_REQUESTS, event_topic
from services.executor.vault import MongoCredentialVault, open_deposit
from services.runtime.audit import AuditLog
from services.runtime.keys import load_sealing_keyring
from services.runtime.redaction import Redactor

pytestmark = pytest.mark.integration

SSH_RUNS = ("diagnostics", "disk", "restart", "install", "password")
SERVICES = {"intake", "auth", "executor", "notifier"}
CHAT_EVENTS = ("EngineerAcknowledged", "ManualStepCompleted")


def topic_types(bus: BusRecorder, ticket: str) -> dict[str, int]:
    """How many records each catalogue topic holds for ``ticket``."""
    counts: dict[str, int] = {}
    for record in bus.records:
        if record.key == ticket.encode():
            counts[record.topic] = counts.get(record.topic, 0) + 1
    return counts


# --- each scenario ends where it should -----------------------------------------------------


@pytest.mark.parametrize("key", [s.key for s in SCENARIOS])
async def test_each_scenario_reaches_its_expected_state(submitted: Submitted, bus: BusRecorder,
                                                        key: str) -> None:
    scenario = submitted.scenarios[key]
    ticket = submitted.ticket(key)
    progress = bus.ticket(ticket)
    assert ticket not in submitted.stalled, (
        f"{ticket} stalled at '{progress.label()}' after "
        f"{[e.event_type for e in progress.events]}")
    assert scenario.met(progress.phase, progress.outcome), (
        f"{ticket}: expected {scenario.expectation_text()}, got {progress.label()}")


async def test_http_door_answers_202_and_helpdesk_door_publishes(submitted: Submitted,
                                                                 system: System) -> None:
    for key, scenario in submitted.scenarios.items():
        answer = submitted.answers[key]
        if scenario.door == "http":
            assert isinstance(answer, HttpAnswer)
            assert answer.status == 202, answer.body
            assert answer.body["ticket_id"] == submitted.ticket(key)
        else:
            assert answer == f"{system.prefix}{HELPDESK_REQUESTS}"


# --- the events on each topic ----------------------------------------------------------------


async def test_automated_runs_publish_one_event_per_step_of_the_procedure(
        submitted: Submitted, bus: BusRecorder) -> None:
    for key in SSH_RUNS:
        ticket = submitted.ticket(key)
        counts = topic_types(bus, ticket)
        assert HELPDESK_REQUESTS not in counts
        for event_type in ("TicketSubmitted", "AuthorizationVerified", "InterventionStarted",
                           "InterventionCompleted"):
            assert counts.get(event_topic(event_type)) == 1, (ticket, event_type, counts)
        for absent in ("TicketRejected", "AuthorizationRejected", "ManualStepRequested",
                       "ClarificationRequested"):
            assert event_topic(absent) not in counts, (ticket, absent, counts)
        started = bus.ticket(ticket).of(InterventionStarted)[0]
        assert (started.access_method, started.mode) == ("ssh", "automated")


async def test_failing_disk_is_escalated_as_hardware(submitted: Submitted,
                                                     bus: BusRecorder) -> None:
    progress = bus.ticket(submitted.ticket("disk"))
    escalations = progress.of(HardwareEscalated)
    assert escalations, [e.event_type for e in progress.events]
    disk = [e for e in escalations if e.component == "disk" and e.severity == "critical"]
    assert disk
    assert disk[0].device == "sda"
    assert any("medium error" in text.lower() or "smart" in text.lower()
               for e in disk for text in e.evidence)
    completed = progress.of(InterventionCompleted)[0]
    assert completed.outcome == "partially_resolved"
    assert "Hardware fault" in (completed.reason or "")
    # The healthy server's diagnostics found nothing of the simulated kind.
    healthy = bus.ticket(submitted.ticket("diagnostics"))
    assert not [e for e in healthy.of(HardwareEscalated) if e.device == "sda"]


async def test_lock_out_is_repaired_in_rescue_because_ssh_times_out(
        submitted: Submitted, bus: BusRecorder, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    ticket = submitted.ticket("lockout")
    progress = bus.ticket(ticket)
    started = progress.of(InterventionStarted)
    assert started, progress.label()
    # SSH timed out, so the provider (the estate's API stand-in) booted edge-01 into rescue.
    assert "not reachable" in started[0].reason
    assert (started[0].access_method, started[0].mode, started[0].runbook) == (
        "rescue", "automated", "rescue.network_recovery")
    assert started[0].timeline == "complex"
    assert not progress.of(ManualStepRequested)
    [completed] = progress.of(InterventionCompleted)
    assert (completed.outcome, completed.access_method) == ("resolved", "rescue"), (
        completed.reason, estate.lab.console()[-1500:])
    done = {a.step: a.result for a in completed.actions}
    assert done["Boot the server into the provider's rescue system"] == "changed"
    assert done["Accept SSH (port 22) first in the chains that could drop it"] == "changed"
    assert done["Boot the server back from its own disk"] == "changed"
    assert done["Verify SSH access to the server from outside"] == "ok"
    assert any("etc/nftables.conf" in b.location for b in completed.backups)
    # The customer hears that a longer (complex) timeline applies, and how it ended.
    assert {"intervention_started", "completion"} <= {u.kind for u in progress.updates}

    # The executor pinned the host key it read from the server's disk in the rescue system...
    records = await AuditLog(e2e_db, redactor=Redactor()).records(ticket)
    [pinned] = [r for r in records if r.kind == "host_key_pinned"]
    server = estate.server("locked_out")
    assert pinned.data["service_id"] == server.service_id
    assert pinned.data["key"] == server.host_key_line  # the key the disk was made with
    # ...and SSH from outside gets through the repaired firewall to a server that proves it
    # holds that key; the customer's admin login works.
    known = asyncssh.import_known_hosts(f"{server.host} {pinned.data['key']}\n")
    async with asyncssh.connect(server.host, port=server.port, username=estate.admin.name,
                                password=estate.admin.password, known_hosts=known,
                                client_keys=None, connect_timeout=5) as conn:
        result = await conn.run("id -un", check=True)
    assert str(result.stdout).strip() == estate.admin.name
    # The customer's own rules stay, their SSH drop included: SSH is accepted before it.
    ruleset = rescue_lab.run("ip", "netns", "exec", estate.lab.netns, "nft", "list",
                             "ruleset").stdout
    assert 'tcp dport 22 drop comment "customer: close ssh"' in ruleset


async def test_paid_only_request_is_explained_and_never_executed(submitted: Submitted,
                                                                 bus: BusRecorder) -> None:
    ticket = submitted.ticket("paid")
    counts = topic_types(bus, ticket)
    assert counts.get(HELPDESK_REQUESTS) == 1
    submitted_event = bus.ticket(ticket).of(TicketSubmitted)[0]
    assert submitted_event.scope == "not_included"
    assert "scope_not_included" in bus.ticket(ticket).of(AuthorizationRejected)[0].reasons
    for absent in ("AuthorizationVerified", "InterventionStarted", "InterventionCompleted"):
        assert event_topic(absent) not in counts, (absent, counts)
    kinds = [u.kind for u in bus.ticket(ticket).updates]
    assert "scope_not_included" in kinds


async def test_request_without_written_authorization_is_rejected_by_intake(
        submitted: Submitted, bus: BusRecorder) -> None:
    ticket = submitted.ticket("noauth")
    counts = topic_types(bus, ticket)
    assert counts.get(HELPDESK_REQUESTS) == 1
    rejected = bus.ticket(ticket).of(TicketRejected)
    assert len(rejected) == 1
    fields = {e.field for e in rejected[0].errors}
    assert any(f.startswith("authorization.") for f in fields), fields
    assert event_topic("TicketSubmitted") not in counts
    assert [u.kind for u in bus.ticket(ticket).updates] == ["rejection"]


async def test_nothing_was_dead_lettered(submitted: Submitted, bus: BusRecorder,
                                         estate: Estate) -> None:
    # All but the one message test_dashboard_panels_live.py dead-letters on purpose: a sealed
    # helpdesk request that names no ticket, keyed by this ticket id.
    intentional = f"HD-{estate.run}-metrics-unnamed".encode()
    dead = [(r.topic, r.key, r.headers.get("x-dlq-error-class")) for r in bus.records
            if r.topic.endswith(".dlq") and r.key != intentional]
    assert dead == []
    assert bus.undecodable == 0


# --- what the customer hears -----------------------------------------------------------------


async def test_customer_hears_acknowledgement_start_and_summary(submitted: Submitted,
                                                                bus: BusRecorder) -> None:
    for key in SSH_RUNS:
        progress = bus.ticket(submitted.ticket(key))
        kinds = [u.kind for u in progress.updates]
        assert kinds[0] == "acknowledgement", kinds
        assert {"intervention_started", "completion"} <= set(kinds), (key, kinds)
        for update in progress.updates:
            assert update.message.strip()
    assert "hardware_escalation" in [u.kind for u in bus.ticket(submitted.ticket("disk")
                                                                ).updates]
    italian = bus.ticket(submitted.ticket("install")).updates
    assert {u.language for u in italian} == {"it"}


async def test_password_reset_delivers_the_new_password_to_the_account_only(
        submitted: Submitted, bus: BusRecorder, system: System, estate: Estate,
        e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    progress = bus.ticket(submitted.ticket("password"))
    completed = progress.of(InterventionCompleted)[0]
    assert completed.new_credentials_issued
    password = await _new_password(e2e_db, system, estate)
    assert password != estate.admin.password
    for update in progress.updates:
        assert password not in update.message
    # The customer's account area opens the deposit and the new password really logs in.
    server = estate.server("failing_disk")
    pinned = asyncssh.import_known_hosts(
        f"[{server.host}]:{server.port} {server.host_key_line}\n")
    async with asyncssh.connect(
            server.host, port=server.port, username=estate.reset_account.name,
            password=password, known_hosts=pinned, client_keys=None) as conn:
        result = await conn.run("id -un", check=True)
    assert str(result.stdout).strip() == estate.reset_account.name


async def _new_password(db: AsyncDatabase[dict[str, Any]], system: System,
                        estate: Estate) -> str:
    keyring = load_sealing_keyring(system.workdir / "customer-vault" / VAULT_PRIVATE)
    deposits = [d async for d in db[MongoCredentialVault.DEPOSITS].find({})
                if d.get("account_id") == estate.account_id and d.get("status") == "active"]
    assert len(deposits) == 1, deposits
    return open_deposit(deposits[0], next(iter(keyring.values())))


async def test_service_restart_and_install_really_happened(estate: Estate,
                                                           submitted: Submitted) -> None:
    assert estate.service.starts() >= 2  # installed, then restarted by the executor
    assert estate.service.pid() is not None
    package = estate.repo.packages[0]
    assert estate.repo.installed(package)
    assert estate.repo.postinst_runs(package) == 1
    assert not estate.repo.installed(estate.repo.packages[1])  # only what was asked


# --- the engineer in chat ----------------------------------------------------------------------


async def test_engineer_acknowledges_the_hardware_page_from_matrix(
        submitted: Submitted, bus: BusRecorder, on_call: OnCallRoom) -> None:
    ticket = submitted.ticket("disk")
    await eventually(lambda: on_call.hardware_page_posted(ticket), 30, interval=0.3,
                     what=f"the hardware page of {ticket} in the room")
    await asyncio.to_thread(on_call.say, f"ack {ticket}")
    progress = bus.ticket(ticket)
    await eventually(lambda: bool(progress.of(EngineerAcknowledged)), 30, interval=0.3,
                     what=f"EngineerAcknowledged for {ticket}")
    ack = progress.of(EngineerAcknowledged)[0]
    assert (ack.engineer_id, ack.channel) == (on_call.engineer_id, "matrix")
    answer = f"hardware escalation on {ticket} acknowledged: it is yours"
    await eventually(lambda: any(answer in t for t in on_call.bot_texts()), 30, interval=0.3,
                     what="the bot's answer to the ack in the room")


# --- audit, status and trace ------------------------------------------------------------------


async def test_audit_chain_verifies_for_every_ticket(submitted: Submitted,
                                                     system: System) -> None:
    done = await asyncio.to_thread(intervene, ["audit", "verify"], system.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit chain OK" in done.stdout
    one = await asyncio.to_thread(intervene, ["audit", "verify", submitted.ticket("password")],
                                  system.env)
    assert one.returncode == 0, one.stdout
    assert "1 ticket(s)" in one.stdout


async def test_status_prints_the_ticket_timeline(submitted: Submitted, system: System) -> None:
    ticket = submitted.ticket("restart")
    done = await asyncio.to_thread(intervene, ["status", ticket], system.env)
    assert done.returncode == 0, done.stdout + done.stderr
    for event_type in ("TicketSubmitted", "AuthorizationVerified", "InterventionStarted",
                       "InterventionCompleted", "TicketUpdated"):
        assert event_type in done.stdout
    assert "completed (resolved)" in done.stdout
    missing = await asyncio.to_thread(intervene, ["status", "HD-nobody-knows"], system.env)
    assert missing.returncode == 1


async def test_one_trace_per_ticket_across_all_four_services(
        submitted: Submitted, system: System, e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    audit = AuditLog(e2e_db, redactor=Redactor())
    for key in submitted.scenarios:
        ticket = submitted.ticket(key)
        records = await audit.records(ticket)
        # What engineers do in chat starts from their message, not from the ticket's
        # request: see test_chat_acknowledgement_continues_the_ticket_trace.
        pipeline = [r for r in records if r.kind == "event"
                    and r.data.get("event_type") not in CHAT_EVENTS]
        traces = {r.data.get("trace_id") for r in pipeline}
        untraced = [(r.actor, r.data.get("event_type")) for r in pipeline
                    if not r.data.get("trace_id")]
        assert not untraced, (ticket, untraced)
        assert len(traces) == 1, (ticket, traces)
        trace_id = traces.pop()
        want = SERVICES if key in (*SSH_RUNS, "lockout") else (
            {"intake", "auth", "notifier"} if key == "paid" else {"intake", "notifier"})
        spans = await _spans_of(system.span_file, trace_id, want)
        assert {s["service"] for s in spans} == want, (ticket, {s["service"] for s in spans})
        if key in SSH_RUNS:
            names = {s["name"] for s in spans}
            assert "ssh connect" in names
            assert any(n.startswith("runbook step ") for n in names), names
        # One tree: every span's parent is in the same trace, except the one root.
        ids = {s["span_id"] for s in spans}
        roots = [s for s in spans if s["parent_id"] not in ids]
        assert len(roots) == 1, (ticket, [r["name"] for r in roots])


async def test_chat_acknowledgement_continues_the_ticket_trace(
        submitted: Submitted, e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    records = await AuditLog(e2e_db, redactor=Redactor()).records(submitted.ticket("disk"))
    acks = [r for r in records if r.data.get("event_type") == "EngineerAcknowledged"]
    assert acks
    traces = {r.data.get("trace_id") for r in records if r.kind == "event"}
    assert None not in traces
    assert len(traces) == 1, traces


async def _spans_of(path: Path, trace_id: str, services: set[str]) -> list[dict[str, Any]]:
    # Services export spans in batches every few seconds: wait for all four to have.
    deadline = time.monotonic() + 20
    while True:
        text = await asyncio.to_thread(path.read_text) if path.exists() else ""  # noqa: ASYNC240
        spans = [json.loads(line) for line in text.splitlines() if trace_id in line]
        spans = [s for s in spans if s["trace_id"] == trace_id]
        if services <= {s["service"] for s in spans} or time.monotonic() > deadline:
            return spans
        await asyncio.sleep(0.5)


async def test_trace_command_draws_the_tree(submitted: Submitted, system: System) -> None:
    done = await asyncio.to_thread(
        intervene, ["trace", submitted.ticket("diagnostics"), "--spans",
                    str(system.span_file)], system.env)
    assert done.returncode == 0, done.stderr
    assert "1 trace " in done.stdout
    for service in SERVICES:
        assert f"{service}: " in done.stdout
    assert "runbook step diagnostics." in done.stdout


# --- last: no password anywhere ------------------------------------------------------------------


async def test_no_password_reaches_any_sink(submitted: Submitted, bus: BusRecorder,
                                            system: System, estate: Estate,
                                            on_call: OnCallRoom,
                                            e2e_db: AsyncDatabase[dict[str, Any]]) -> None:
    # The one-time root passwords of edge-01's rescue system, as the provider stand-in
    # recorded them: the lock-out's repair booted it into rescue at least once.
    rescue = estate.rescue_passwords()
    assert rescue, "the provider stand-in recorded no rescue password"
    canaries = [estate.admin.password, await _new_password(e2e_db, system, estate),
                estate.rescue_api.token,  # and the provider API's token
                *rescue]
    needles = [form for c in canaries for form in (c.encode(), base64.b64encode(c.encode()))]

    def clean(where: str, blob: bytes) -> None:
        for needle in needles:
            assert needle not in blob, f"a password leaked into {where}"

    await asyncio.sleep(2)  # let the last updates, spans and log lines land
    assert len(bus.records) > 50
    for record in bus.records:  # every topic of the run's prefix, DLQs included
        clean(f"topic {record.topic}", record.value + (record.key or b"")
              + json.dumps(record.headers).encode())
    for name in await e2e_db.list_collection_names():
        async for doc in e2e_db[name].find({}):
            clean(f"collection {name}", json.dumps(doc, default=str).encode())
    for log in system.log_dir.glob("*.log"):
        clean(f"log {log.name}", log.read_bytes())
    clean("span file", system.span_file.read_bytes())
    room = await asyncio.to_thread(on_call.messages)
    assert room, "the on-call room has the notifier's pages"
    clean("chat room", json.dumps(room).encode())
    # And the raw helpdesk messages carried only sealed credentials.
    for record in bus.on(HELPDESK_REQUESTS):
        assert "sealed" in json.loads(record.value)["credentials"]
