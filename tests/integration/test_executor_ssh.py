"""SSH to a real OpenSSH sshd: host keys pinned or trusted on first use, a wrong key refused
before any password is sent, privilege detected, and the sudo password kept off every
command line."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import executor_targets as targets

from services.executor.runbooks.model import Command
from services.executor.ssh import (
    Credential,
    HostKeyMismatch,
    HostKeyPins,
    SshConnector,
    SshError,
    SshTarget,
)

pytestmark = pytest.mark.integration


def connector(db: AsyncDatabase[dict[str, Any]], **kw: Any) -> SshConnector:
    options: dict[str, Any] = {"connect_timeout_s": 10, "command_timeout_s": 30,
                               "per_host_connects": 4, "global_connects": 16}
    options.update(kw)
    return SshConnector(pins=HostKeyPins(db), **options)


def target(ssh_targets: Any, **kw: Any) -> SshTarget:
    fields: dict[str, Any] = {"host": "127.0.0.1", "port": ssh_targets.port,
                              "service_id": f"SRV-{uuid.uuid4().hex[:8]}"}
    fields.update(kw)
    return SshTarget(**fields)


def admin(ssh_targets: Any) -> Credential:
    return Credential(username=ssh_targets.admin.name, password=ssh_targets.admin.password)


async def test_first_use_pins_the_key_and_later_connections_use_the_pin(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    where = target(ssh_targets)
    first = await connector(mongo_db).open(where, admin(ssh_targets), platform="linux")
    await first.aclose()
    assert first.host_key.source == "first_use"
    assert first.host_key.newly_pinned
    assert first.host_key.key_line == ssh_targets.sshd.host_key_line
    assert await HostKeyPins(mongo_db).get(where.service_id) == ssh_targets.sshd.host_key_line
    second = await connector(mongo_db).open(where, admin(ssh_targets), platform="linux")
    await second.aclose()
    assert second.host_key.source == "pinned"
    assert second.host_key.fingerprint == first.host_key.fingerprint


async def test_the_inventory_key_is_used_when_known(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    where = target(ssh_targets, inventory_key=ssh_targets.sshd.host_key_line)
    session = await connector(mongo_db).open(where, admin(ssh_targets), platform="linux")
    await session.aclose()
    assert session.host_key.source == "inventory"
    assert await HostKeyPins(mongo_db).get(where.service_id) is None  # nothing to pin


@pytest.mark.parametrize("pinned_by", ["inventory", "pinned"])
async def test_a_wrong_host_key_is_refused_before_the_password_is_sent(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]], pinned_by: str) -> None:
    wrong = targets.other_host_key()
    if pinned_by == "inventory":
        where = target(ssh_targets, inventory_key=wrong)
    else:
        where = target(ssh_targets)
        await HostKeyPins(mongo_db).pin(where.service_id, wrong, host="127.0.0.1",
                                        port=where.port, fingerprint="-", ticket_id=None)
    log_before = ssh_targets.sshd.log()
    with pytest.raises(HostKeyMismatch) as caught:
        await connector(mongo_db).open(where, admin(ssh_targets), platform="linux")
    assert caught.value.outcome == "host_key_mismatch"
    assert caught.value.source == pinned_by
    assert caught.value.offered is not None
    assert caught.value.offered != caught.value.expected
    await asyncio.sleep(0.3)
    new_log = ssh_targets.sshd.log()[len(log_before):]
    # sshd never saw an authentication attempt on that connection.
    assert "password" not in new_log.lower()
    assert ssh_targets.admin.name not in new_log


async def test_wrong_password_and_closed_port_are_told_apart(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    with pytest.raises(SshError) as refused:
        await connector(mongo_db).open(
            target(ssh_targets), Credential(username=ssh_targets.admin.name, password="nope-123"),
            platform="linux")
    assert refused.value.outcome == "auth_failed"
    with pytest.raises(SshError) as down:
        await connector(mongo_db).open(target(ssh_targets, port=targets.free_port()),
                                       admin(ssh_targets), platform="linux")
    assert down.value.outcome == "unreachable"


async def test_privilege_is_detected(ssh_targets: Any,
                                     mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    sudoer = await connector(mongo_db).open(target(ssh_targets), admin(ssh_targets),
                                            platform="linux")
    plain = await connector(mongo_db).open(
        target(ssh_targets),
        Credential(username=ssh_targets.plain.name, password=ssh_targets.plain.password),
        platform="linux")
    try:
        assert sudoer.privilege == "sudo_password"
        assert plain.privilege == "none"
        result = await sudoer.run(Command(argv=("id", "-u"), root=True))
        assert (result.exit_status, result.stdout.strip()) == (0, "0")
        refused = await plain.run(Command(argv=("id", "-u"), root=True))
        assert refused.exit_status is None
        assert "administrator" in (refused.error or "")
    finally:
        await sudoer.aclose()
        await plain.aclose()


async def test_sudo_password_and_secret_input_never_appear_on_a_command_line(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    session = await connector(mongo_db).open(target(ssh_targets), admin(ssh_targets),
                                             platform="linux")
    secret_input = "stdin-only-" + uuid.uuid4().hex
    seen: list[int] = []

    async def watch() -> None:
        for _ in range(40):
            seen.extend(targets.processes_with(ssh_targets.admin.password))
            seen.extend(targets.processes_with(secret_input))
            await asyncio.sleep(0.05)

    try:
        watcher = asyncio.create_task(watch())
        result = await session.run(Command(
            argv=("sh", "-c", "read line; sleep 1.5; echo \"got ${#line} chars\""), root=True,
            stdin=secret_input + "\n"))
        await watcher
    finally:
        await session.aclose()
    assert result.exit_status == 0
    assert result.stdout.strip() == f"got {len(secret_input)} chars"
    assert secret_input not in result.stdout + result.stderr
    assert ssh_targets.admin.password not in result.stdout + result.stderr
    assert seen == []


async def test_handshakes_per_host_are_bounded(ssh_targets: Any,
                                               mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    limited = connector(mongo_db, per_host_connects=2)
    where = target(ssh_targets, inventory_key=ssh_targets.sshd.host_key_line)
    slot = limited._host_slot(where.host, where.port)
    in_flight: list[int] = []

    async def sample() -> None:
        for _ in range(60):
            in_flight.append(2 - slot._value)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    sessions = await asyncio.gather(*(limited.open(where, admin(ssh_targets), platform="linux")
                                      for _ in range(6)))
    await sampler
    for session in sessions:
        await session.aclose()
    assert len(sessions) == 6
    assert max(in_flight) <= 2


async def test_a_server_that_may_not_be_trusted_on_first_use_is_refused_unpinned(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    # A rescue-capable server (access.first_use_allowed is False) without an inventory key:
    # no password is sent to whoever answers, nothing is pinned, and an earlier
    # trust-on-first-use pin does not count either; a key pinned from its disk does.
    where = target(ssh_targets, trust_first_use=False)
    with pytest.raises(SshError) as caught:
        await connector(mongo_db).open(where, admin(ssh_targets), platform="linux")
    assert caught.value.outcome == "host_key_unpinned"
    pins = HostKeyPins(mongo_db)
    assert await pins.get(where.service_id) is None
    await pins.pin(where.service_id, ssh_targets.sshd.host_key_line, host="127.0.0.1",
                   port=ssh_targets.port, fingerprint="fp", ticket_id=None)
    with pytest.raises(SshError) as again:
        await connector(mongo_db).open(where, admin(ssh_targets), platform="linux")
    assert again.value.outcome == "host_key_unpinned"
    await pins.replace(where.service_id, ssh_targets.sshd.host_key_line, host="127.0.0.1",
                       port=ssh_targets.port, ticket_id=None)
    session = await connector(mongo_db).open(where, admin(ssh_targets), platform="linux")
    await session.aclose()
    assert session.host_key.source == "pinned"
