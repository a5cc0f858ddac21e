"""Every runbook's pre-check, change and verification really run against sshd; a dry run
changes nothing (state compared before and after); a password reset really changes the
password and a fresh login proves it."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
from executor_fakes import FakeJournal, FakeLog, FakeSink

from services.executor.runbooks import RUNBOOKS
from services.executor.runbooks.engine import Engine, RunResult
from services.executor.runbooks.model import RunOptions
from services.executor.ssh import Credential, HostKeyPins, SshConnector, SshTarget
from services.executor.vault import (
    DepositTarget,
    MongoCredentialVault,
    VaultIssuer,
    open_deposit,
)
from services.runtime.crypto import PrivateSealingKey, SigningKey

pytestmark = pytest.mark.integration


async def run_runbook(ssh_targets: Any, db: AsyncDatabase[dict[str, Any]], runbook: str,
                      params: dict[str, Any], *, dry_run: bool = False,
                      vault: MongoCredentialVault | None = None, account_id: str = "ACC-X",
                      ) -> tuple[RunResult, FakeLog, FakeSink]:
    connector = SshConnector(pins=HostKeyPins(db), connect_timeout_s=10, command_timeout_s=120,
                             per_host_connects=4, global_connects=8)
    session = await connector.open(
        SshTarget(host="127.0.0.1", port=ssh_targets.port, service_id="SRV-RB",
                  inventory_key=ssh_targets.sshd.host_key_line),
        Credential(username=ssh_targets.admin.name, password=ssh_targets.admin.password),
        platform="linux")
    log, sink = FakeLog(), FakeSink()
    claim = f"HD-{uuid.uuid4().hex[:8]}:1"
    issuer = VaultIssuer(vault=vault or MongoCredentialVault(db), claim_id=claim, attempt=1,
                         target=DepositTarget(account_id=account_id, ticket_id=claim[:-2],
                                              revision=1, service_id="SRV-RB",
                                              verified_at=datetime.now(UTC)))
    engine = Engine(host=session, journal=FakeJournal(), log=log, issuer=issuer,
                    secrets_sink=sink, tracer=TracerProvider().get_tracer("t"),
                    options=RunOptions(dry_run=dry_run, service_settle_s=0.5))
    book = RUNBOOKS[runbook]
    try:
        result = await engine.run(book, book.parse_params(params))
    finally:
        await session.aclose()
    return result, log, sink


def results(run: RunResult) -> dict[str, str]:
    return {s.name: s.result for s in run.steps}


def phases(log: FakeLog, step: str) -> list[str]:
    return [r["phase"] for r in log.records if r["step"] == step]


async def test_diagnostics_run_every_available_check_and_change_nothing(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    result, log, _ = await run_runbook(ssh_targets, mongo_db, "diagnostics", {})
    by_step = results(result)
    for step in ("detect", "system", "load", "memory", "disks", "kernel_errors"):
        assert by_step[step] == "ok", (step, next(s.reason for s in result.steps
                                                  if s.name == step))
    # This machine has no systemd as init, no smartctl, no md RAID, no EDAC: reported
    # as not available rather than as failures.
    for step in ("failed_units", "smart_scan", "smart", "raid", "ecc"):
        assert by_step[step] == "skipped"
    assert "dmesg" in result.facts["tools"]
    dmesg = next(r for r in log.records if r["step"] == "kernel_errors")
    assert dmesg["root"] is True
    assert dmesg["result"].exit_status == 0  # ran through sudo with the password on stdin
    assert {r["phase"] for r in log.records} == {"precheck"}  # read-only throughout


async def test_service_restart_checks_config_restarts_once_and_reads_the_log(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    service = ssh_targets.service
    pid, starts = service.pid(), service.starts()
    result, log, _ = await run_runbook(ssh_targets, mongo_db, "service_restart",
                                       {"unit": service.name})
    assert results(result) == {"detect": "ok", "config_check": "ok", "restart": "changed",
                               "log_tail": "ok"}
    assert result.facts["manager"] == "sysv"  # honest: no systemd here
    assert service.starts() == starts + 1
    assert service.pid() not in (None, pid)
    assert phases(log, "restart") == ["precheck", "change", "verify"]
    config = next(r for r in log.records if r["step"] == "config_check")
    assert config["display"] == f"[as administrator] service {service.name} configtest"
    restart = next(s for s in result.steps if s.name == "restart")
    assert restart.action.command == f"[as administrator] service {service.name} restart"


async def test_a_broken_configuration_stops_the_restart(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    service = ssh_targets.service
    service.break_config()
    try:
        pid, starts = service.pid(), service.starts()
        result, _, _ = await run_runbook(ssh_targets, mongo_db, "service_restart",
                                         {"unit": service.name})
    finally:
        service.fix_config()
    assert results(result) == {"detect": "ok", "config_check": "failed"}
    assert "syntax error" in (result.steps[1].reason or "")
    assert (service.pid(), service.starts()) == (pid, starts)  # still running, untouched


async def test_service_restart_dry_run_changes_nothing(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    service = ssh_targets.service
    pid, starts = service.pid(), service.starts()
    result, log, _ = await run_runbook(ssh_targets, mongo_db, "service_restart",
                                       {"unit": service.name}, dry_run=True)
    assert results(result)["restart"] == "planned"
    assert results(result)["config_check"] == "ok"  # read-only checks still run
    assert (service.pid(), service.starts()) == (pid, starts)
    assert "change" not in {r["phase"] for r in log.records}


async def test_unknown_service_is_reported_not_guessed(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    result, _, _ = await run_runbook(ssh_targets, mongo_db, "service_restart",
                                     {"unit": f"ivt{uuid.uuid4().hex[:6]}-none"})
    assert results(result) == {"detect": "failed"}
    assert "not found" in (result.steps[0].reason or "")


async def test_software_installation_simulates_installs_verifies_and_skips_installed(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    repo = ssh_targets.repo
    package = repo.packages[0]
    assert not repo.installed(package)
    result, log, _ = await run_runbook(ssh_targets, mongo_db, "software_installation",
                                       {"packages": [package]})
    assert results(result) == {"detect": "ok", f"install:{package}": "changed"}
    assert result.facts["package_manager"] == "apt-get"
    assert repo.installed(package)
    assert repo.postinst_runs(package) == 1
    assert phases(log, f"install:{package}") == ["precheck", "simulate", "change", "verify"]
    again, log2, _ = await run_runbook(ssh_targets, mongo_db, "software_installation",
                                       {"packages": [package]})
    assert results(again)[f"install:{package}"] == "no_change_needed"
    assert repo.postinst_runs(package) == 1
    assert phases(log2, f"install:{package}") == ["precheck"]


async def test_software_installation_dry_run_installs_nothing(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    repo = ssh_targets.repo
    package = repo.packages[1]
    result, log, _ = await run_runbook(ssh_targets, mongo_db, "software_installation",
                                       {"packages": [package]}, dry_run=True)
    assert results(result)[f"install:{package}"] == "planned"
    simulate = next(r for r in log.records if r["phase"] == "simulate")
    assert f"Inst {package}" in simulate["result"].stdout
    assert not repo.installed(package)
    assert repo.postinst_runs(package) == 0


async def test_unknown_package_fails_in_simulation_without_changes(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    missing = f"ivt{uuid.uuid4().hex[:6]}-nosuch"
    result, log, _ = await run_runbook(ssh_targets, mongo_db, "software_installation",
                                       {"packages": [missing]})
    assert results(result)[f"install:{missing}"] == "failed"
    assert "simulation" in (result.steps[1].reason or "")
    assert "change" not in {r["phase"] for r in log.records}


async def test_password_reset_changes_the_password_and_a_fresh_login_proves_it(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    user = ssh_targets.target
    old = user.password
    operator = SigningKey.generate(key_id_prefix="operator")
    vault = MongoCredentialVault(mongo_db, {operator.key_id: operator.verify_key})
    customer = PrivateSealingKey.generate(key_id_prefix="cust")
    account = f"ACC-{uuid.uuid4().hex[:6]}"
    await vault.register_key(account, customer.public, operator_key=operator,
                             operator="test-operator", at=datetime.now(UTC) - timedelta(1))
    result, log, sink = await run_runbook(ssh_targets, mongo_db, "root_password_reset",
                                          {"account": user.name}, vault=vault,
                                          account_id=account)
    assert results(result) == {"account": "ok", "set_password": "changed"}
    assert result.new_credentials_issued
    [deposit] = await vault.active(account, "SRV-RB", user.name)
    new = open_deposit(deposit, customer)
    user.password = new  # the fixture's teardown removes the user either way
    assert sink.secrets == [new]
    assert new not in str(deposit)  # stored sealed only
    connector = SshConnector(pins=HostKeyPins(mongo_db), connect_timeout_s=10,
                             command_timeout_s=30, per_host_connects=4, global_connects=8)
    target = SshTarget(host="127.0.0.1", port=ssh_targets.port, service_id="SRV-RB",
                       inventory_key=ssh_targets.sshd.host_key_line)
    from services.executor.ssh import HostKeyInfo

    key = HostKeyInfo(source="inventory", fingerprint="-", key_line=ssh_targets.sshd.host_key_line)
    assert (await connector.fresh_login(target, key, user.name, new)).exit_status == 0
    assert (await connector.fresh_login(target, key, user.name, old)).exit_status == 1
    verify = next(r for r in log.records if r["phase"] == "verify")
    assert verify["display"] == f"fresh SSH login as {user.name} with the new password"
    change = next(r for r in log.records if r["phase"] == "change")
    assert change["display"] == "[as administrator] chpasswd"
    assert all(new not in str(r) and old not in str(r) for r in log.records)


async def test_password_reset_dry_run_and_missing_vault_key_change_nothing(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    user = ssh_targets.plain
    connector = SshConnector(pins=HostKeyPins(mongo_db), connect_timeout_s=10,
                             command_timeout_s=30, per_host_connects=4, global_connects=8)
    target = SshTarget(host="127.0.0.1", port=ssh_targets.port, service_id="SRV-RB",
                       inventory_key=ssh_targets.sshd.host_key_line)
    from services.executor.ssh import HostKeyInfo

    key = HostKeyInfo(source="inventory", fingerprint="-", key_line=ssh_targets.sshd.host_key_line)
    planned, log, _ = await run_runbook(ssh_targets, mongo_db, "root_password_reset",
                                        {"account": user.name}, dry_run=True)
    assert results(planned) == {"account": "ok", "set_password": "planned"}
    assert "change" not in {r["phase"] for r in log.records}
    no_key, log2, _ = await run_runbook(ssh_targets, mongo_db, "root_password_reset",
                                        {"account": user.name},
                                        account_id=f"ACC-{uuid.uuid4().hex[:6]}")
    assert results(no_key)["set_password"] == "failed"
    assert "no credential vault key" in (no_key.steps[1].reason or "")
    assert "change" not in {r["phase"] for r in log2.records}
    # The old password still works after both.
    assert (await connector.fresh_login(target, key, user.name, user.password)).exit_status == 0


async def test_password_reset_of_a_missing_account_is_refused(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    result, log, _ = await run_runbook(ssh_targets, mongo_db, "root_password_reset",
                                       {"account": f"ivtnone{uuid.uuid4().hex[:4]}"})
    assert results(result) == {"account": "failed"}
    assert {r["phase"] for r in log.records} == {"precheck"}
    assert "no account named" in (result.steps[0].reason or "")
