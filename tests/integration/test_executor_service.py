"""The executor service end to end: Kafka in, SSH to a real sshd, FerretDB, Kafka out.

One executor runs in-process on its own topic prefix and database. Tests publish signed
AuthorizationVerified events as auth does and read everything the executor publishes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
import executor_targets as targets
import span_conformance as conformance
from executor_verdicts import resolved_server, verdict

from schemas.events import (
    AuthorizationVerified,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
    ManualStepRequested,
)
from schemas.registry import encode, topic_for
from schemas.topics import physical
from schemas.values import Signature
from services.executor.app import ExecutorService, build
from services.executor.claims import ClaimStore
from services.executor.settings import ExecutorSettings
from services.executor.vault import open_deposit
from services.runtime.audit import verify_chain
from services.runtime.crypto import (
    PrivateSealingKey,
    PublicSealingKey,
    SigningKey,
    sign,
)
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import (
    OPERATOR_SIGNING_PRIVATE_FILE,
    init_keys,
    load_sealing_public,
    load_signing_key,
)
from services.runtime.store_metrics import own_round_trips
from services.runtime.telemetry import TICKET_ID_ATTRIBUTE, setup_telemetry

pytestmark = pytest.mark.integration

VERDICTS = topic_for(AuthorizationVerified)
MDSTAT_DEGRADED = (Path(__file__).resolve().parents[1] / "fixtures" / "hardware"
                   / "mdstat_degraded.txt").read_text()


class Capture(logging.Handler):
    """Every log record as emitted by the code, before any redacting filter."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.exc_text or ''} {vars(record)}")


