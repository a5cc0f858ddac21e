"""The rescue procedure with every port faked: order, journal, resumption, failures."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from executor_fakes import FakeIssuer
from executor_verdicts import resolved_server, verdict

from schemas.events import AuthorizationVerified
from services.executor.claims import Claim
from services.executor.outcome import decide_outcome
from services.executor.rescue.flow import RescuePorts, RescueRun, RescueTiming
from services.executor.rescue.provider import ProviderAction, ProviderError, RescueAccess
from services.executor.rescue.runbooks import INCIDENTAL_STEPS
from services.executor.runbooks.engine import (
    ActionRecord,
    CredentialIssuer,
    JournalEntry,
    RunResult,
    StepOutcome,
)
from services.executor.ssh import Credential, HostKeyInfo, SshError, SshTarget
from services.runtime.crypto import PrivateSealingKey, open_text, seal_text
from services.runtime.redaction import Redactor

DISK_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIj0Kd+FxChsbL3uWz1ruPEtlntYloMqCIfXtX1iSSSb"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHDc+tKFJafhnOd3hvVVw+0NBP2eDGDUq45kCrZ4mk6j"
RESCUE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqypUxp2bChLLji8/pH/K3++4q7H7xjS8+Kf0RAdCtB"
SEALING = PrivateSealingKey.generate(key_id_prefix="exec")


@dataclass
class FakeProvider:
    fail: dict[str, str] = field(default_factory=dict)  # kind -> "failed" | "hang" | "error"
    calls: list[str] = field(default_factory=list)
    actions: dict[str, ProviderAction] = field(default_factory=dict)

    def _start(self, kind: str) -> ProviderAction:
        self.calls.append(kind)
        if self.fail.get(kind) == "error":
            raise ProviderError("unavailable", "HTTP 503 maintenance")
        status = {"failed": "failed", "hang": "running"}.get(self.fail.get(kind, ""),
                                                           "succeeded")
        action = ProviderAction(id=f"act-{len(self.actions)}", kind=kind,  # type: ignore[arg-type]
                                status=status, progress=100 if status != "running" else 10,  # type: ignore[arg-type]
                                message="no DHCP offer" if status == "failed" else "ok")
        self.actions[action.id] = action
        return action

    async def boot_rescue(self, server_id: str, *, request_id: str) -> ProviderAction:
        return self._start("boot_rescue")

    async def boot_disk(self, server_id: str, *, request_id: str) -> ProviderAction:
        return self._start("boot_disk")

    async def action(self, action_id: str) -> ProviderAction:
        self.calls.append(f"poll:{action_id}")
        return self.actions[action_id]

    async def rescue_credentials(self, action_id: str) -> RescueAccess:
        self.calls.append("credentials")
        return RescueAccess(address="192.0.2.50", port=22, username="root",
                            password="Rescue-one-time-42", host_key=RESCUE_KEY)


@dataclass
class FakeSession:
    target: SshTarget
    host_key: HostKeyInfo
    privilege: str = "root"

    async def aclose(self) -> None:
        return None


@dataclass
class FakeConnector:
    server_outcome: str = "ok"  # "ok" | "unreachable" | "auth_failed"
    opened: list[tuple[SshTarget, Credential]] = field(default_factory=list)

    async def open(self, target: SshTarget, credential: Credential, *, platform: str,
                   ticket_id: str | None = None) -> FakeSession:
        self.opened.append((target, credential))
        if target.host != "192.0.2.50" and self.server_outcome != "ok":
            raise SshError(self.server_outcome, f"{target.host}: {self.server_outcome}")  # type: ignore[arg-type]
        return FakeSession(target=target, host_key=HostKeyInfo(
            source="inventory", fingerprint="SHA256:x", key_line=target.inventory_key or ""))


@dataclass
class FakePins:
    pinned: str | None = None
    replaced: list[str] = field(default_factory=list)

    async def get(self, service_id: str) -> str | None:
        return self.pinned

    async def replace(self, service_id: str, line: str, **kw: Any) -> None:
        self.replaced.append(line)
        self.pinned = line


@dataclass
class FakeClaims:
    recorded: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def record_rescue(self, claim_id: str, owner: Any, key: str,
                            value: dict[str, Any]) -> None:
        self.recorded.append((key, dict(value)))


def step(name: str, result: str = "changed", **facts: Any) -> StepOutcome:
    return StepOutcome(index=0, name=name, result=result, reason=None, facts=dict(facts),  # type: ignore[arg-type]
                       action=ActionRecord(step=name, command="-", exit_status=0,
                                           duration_ms=1, result=result))  # type: ignore[arg-type]


@dataclass
class FakeEngine:
    result: RunResult
    issue: tuple[str, str] | None = None
    issuer: CredentialIssuer | None = None
    runs: int = 0
    during: Callable[[Any], None] | None = None  # called with the params mid-run
    params: Any = None

    async def run(self, runbook: Any, params: Any) -> RunResult:
        self.runs += 1
        self.params = params
        if self.during is not None:
            self.during(params)
        if self.issue is not None and self.issuer is not None:
            deposit = await self.issuer.deposit(step_key="k", account=self.issue[0],
                                                secret=self.issue[1])
            await self.issuer.activate(deposit)
        return self.result


@dataclass
class Rig:
    provider: FakeProvider
    connector: FakeConnector
    pins: FakePins
    claims: FakeClaims
    engine: FakeEngine
    audits: list[tuple[str, dict[str, Any]]]
    claim: Claim
    verdict: AuthorizationVerified
    redactor: Redactor = field(default_factory=Redactor)
    management_sources: tuple[str, ...] = ()

    async def run(self) -> Any:
        async def audit(claim: Claim, record_id: str, kind: str, data: Any) -> None:
            self.audits.append((kind, dict(data)))

        def make_engine(session: Any, issuer: CredentialIssuer) -> Any:
            self.engine.issuer = issuer
            return self.engine

        ports = RescuePorts(
            provider=self.provider, claims=self.claims, owner=None,  # type: ignore[arg-type]
            connector=self.connector, pins=self.pins, audit=audit,  # type: ignore[arg-type]
            engine=make_engine, seal=lambda s: seal_text(s, SEALING.public),
            unseal=lambda s: open_text(s, {SEALING.key_id: SEALING}),
            tracer=trace.get_tracer("test"),
            timing=RescueTiming(boot_timeout_s=0.3, poll_s=0.05, ssh_wait_s=0.2),
            management_sources=self.management_sources, redactor=self.redactor)
        return await RescueRun(ports, self.claim, self.verdict,
                               Credential(username="operator", password="Cust-pw-1"),
                               FakeIssuer()).run()


def make_rig(*, category: str = "filesystem_repair", **kw: Any) -> Rig:
    event = verdict(signing_key=None, sealing_key=SEALING.public, username="operator",
                    password="Cust-pw-1", category=category,
                    server=resolved_server(ip="203.0.113.10", service_id="SRV-9"))
    claim = Claim(id=f"{event.ticket_id}:1", ticket_id=event.ticket_id, revision=1,
                  verdict_event_id=str(event.event_id), verdict_json="", trace_carrier={},
                  status="open", owner=None, lease_until=None, attempt=1)
    engine = FakeEngine(result=RunResult(steps=(
        step("find_filesystems", "ok"), step("mount_root"), step("repair"),
        step("read_host_keys", "ok", server_host_keys=[DISK_KEY])),
        facts={"server_host_keys": [DISK_KEY]}))
    return Rig(provider=kw.get("provider", FakeProvider()),
               connector=kw.get("connector", FakeConnector()), pins=kw.get("pins", FakePins()),
               claims=FakeClaims(), engine=kw.get("engine", engine), audits=[], claim=claim,
               verdict=event)


async def test_the_procedure_runs_in_order_and_journals_each_phase() -> None:
    rig = make_rig()
    result = await rig.run()
    assert result.handover is None
    assert [s.name for s in result.run.steps] == [
        "rescue_boot_rescue", "rescue_connect", "find_filesystems", "mount_root", "repair",
        "read_host_keys", "rescue_boot_disk", "rescue_verify"]
    assert all(s.result in ("ok", "changed") for s in result.run.steps)
    assert [c for c in rig.provider.calls if not c.startswith("poll")] == [
        "boot_rescue", "credentials", "boot_disk"]
    keys = [k for k, _ in rig.claims.recorded]
    assert keys.index("boot_rescue") < keys.index("access") < keys.index("runbook") \
        < keys.index("boot_disk") < keys.index("verify")
    # The one-time password is in the claim only sealed to the executor's own key.
    access = dict(rig.claims.recorded)["access"]
    assert "Rescue-one-time-42" not in repr(access)
    assert set(access["password"]) == {"key_id", "ciphertext"}
    # The rescue system is trusted by the provider's key; the server by its disk's key.
    rescue, server = rig.connector.opened
    assert rescue[0].inventory_key == RESCUE_KEY
    assert (server[0].host, server[0].inventory_key) == ("203.0.113.10", DISK_KEY)
    assert server[1].username == "operator"
    assert rig.pins.replaced == [DISK_KEY]  # nothing was pinned yet
    assert decide_outcome(result.run, [], dry_run=False,
                          incidental=INCIDENTAL_STEPS).outcome == "resolved"


async def test_a_resumed_run_past_the_repair_never_boots_the_rescue_system_again() -> None:
    rig = make_rig()
    await rig.run()
    state = rig.claim.rescue
    for key in ("boot_disk", "verify"):
        state.pop(key)
    rig.claim.steps = {"000": JournalEntry(
        name="repair", state="done", result="changed",
        facts={"server_host_keys": [DISK_KEY]},
        action=ActionRecord(step="repair", command="-", exit_status=0, duration_ms=1,
                            result="changed")).to_json()}
    again = make_rig(provider=FakeProvider(), engine=FakeEngine(result=RunResult(
        steps=(), facts={})))
    again.claim, again.verdict = rig.claim, rig.verdict
    result = await again.run()
    assert [c for c in again.provider.calls if not c.startswith("poll")] == ["boot_disk"]
    assert again.engine.runs == 0  # the journal tells what the repair did
    assert [s.name for s in result.run.steps] == [
        "rescue_boot_rescue", "repair", "rescue_boot_disk", "rescue_verify"]


async def test_a_resumed_run_waits_for_the_boot_it_already_requested() -> None:
    rig = make_rig()
    rig.provider.actions["act-7"] = ProviderAction(id="act-7", kind="boot_disk",
                                                   status="succeeded", progress=100,
                                                   message="ok")
    rig.claim.rescue.update(
        runbook={"done": True},
        boot_rescue={"action_id": "act-0", "outcome": {
            "name": "rescue_boot_rescue", "result": "changed", "reason": None, "facts": {},
            "action": {"step": "Boot", "command": "-", "exit_status": None,
                       "duration_ms": 5, "result": "changed"}}},
        boot_disk={"action_id": "act-7", "requested_at": datetime.now(UTC).isoformat()})
    await rig.run()
    assert "boot_disk" not in rig.provider.calls
    assert "poll:act-7" in rig.provider.calls


@pytest.mark.parametrize(("fault", "reason"), [
    ("failed", "failed: no DHCP offer"),
    ("hang", "did not finish within 0 s"),
    ("error", "did not accept the request (unavailable)"),
])
async def test_provider_failures_become_a_failed_step_and_the_server_goes_back_to_disk(
        fault: str, reason: str) -> None:
    rig = make_rig(provider=FakeProvider(fail={"boot_rescue": fault}))
    result = await rig.run()
    names = [(s.name, s.result) for s in result.run.steps]
    assert names == [("rescue_boot_rescue", "failed"), ("rescue_boot_disk", "changed")]
    assert reason in (result.run.steps[0].reason or "")
    assert rig.engine.runs == 0
    verdict_ = decide_outcome(result.run, [], dry_run=False, incidental=INCIDENTAL_STEPS)
    assert verdict_.outcome == "unresolved"  # a reboot is not a repair


async def test_a_failed_boot_back_is_said_plainly() -> None:
    rig = make_rig(provider=FakeProvider(fail={"boot_disk": "failed"}))
    result = await rig.run()
    last = result.run.steps[-1]
    assert (last.name, last.result) == ("rescue_boot_disk", "failed")
    assert "may still be in the rescue system" in (last.reason or "")
    assert decide_outcome(result.run, [], dry_run=False,
                          incidental=INCIDENTAL_STEPS).outcome == "partially_resolved"


async def test_a_password_reset_is_verified_with_the_new_password() -> None:
    rig = make_rig(category="root_password_reset")
    rig.engine.issue = ("root", "New-Pass-77")
    await rig.run()
    _, credential = rig.connector.opened[-1]
    assert (credential.username, credential.password) == ("root", "New-Pass-77")


@pytest.mark.parametrize(("outcome", "result", "note"), [
    ("unreachable", "failed", "did not answer"),
    ("auth_failed", "ok", "refused the credentials on the ticket"),
])
async def test_verification_from_outside(outcome: str, result: str, note: str) -> None:
    rig = make_rig(connector=FakeConnector(server_outcome=outcome))
    verified = (await rig.run()).run.steps[-1]
    assert (verified.name, verified.result) == ("rescue_verify", result)
    assert note in verified.action.command


async def test_a_pin_among_the_disks_keys_is_kept() -> None:
    pins = FakePins(pinned=DISK_KEY)
    await make_rig(pins=pins).run()
    assert pins.replaced == []
    stale = FakePins(pinned=OTHER_KEY)
    rig = make_rig(pins=stale)
    await rig.run()
    assert stale.replaced == [DISK_KEY]
    assert ("host_key_pinned", {"service_id": "SRV-9", "previous": OTHER_KEY, "key": DISK_KEY,
                                "source": "read from the server's disk through the rescue "
                                          "system"}) in rig.audits


async def test_a_step_unsafe_to_repeat_leaves_the_server_in_rescue_for_an_engineer() -> None:
    from services.executor.runbooks.engine import Handover

    handover = Handover(index=4, step="fix_config", title="Fix the sshd configuration",
                        reason="interrupted while changing", instructions=("Check it.",))
    rig = make_rig(engine=FakeEngine(result=RunResult(steps=(step("mount_root"),), facts={},
                                                      handover=handover)))
    result = await rig.run()
    assert result.handover is not None
    assert "rescue system at 192.0.2.50" in result.handover.instructions[0]
    assert result.handover.instructions[-1].startswith("Boot the server back")
    assert "boot_disk" not in rig.provider.calls  # the engineer continues in the rescue system


async def test_the_runs_secrets_stay_masked_however_many_others_arrive_meanwhile() -> None:
    # A bounded redactor forgets its oldest secrets; a long rescue run's must not be among
    # them while the run can still print them.
    rig = make_rig()
    rig.redactor = Redactor(max_secrets=3)
    rig.redactor.add("Cust-pw-1")  # opened before the run, as the executor does
    seen: list[str] = []

    def other_tickets_arrive(params: Any) -> None:
        for n in range(10):
            rig.redactor.add(f"another-ticket-secret-{n}")
        seen.append(rig.redactor.redact_text("login Cust-pw-1"))

    rig.engine.during = other_tickets_arrive
    await rig.run()
    assert seen == ["login [REDACTED]"]


async def test_the_management_network_reaches_the_rescue_runbook() -> None:
    rig = make_rig(category="network_recovery")
    rig.management_sources = ("192.0.2.0/28",)
    await rig.run()
    assert rig.engine.params.management_sources == ("192.0.2.0/28",)