@dataclass
class Rig:
    service: ExecutorService
    bus: targets.EventBus
    db: AsyncDatabase[dict[str, Any]]
    prefix: str
    signing: SigningKey
    sealing: PublicSealingKey
    customer: PrivateSealingKey
    account: str
    spans: InMemorySpanExporter
    logs: Capture
    ssh: Any

    def verdict(self, *, username: str | None = None, password: str | None = None,
                server: dict[str, Any] | None = None, signing: SigningKey | None = None,
                **kw: Any) -> AuthorizationVerified:
        # A plain sshd target: no provider rescue, so its key may be trusted on first use
        # (a rescue-capable server needs its key in the inventory: access.first_use_allowed).
        fields = {"ip": "127.0.0.1", "ssh_port": self.ssh.port, "service_id": "SRV-E1",
                  "rescue": False}
        fields.update(server or {})
        return verdict(signing_key=signing or self.signing, sealing_key=self.sealing,
                       username=username or self.ssh.admin.name,
                       password=password or self.ssh.admin.password,
                       server=resolved_server(**fields), account_id=self.account, **kw)

    async def publish(self, event: AuthorizationVerified | bytes, key: str | None = None) -> None:
        raw = event if isinstance(event, bytes) else encode(event)
        ticket = key or (event.ticket_id if isinstance(event, AuthorizationVerified) else "")
        await self.service.runtime.broker.publish(
            raw, topic=physical(VERDICTS, self.prefix), key=ticket.encode())

    async def audit(self, ticket_id: str) -> list[Any]:
        return await self.service.runtime.audit.records(ticket_id)

    async def refusals(self, ticket_id: str, n: int = 1, timeout: float = 30) -> list[str]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            codes = [r.data["code"] for r in await self.audit(ticket_id)
                     if r.kind == "verdict_refused"]
            if len(codes) >= n or asyncio.get_running_loop().time() > deadline:
                return codes
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def rig(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
              mongo_client: Any, ssh_targets: Any,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    run = uuid.uuid4().hex[:6]
    prefix = f"{topic_prefix}exec{run}."
    await ensure_topics(kafka_bootstrap, prefix=prefix)
    keys = init_keys(tmp_path_factory.mktemp("keys"))
    settings = ExecutorSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=f"{database_name}_exec{run}",
        intervention_keys_dir=str(keys.directory), handler_retry_backoff_s=0.05,
        executor_service_settle_s=0.3, executor_lease_s=15, executor_rescan_s=1,
        executor_concurrency=4)
    spans = InMemorySpanExporter()
    capture = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    for noisy in ("aiokafka", "faststream", "pymongo"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    service = build(settings, telemetry=setup_telemetry("executor", span_exporter=spans))
    customer = PrivateSealingKey.generate(key_id_prefix="cust")
    account = f"ACC-{run}"
    # An operator registered the account's key before any of these tickets was verified.
    await service.vault.register_key(
        account, customer.public, operator="test-operator",
        operator_key=load_signing_key(keys.directory / OPERATOR_SIGNING_PRIVATE_FILE),
        at=datetime.now(UTC) - timedelta(days=1))
    bus = targets.EventBus(kafka_bootstrap, prefix)
    await bus.start()
    await service.start()
    try:
        yield Rig(service=service, bus=bus, db=service.runtime.db, prefix=prefix,
                  signing=load_signing_key(keys.signing_private),
                  sealing=load_sealing_public(keys.sealing_public), customer=customer,
                  account=account, spans=spans, logs=capture, ssh=ssh_targets)
    finally:
        await service.stop()
        await bus.stop()
        root.removeHandler(capture)
        root.setLevel(old_level)
        await mongo_client.drop_database(settings.mongodb_database)


async def test_a_verdict_runs_diagnostics_once_and_reports_in_one_trace(rig: Rig) -> None:
    event = rig.verdict(category="diagnostics")
    logins_before = rig.ssh.sshd.log().count("Accepted password for ")
    await rig.publish(event)
    [completed] = await rig.bus.wait(event.ticket_id, "InterventionCompleted")
    # The probe's connection is the one the runbook ran over: one login for the ticket.
    assert rig.ssh.sshd.log().count("Accepted password for ") - logins_before == 1
    [started] = rig.bus.of(event.ticket_id, "InterventionStarted")
    assert isinstance(started, InterventionStarted)
    assert (started.access_method, started.mode, started.runbook) == ("ssh", "automated",
                                                                       "diagnostics")
    assert "login with the customer's credentials works" in started.reason
    assert isinstance(completed, InterventionCompleted)
    assert completed.outcome == "resolved"
    assert completed.causation_id == event.event_id
    assert [a.step for a in completed.actions][:3] == [
        "Detect available diagnostic tools", "Identify the operating system",
        "Check load and uptime"]
    assert "Check that you can log in" in completed.recommendations[0]
    assert not completed.new_credentials_issued

    records = await rig.audit(event.ticket_id)
    kinds = [r.kind for r in records]
    assert kinds[0] == "claim"
    host_key = next(r for r in records if r.kind == "host_key")
    assert host_key.data["trusted_on_first_use"] is True  # TOFU, recorded
    assert host_key.data["fingerprint"].startswith("SHA256:")
    commands = [r for r in records if r.kind == "command"]
    assert commands
    assert all({"command", "exit_status", "duration_ms", "stdout"} <= set(r.data)
               for r in commands)
    assert all(r.actor.startswith("executor:") for r in commands)
    report = await verify_chain(rig.db, event.ticket_id)
    assert report.ok

    await asyncio.sleep(0.3)
    step_spans = [s for s in rig.spans.get_finished_spans() if s.name.startswith("runbook step")
                  and s.attributes and s.attributes.get("runbook") == "diagnostics"]
    intervention = [s for s in rig.spans.get_finished_spans()
                    if s.name == "executor intervention" and s.attributes
                    and s.attributes.get(TICKET_ID_ATTRIBUTE) == event.ticket_id]
    assert intervention
    trace_id = intervention[0].context.trace_id
    mine = [s for s in step_spans if s.context.trace_id == trace_id]
    assert len(mine) == len(completed.actions)
    assert all(s.parent is not None for s in mine)
    consume = [s for s in rig.spans.get_finished_spans()
               if s.context.trace_id == trace_id and "process" in s.name]
    assert consume, "the Kafka consume span and the intervention share one trace"
    # Every span of the ticket's run (Kafka in and out, the claim, SSH, each step) follows
    # the attribute list (tests/span_conformance.py).
    ticket_spans = [conformance.from_sdk(s) for s in rig.spans.get_finished_spans()
                    if s.context.trace_id == trace_id]
    assert {s["kind"] for s in ticket_spans} >= {"CONSUMER", "PRODUCER", "CLIENT"}
    assert conformance.problems(ticket_spans, event.ticket_id) == []
    assert [s["name"] for s in ticket_spans].count("ssh connect") == 1
    # Each step of the procedure is a span of its own under the run's: a trace shows where
    # the run's time went, from the verdict check to the closed claim.
    intervention_id = intervention[0].context.span_id
    steps = [s.name for s in rig.spans.get_finished_spans()
             if s.context.trace_id == trace_id and s.name.startswith("procedure ")
             and s.parent is not None and s.parent.span_id == intervention_id]
    assert steps[0] == "procedure CheckVerdict"
    assert {"procedure ProbeSsh", "procedure RecordDecision", "procedure Announce",
            "procedure RunRunbook", "procedure StageCompletion"} <= set(steps)
    assert steps[-1] == "procedure CloseClaim"


async def test_forged_altered_unsigned_and_stale_verdicts_are_refused_and_audited(
        rig: Rig) -> None:
    forged = rig.verdict(signing=SigningKey.generate())
    good = rig.verdict()
    altered_data = json.loads(encode(good))
    altered_data["server"]["ip"] = "127.0.0.2"
    altered_data["ticket"]["parameters"] = {"unit": "ssh"}
    imposter = rig.verdict()
    borrowed = imposter.with_signature(Signature(
        key_id=rig.signing.key_id,
        value=sign(imposter.signed_bytes(), SigningKey.generate()).value))
    unsigned = rig.verdict(signing=None)
    unsigned = unsigned.model_copy(update={"signature": None})
    stale = rig.verdict(at=datetime.now(UTC) - timedelta(days=3))

    await rig.publish(forged)
    await rig.publish(json.dumps(altered_data).encode(), key=good.ticket_id)
    await rig.publish(borrowed)
    await rig.publish(encode(unsigned), key=unsigned.ticket_id)
    await rig.publish(stale)

    expected = {forged.ticket_id: "unknown_key", good.ticket_id: "bad_signature",
                borrowed.ticket_id: "bad_signature", unsigned.ticket_id: "unsigned",
                stale.ticket_id: "stale"}
    for ticket_id, code in expected.items():
        assert await rig.refusals(ticket_id) == [code], ticket_id
    await asyncio.sleep(1)
    for ticket_id in expected:
        # Nothing started, nothing reported: only the verdict the test published is there.
        assert [e.producer for e in rig.bus.of(ticket_id)] == ["auth"]  # type: ignore[attr-defined]
        assert await rig.service.claims.get(f"{ticket_id}:1") is None


async def test_replays_second_verdicts_and_older_revisions_are_refused(rig: Rig) -> None:
    first = rig.verdict(revision=2, category="diagnostics")
    await rig.publish(first)
    await rig.bus.wait(first.ticket_id, "InterventionCompleted")
    # The very same message again (a replay): dropped as a duplicate, and audited.
    await rig.publish(first)
    # A second, validly signed verdict for the same revision (e.g. auth re-ran).
    again = rig.verdict(revision=2, ticket_id=first.ticket_id, category="diagnostics")
    await rig.publish(again)
    # A verdict for an older revision after revision 2 was claimed.
    older = rig.verdict(revision=1, ticket_id=first.ticket_id, category="diagnostics")
    await rig.publish(older)
    codes = await rig.refusals(first.ticket_id, n=3)
    assert sorted(codes) == ["replayed", "revision_already_claimed", "revision_stale"]
    await asyncio.sleep(1)
    assert len(rig.bus.of(first.ticket_id, "InterventionStarted")) == 1
    assert len(rig.bus.of(first.ticket_id, "InterventionCompleted")) == 1
    assert (await verify_chain(rig.db, first.ticket_id)).ok


async def test_password_reset_end_to_end_and_no_secret_in_any_sink(rig: Rig) -> None:
    canary = rig.ssh.admin.password  # the customer's password, as given on the ticket
    user = rig.ssh.target
    old = user.password
    event = rig.verdict(category="root_password_reset", parameters={"account": user.name})
    await rig.publish(event)
    [completed] = await rig.bus.wait(event.ticket_id, "InterventionCompleted")
    assert isinstance(completed, InterventionCompleted)
    assert completed.outcome == "resolved", completed.reason
    assert completed.new_credentials_issued
    assert any("account area" in r for r in completed.recommendations)
    [deposit] = await rig.service.vault.active(rig.account, "SRV-E1", user.name)
    new = open_deposit(deposit, rig.customer)
    user.password = new
    assert new != old

    # The new password works for a fresh login; the old one no longer does.
    from services.executor.ssh import HostKeyInfo, HostKeyPins, SshConnector, SshTarget

    connector = SshConnector(pins=HostKeyPins(rig.db), connect_timeout_s=10,
                             command_timeout_s=30, per_host_connects=2, global_connects=4)
    where = SshTarget(host="127.0.0.1", port=rig.ssh.port, service_id="SRV-E1")
    key = HostKeyInfo(source="pinned", fingerprint="-", key_line=rig.ssh.sshd.host_key_line)
    assert (await connector.fresh_login(where, key, user.name, new)).exit_status == 0
    assert (await connector.fresh_login(where, key, user.name, old)).exit_status == 1

    await asyncio.sleep(1)  # let every last audit record and span land
    await assert_absent_everywhere(rig, [canary, new])


async def assert_absent_everywhere(rig: Rig, secrets: list[str]) -> None:
    """Every topic under the prefix (DLQs too), every collection, every log line, every span."""
    from services.runtime.redaction import Redactor

    spellings = Redactor(min_length=4)
    for secret in secrets:
        spellings.add(secret)

    def clean(text: str) -> bool:
        return spellings.redact_text(text) == text

    assert rig.bus.records, "the bus collector saw nothing"
    for record in rig.bus.records:
        assert clean(record.value.decode("utf-8", "replace")), record.topic
        assert clean(json.dumps(record.headers)), record.topic
    for name in await rig.db.list_collection_names():
        async for doc in rig.db[name].find({}):
            assert clean(json.dumps(doc, default=str)), name
    assert rig.logs.lines
    for line in rig.logs.lines:
        assert clean(line), line[:200]
    for span in rig.spans.get_finished_spans():
        exported = repr((span.name, dict(span.attributes or {}), span.status.description,
                         [(e.name, dict(e.attributes or {})) for e in span.events],
                         [dict(link.attributes or {}) for link in span.links]))
        assert clean(exported), span.name


async def test_wrong_host_key_refuses_the_intervention(rig: Rig) -> None:
    event = rig.verdict(server={"service_id": "SRV-E2",
                                "ssh_host_key": targets.other_host_key()})
    await rig.publish(event)
    [completed] = await rig.bus.wait(event.ticket_id, "InterventionCompleted")
    assert isinstance(completed, InterventionCompleted)
    assert completed.outcome == "refused"
    assert "different SSH host key" in (completed.reason or "")
    assert rig.bus.of(event.ticket_id, "InterventionStarted") == []
    mismatch = [r for r in await rig.audit(event.ticket_id) if r.kind == "host_key_mismatch"]
    assert mismatch
    assert mismatch[0].data["refused"] is True
    assert mismatch[0].data["pinned_by"] == "inventory"


async def test_rescue_capable_server_without_a_pinned_key_is_never_logged_into(
        rig: Rig) -> None:
    # Its real key could be read from its disk through the provider's rescue system, so a
    # key merely offered over the network is not trusted with the customer's password: an
    # engineer confirms it first (issue 15: no trust on first use for rescue-capable servers).
    event = rig.verdict(server={"service_id": "SRV-E5", "rescue": True})
    await rig.publish(event)
    [started] = await rig.bus.wait(event.ticket_id, "InterventionStarted")
    assert isinstance(started, InterventionStarted)
    assert started.mode == "engineer"
    assert "no SSH host key pinned" in started.reason
    records = await rig.audit(event.ticket_id)
    assert [r for r in records if r.kind in ("host_key", "command")] == []
    failed = [r for r in records if r.kind == "ssh_connect_failed"]
    assert failed
    assert failed[0].data["outcome"] == "host_key_unpinned"


async def test_unreachable_servers_are_handed_to_a_console_engineer(rig: Rig) -> None:
    # A service restart needs the running system: rescue mode cannot do it, the console can
    # (rescue repairs themselves: tests/integration/test_rescue_repairs.py).
    closed = targets.free_port()
    kvm = rig.verdict(category="service_restart", parameters={"unit": "nginx"},
                      server={"ssh_port": closed, "service_id": "SRV-E3", "rescue": True})
    console = rig.verdict(category="diagnostics",
                          server={"ssh_port": closed, "service_id": "SRV-E4", "type": "vps",
                                  "rescue": False, "ipkvm": False})
    await rig.publish(kvm)
    await rig.publish(console)
    [started] = await rig.bus.wait(kvm.ticket_id, "InterventionStarted")
    assert isinstance(started, InterventionStarted)
    assert (started.access_method, started.mode, started.runbook, started.timeline) == (
        "ipkvm", "engineer", "console.service_restart", "complex")
    [manual] = await rig.bus.wait(console.ticket_id, "ManualStepRequested")
    assert isinstance(manual, ManualStepRequested)
    assert manual.method == "vnc"
    assert any("VNC console" in line for line in manual.instructions)
    assert manual.deadline is not None
    [vnc_started] = rig.bus.of(console.ticket_id, "InterventionStarted")
    assert vnc_started.mode == "engineer"  # type: ignore[attr-defined]
    await asyncio.sleep(0.5)
    for event in (kvm, console):
        # Parked until an engineer reports or the deadline passes (test_rescue_manual_steps).
        assert rig.bus.of(event.ticket_id, "InterventionCompleted") == []
        claim = await rig.service.claims.get(f"{event.ticket_id}:1")
        assert claim is not None
        assert claim.status == "handed_over"
    handover = await rig.db["executor_handovers"].find_one({"_id": f"{kvm.ticket_id}:1"})
    assert handover is not None
    assert handover["method"] == "ipkvm"


async def test_a_finished_claim_is_never_run_again_and_a_republish_is_identical(
        rig: Rig) -> None:
    event = rig.verdict(category="diagnostics")
    await rig.publish(event)
    await rig.bus.wait(event.ticket_id, "InterventionCompleted")
    claim_id = f"{event.ticket_id}:1"
    await closed(rig, claim_id)  # published first, closed a moment later
    await rig.service.interventions.run(claim_id)  # a stray offer of a finished claim
    # A crash after the completion was published but before the claim was closed: the
    # resumed run republishes the stored completion, never a recomputed one. (The close
    # never happened, so neither did its signed record: a claim re-opened with that record
    # in place is refused, see test_insider_claims.)
    stored = await rig.db[ClaimStore.ARCHIVE].find_one({"_id": claim_id})
    assert stored is not None
    stored.update({"status": "open", "lease_until": datetime.now(UTC) - timedelta(seconds=1)})
    stored["outbox"]["z_completed"]["published"] = False
    stored.get("seals", {}).pop("closed", None)
    await rig.db[ClaimStore.CLAIMS].insert_one(stored)
    await rig.service.interventions.run(claim_id)
    values: list[bytes] = []
    for _ in range(50):
        values = rig.bus.values(event.ticket_id, "InterventionCompleted")
        if len(values) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(values) == 2
    assert values[0] == values[1]  # byte-identical: same event id, same content
    await closed(rig, claim_id)
    assert len(rig.bus.of(event.ticket_id, "InterventionStarted")) == 1
    assert len({e.event_id for e in rig.bus.of(event.ticket_id)  # type: ignore[attr-defined]
                if e.event_type == "InterventionCompleted"}) == 1  # type: ignore[attr-defined]
    claim = await rig.service.claims.get(claim_id)
    assert claim is not None
    assert claim.status == "finished"
    assert claim.attempt == 2


async def closed(rig: Rig, claim_id: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        claim = await rig.service.claims.get(claim_id)
        if claim is not None and claim.status == "finished":
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"claim {claim_id} not closed")
        await asyncio.sleep(0.05)


async def test_hardware_evidence_is_escalated_with_the_outcome(rig: Rig) -> None:
    # Hardware faults cannot be staged on this machine's real disks; the escalation path
    # from journal facts to events is what this checks (parsers: unit tests on samples).
    from services.executor import hardware
    from services.executor.runbooks.engine import ActionRecord, RunResult, StepOutcome

    facts = {"evidence_raid": [hardware.evidence_to_dict(e) for e in hardware.parse_mdstat(
        MDSTAT_DEGRADED)]}
    event = rig.verdict(category="diagnostics")
    # Run by hand as Interventions.run would: marked running in this process, or the
    # periodic scan re-acquires the open claim (a newer attempt fences this one).
    rig.service.interventions._running.add(f"{event.ticket_id}:{event.revision}")
    claim, _ = await rig.service.claims.create(
        event, verdict_json=encode(event).decode(), trace_carrier={},
        owner=rig.service.owner, lease_s=30)
    claim = await rig.service.claims.acquire(claim.id, rig.service.owner, lease_s=30)
    assert claim is not None
    run = RunResult(facts=facts, steps=(StepOutcome(
        index=0, name="raid", result="ok", reason=None, facts=facts,
        action=ActionRecord(step="Check software RAID", command="cat /proc/mdstat",
                            exit_status=0, duration_ms=3, result="ok")),))
    from services.executor.access import AccessDecision

    decision = AccessDecision(method="ssh", mode="automated", disposition="run",
                              runbook="diagnostics", reason="test")
    await rig.service.interventions._finish_run(claim, event, decision, run, dry_run=False)
    escalated = await rig.bus.wait(event.ticket_id, "HardwareEscalated", n=2)
    assert all(isinstance(e, HardwareEscalated) for e in escalated)
    assert {(e.component, e.device, e.severity) for e in escalated} == {  # type: ignore[attr-defined]
        ("raid", "md1", "critical"), ("raid", "md0", "critical")}
    [completed] = await rig.bus.wait(event.ticket_id, "InterventionCompleted")
    assert completed.outcome == "partially_resolved"  # type: ignore[attr-defined]
    assert any("hardware fault" in r.lower()
               for r in completed.recommendations)  # type: ignore[attr-defined]


async def test_a_verdict_flagged_for_review_goes_to_an_engineer_first(rig: Rig) -> None:
    event = rig.verdict(category="service_restart", parameters={"unit": "nginx"},
                        review_required=True, review_reason="4 interventions in 30 days")
    await rig.publish(event)
    [manual] = await rig.bus.wait(event.ticket_id, "ManualStepRequested")
    assert isinstance(manual, ManualStepRequested)
    assert manual.step_id == "r1-review"
    assert "4 interventions in 30 days" in manual.instructions[0]
    [started] = rig.bus.of(event.ticket_id, "InterventionStarted")
    assert started.mode == "engineer"  # type: ignore[attr-defined]
    assert not [r for r in await rig.audit(event.ticket_id) if r.kind == "command"]


async def test_an_interrupted_step_that_cannot_be_repeated_goes_to_an_engineer(
        rig: Rig) -> None:
    from dataclasses import asdict, replace

    from services.executor.access import AccessDecision
    from services.executor.app import claim_sealer
    from services.executor.runbooks.engine import ActionRecord, JournalEntry

    service = rig.ssh.service
    event = rig.verdict(category="service_restart", parameters={"unit": service.name})
    # Created under a live-looking owner with a long lease, so the executor's periodic scan
    # cannot take the claim before the journal below is in place (it did on a slow CI run);
    # only then does the owner "die".
    alive = replace(rig.service.owner, id="other-executor", pid=os.getpid())
    claim, _ = await rig.service.claims.create(
        event, verdict_json=encode(event).decode(), trace_carrier={}, owner=alive, lease_s=600)
    dead = replace(rig.service.owner, id="dead-executor", pid=2**22 - 1)

    def done(name: str, **facts: Any) -> dict[str, Any]:
        return JournalEntry(name=name, state="done", result="ok", facts=facts,
                            action=ActionRecord(step=name, command="-", exit_status=0,
                                                duration_ms=1, result="ok")).to_json()

    # As a SysV restart interrupted by a crash leaves it: nobody can tell whether the
    # service was restarted, so the restart must not simply run again.
    # The decision as that executor stored it: signed with the executor's key.
    decision = asdict(AccessDecision(method="ssh", mode="automated", disposition="run",
                                     runbook="service_restart", reason="ssh works"))
    await rig.db["executor_claims"].update_one({"_id": claim.id}, {"$set": {
        "attempt": 1, "decision": decision,
        "seals.decision": claim_sealer(rig.service.settings).seal(claim.id, "decision",
                                                                  decision),
        "steps.000": done("detect", manager="sysv", unit_found=True),
        "steps.001": done("config_check"),
        "steps.002": JournalEntry(name="restart", state="changing",
                                  facts={"running_before": True}).to_json(),
        "owner": dead.to_doc()}})
    pid, starts = service.pid(), service.starts()
    await rig.service.interventions.run(claim.id)  # owner gone on this machine: taken at once
    [manual] = await rig.bus.wait(event.ticket_id, "ManualStepRequested")
    assert isinstance(manual, ManualStepRequested)
    assert manual.step_id == "r1-resume"
    assert manual.method == "ssh"
    assert any(service.name in line for line in manual.instructions)
    assert "cannot be proven safe to repeat" in manual.reason
    assert (service.pid(), service.starts()) == (pid, starts)  # not restarted again
    for _ in range(50):  # the request is published first, the claim parked just after
        stored = await rig.service.claims.get(claim.id)
        if stored is not None and stored.status == "handed_over":
            break
        await asyncio.sleep(0.1)
    assert stored is not None
    assert stored.status == "handed_over"
    await asyncio.sleep(0.5)
    assert rig.bus.of(event.ticket_id, "InterventionCompleted") == []


# --- store round trips: what one ticket costs, and that history is not on its path ------

# Written by others' code on every ticket (the audit log's chain, the consumer's dedupe
# marks) and counted in their own budgets (issue 17).
# Accept, announce (with the access decision), journal and complete, archive: see below.
EXECUTOR_ROUND_TRIPS_PER_TICKET = 9


async def one_ticket_counted(rig: Rig, mongo_client: Any,
                             ) -> tuple[AuthorizationVerified, Counter[tuple[str, str]]]:
    """Run one diagnostics ticket to its archived claim and return the executor's store
    commands meanwhile, by (operation, collection). The periodic scan of open claims is
    paused for it (it is per interval, not per ticket), and the test watches the store
    through its own client, so only the ticket's own commands are counted."""
    worker = rig.service.worker
    scan, worker._scan = worker._scan, None
    archive = mongo_client[rig.db.name][ClaimStore.ARCHIVE]
    try:
        await asyncio.sleep(0.3)  # a scan already under way finishes
        counter = rig.service.runtime.store_round_trips
        before = Counter(counter.totals)
        event = rig.verdict(category="diagnostics")
        await rig.publish(event)
        [completed] = await rig.bus.wait(event.ticket_id, "InterventionCompleted")
        assert completed.outcome == "resolved"  # type: ignore[attr-defined]
        claim_id = f"{event.ticket_id}:1"
        for _ in range(100):
            if await archive.find_one({"_id": claim_id}, {"_id": 1}) is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the deletes after the archive insert
        return event, Counter(counter.totals) - before
    finally:
        worker._scan = scan


async def test_one_ticket_costs_a_handful_of_executor_store_round_trips(
        rig: Rig, mongo_client: Any) -> None:
    _, spent = await one_ticket_counted(rig, mongo_client)
    mine = own_round_trips(spent)
    print("executor round trips for one diagnostics ticket:", sorted(mine.items()))
    # The 15 read-only diagnostics steps cost nothing of their own: a step journalled done
    # goes with the next write, and so does the access decision (with the InterventionStarted
    # that announces it). What is left: claim (ticket record + claim), InterventionStarted
    # staged and confirmed, the journal with the completion staged and confirmed, the claim
    # archived and deleted, and the host key's pin.
    # Lease renewals (an update and a confirming find, then the lease document's delete)
    # come every third of the lease however long the run takes: time, not the ticket.
    renewals = mine.get(("update", ClaimStore.LEASES), 0)
    heartbeat = 2 * renewals + (1 if renewals else 0)
    # A server's host key is pinned on its first ticket only (the first test here).
    first_use = mine.get(("insert", "executor_host_keys"), 0)
    assert sum(mine.values()) - heartbeat - first_use <= EXECUTOR_ROUND_TRIPS_PER_TICKET, mine
    # One confirming find per write followed by an effect outside the store.
    assert mine.get(("find", ClaimStore.LEASES), 0) - renewals <= 2, mine
    assert mine.get(("update", ClaimStore.CLAIMS), 0) <= 2, mine


async def test_finished_claims_leave_the_collections_the_ticket_path_reads(
        rig: Rig, mongo_client: Any) -> None:
    event, spent = await one_ticket_counted(rig, mongo_client)
    claim_id = f"{event.ticket_id}:1"
    db = mongo_client[rig.db.name]
    # Finished: nothing of it left where the next ticket's commands look.
    assert await db[ClaimStore.CLAIMS].find_one({"_id": claim_id}) is None
    assert await db[ClaimStore.LEASES].find_one({"claim_id": claim_id}) is None
    archived = await db[ClaimStore.ARCHIVE].find_one({"_id": claim_id})
    assert archived is not None
    assert archived["status"] == "finished"
    assert archived["outbox"]["z_completed"]["published"] is True
    assert len(archived["steps"]) >= 10  # the whole journal, the deferred entries too
    assert all(step["state"] == "done" for step in archived["steps"].values())
    # The ticket path only ever inserts into the collections that grow with history:
    # the archive, and the ticket records (read only for a follow-up or a duplicate).
    for grows in (ClaimStore.ARCHIVE, ClaimStore.TICKETS):
        assert {op for op, coll in spent if coll == grows} == {"insert"}, spent
    # The finished claim is still found (CLI, duplicates): a second verdict for the
    # revision is refused from the archived claim.
    claim = await rig.service.claims.get(claim_id)
    assert claim is not None
    assert claim.status == "finished"
    await rig.publish(rig.verdict(ticket_id=event.ticket_id, category="diagnostics"))
    assert await rig.refusals(event.ticket_id) == ["revision_already_claimed"]


BURST = 16


async def test_a_burst_waits_in_the_claim_queue_and_every_ticket_runs_once(
        rig: Rig, mongo_client: Any) -> None:
    """More verdicts than workers: the ones no worker is free for wait in the claim queue,
    so ``executor_claims`` (which every run's writes scan) holds only the runs in
    progress, and each ticket still runs exactly once."""
    concurrency = rig.service.settings.executor_concurrency
    events = [rig.verdict(category="diagnostics") for _ in range(BURST)]
    ids = [f"{e.ticket_id}:1" for e in events]
    db = mongo_client[rig.db.name]
    in_flight: list[int] = []

    async def watch() -> None:
        while True:
            in_flight.append(await db[ClaimStore.CLAIMS].count_documents(
                {"_id": {"$in": ids}, "status": "open"}))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    worker = rig.service.worker
    scan, worker._scan = worker._scan, None  # per interval, not per ticket (counted below)
    counter = rig.service.runtime.store_round_trips
    before = Counter(counter.totals)
    try:
        await asyncio.gather(*(rig.publish(e) for e in events))
        for event in events:
            await rig.bus.wait(event.ticket_id, "InterventionCompleted", timeout=240)
        await asyncio.sleep(0.3)  # the last archive's deletes
    finally:
        watcher.cancel()
        worker._scan = scan
    spent = own_round_trips(Counter(counter.totals) - before)
    print(f"\nexecutor_claims held at most {max(in_flight)} of the burst's {BURST} claims "
          f"(concurrency {concurrency}); executor round trips per ticket: "
          + ", ".join(f"{op} {coll} {n / BURST:.2f}" for (op, coll), n in sorted(spent.items())))
    assert 0 < max(in_flight) <= concurrency
    # A queued claim costs its move into executor_claims and its done marker, and the
    # creator's lease starts at the move, so no claim is taken anew (no a2 lease, no
    # re-read) however long it waited.
    assert spent[("update", ClaimStore.CLAIMS)] <= 2 * BURST, spent
    assert spent[("insert", ClaimStore.LEASES)] == 0, spent
    await asyncio.sleep(1.5)  # a scan or two more: nothing runs again
    queued = {doc["_id"] for name in await db.list_collection_names()
              if name.startswith(f"{ClaimStore.QUEUED}_")
              async for doc in db[name].find({"_id": {"$in": ids}}, {"_id": 1})}
    assert len(queued) >= BURST - concurrency  # the ones no worker was free for
    for event in events:
        assert len(rig.bus.of(event.ticket_id, "InterventionCompleted")) == 1
        assert len(rig.bus.of(event.ticket_id, "InterventionStarted")) == 1
    archived = [doc async for doc in db[ClaimStore.ARCHIVE].find({"_id": {"$in": ids}})]
    assert sorted(doc["_id"] for doc in archived) == sorted(ids)
    assert {doc["status"] for doc in archived} == {"finished"}
    assert await db[ClaimStore.CLAIMS].count_documents({"_id": {"$in": ids}}) == 0
    assert await db[ClaimStore.LEASES].count_documents({"claim_id": {"$in": ids}}) == 0
    assert not set(ids) & set(await rig.service.claims.open_claim_ids())
