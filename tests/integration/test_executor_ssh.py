"""SSH to a real OpenSSH sshd: host keys pinned or trusted on first use, a wrong key refused
before any password is sent, privilege detected, the sudo password kept off every command
line, and a whole runbook run over one connection, two channels and one sudo (the command
shells), each command still with its own output, status and timeout."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
import executor_targets as targets
from executor_fakes import FakeJournal, FakeLog, FakeSink
from opentelemetry.sdk.trace import TracerProvider
from polling import eventually

from services.executor.runbooks import RUNBOOKS
from services.executor.runbooks.engine import Engine
from services.executor.runbooks.model import Command, RunOptions, sh
from services.executor.ssh import (
    CommandShell,
    Credential,
    HostKeyMismatch,
    HostKeyPins,
    SshConnector,
    SshError,
    SshSession,
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


@pytest.mark.parametrize("shells", [True, False], ids=["command shells", "channel per command"])
async def test_privilege_is_detected(ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]],
                                     shells: bool) -> None:
    sudoer = await connector(mongo_db, command_shells=shells).open(
        target(ssh_targets), admin(ssh_targets), platform="linux")
    plain = await connector(mongo_db, command_shells=shells).open(
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


# --- command shells: one connection, two channels, one sudo --------------------------------


def sshd_lines(ssh_targets: Any, session: SshSession, pattern: str) -> int:
    """Lines of the sshd log about ``session``'s connection (by its client port)."""
    port = session._conn.get_extra_info("sockname")[1]
    return len(re.findall(rf"{pattern}.* port {port}\b", ssh_targets.sshd.log()))


async def test_a_diagnostics_run_takes_one_login_two_channels_and_one_root_shell(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    session = await connector(mongo_db).open(
        target(ssh_targets, inventory_key=ssh_targets.sshd.host_key_line), admin(ssh_targets),
        platform="linux")
    log = FakeLog()
    try:
        engine = Engine(host=session, journal=FakeJournal(), log=log, issuer=None,
                        secrets_sink=FakeSink(), tracer=TracerProvider().get_tracer("t"),
                        options=RunOptions())
        book = RUNBOOKS["diagnostics"]
        result = await engine.run(book, book.parse_params({}))
        # Every root command ran in the same root process: the one sudo, one password check.
        parents = {(await session.run(sh('echo "$PPID"', root=True))).stdout for _ in range(3)}
        logins = sshd_lines(ssh_targets, session, "Accepted password for")
        channels = sshd_lines(ssh_targets, session, "Starting session:")
    finally:
        await session.aclose()
    assert session.privilege == "sudo_password"
    assert {s.name: s.result for s in result.steps}["kernel_errors"] == "ok"  # root, as before
    assert len(log.records) >= 10  # each command audited on its own
    assert logins == 1
    assert channels == 2  # the account's shell and root's, not one per command
    assert len(parents) == 1
    # The root shell ends with the session: no root process is left on the server.
    root_shell = Path(f"/proc/{parents.pop().strip()}")
    await eventually(lambda: not root_shell.exists(), 5, what="the root shell to end")


async def test_the_channel_per_command_mode_opens_a_channel_per_command(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    # The baseline the benchmark compares with (and what the shells save).
    session = await connector(mongo_db, command_shells=False).open(
        target(ssh_targets), admin(ssh_targets), platform="linux")
    try:
        for _ in range(3):
            await session.run(Command(argv=("true",)))
        channels = sshd_lines(ssh_targets, session, "Starting session:")
    finally:
        await session.aclose()
    assert channels == 3 + 3  # and three for privilege detection (id, sudo -n, sudo -S)


async def test_each_command_in_a_shell_keeps_its_own_output_and_status(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    session = await connector(mongo_db).open(target(ssh_targets), admin(ssh_targets),
                                             platform="linux")
    big = 3 * 1024 * 1024  # more than the channel window, on both streams at once
    try:
        no_newline = await session.run(sh("printf out; printf err >&2; exit 3",
                                          ok_exit=None))
        blank = await session.run(Command(argv=("printf", "a\\n\\n")))
        both = await session.run(sh(f'head -c {big} /dev/zero | tr "\\0" o & '
                                    f'head -c {big} /dev/zero | tr "\\0" e >&2; wait; '
                                    'echo END'))
        reads = await session.run(sh("cat; echo read-nothing"))
        after = await session.run(Command(argv=("id", "-un"), root=True))
        cwd = await session.run(sh("cd /; pwd"))
        still = await session.run(Command(argv=("pwd",)))
    finally:
        await session.aclose()
    assert (no_newline.exit_status, no_newline.stdout, no_newline.stderr) == (3, "out", "err")
    assert blank.stdout == "a\n\n"
    assert both.exit_status == 0
    assert both.stdout.endswith("o" * 1000 + "END\n")
    assert both.stderr.endswith("e" * 1000)
    assert (reads.exit_status, reads.stdout) == (0, "read-nothing\n")  # stdin is /dev/null
    assert (after.exit_status, after.stdout) == (0, "root\n")
    assert cwd.stdout == "/\n"
    assert still.stdout != "/\n"  # a command's state never leaks into the next one


async def test_a_timed_out_command_closes_its_shell_and_the_next_gets_a_new_one(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    session = await connector(mongo_db).open(target(ssh_targets), admin(ssh_targets),
                                             platform="linux")
    try:
        began = time.perf_counter()
        slow = await session.run(Command(argv=("sleep", "20"), root=True, timeout_s=1))
        took = time.perf_counter() - began
        after = await session.run(Command(argv=("id", "-u"), root=True))
        plain = await session.run(Command(argv=("echo", "ok")))
    finally:
        await session.aclose()
    assert slow.exit_status is None
    assert slow.error == "no answer within 1 s"
    assert took < 5
    assert (after.exit_status, after.stdout) == (0, "0\n")
    assert plain.stdout == "ok\n"


async def test_a_refused_sudo_password_is_told_without_sending_anything_else(
        ssh_targets: Any, mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    session = await connector(mongo_db).open(target(ssh_targets), admin(ssh_targets),
                                             platform="linux")
    try:
        began = time.perf_counter()
        refused = await CommandShell.start(session._conn, sudo=True, password="not-it-123",
                                           timeout=20)
        took = time.perf_counter() - began
    finally:
        await session.aclose()
    assert refused == "refused"
    # sudo asks three times; answering only once (and closing) ends it after one delay.
    assert took < 6


@contextlib.asynccontextmanager
async def own_server(db: AsyncDatabase[dict[str, Any]], *, sudoers: str | None = None,
                     login_shell: str | None = None,
                     ) -> AsyncIterator[tuple[targets.ThrowawayUser, targets.Sshd, SshSession]]:
    """A user of its own (``sudoers``: its sudoers line; ``login_shell``) on an sshd of its
    own, logged in with its password; all removed afterwards."""
    user = targets.ThrowawayUser.create(sudo=sudoers is None)
    sshd: targets.Sshd | None = None
    try:
        if sudoers is not None:
            user.sudoers_path.write_text(f"{user.name} {sudoers}\n")
            user.sudoers_path.chmod(0o440)
        if login_shell is not None:
            await asyncio.to_thread(subprocess.run, ["usermod", "-s", login_shell, user.name],
                                    check=True)
        sshd = targets.Sshd.start([user.name])
        session = await connector(db).open(
            SshTarget(host="127.0.0.1", port=sshd.port, service_id=f"SRV-{uuid.uuid4().hex[:8]}",
                      inventory_key=sshd.host_key_line),
            Credential(username=user.name, password=user.password), platform="linux")
        try:
            yield user, sshd, session
        finally:
            await session.aclose()
    finally:
        if sshd is not None:
            sshd.stop()
        user.remove()


async def test_an_account_with_passwordless_sudo_is_told_apart_and_its_input_kept_whole(
        mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    # The root shell's sudo answers without asking: the password is never written, so it
    # cannot end up as a command of root's shell or as the first line of a command's input.
    async with own_server(mongo_db, sudoers="ALL=(ALL:ALL) NOPASSWD: ALL") as (_, _, session):
        root = await session.run(Command(argv=("id", "-u"), root=True))
        fed = await session.run(Command(argv=("cat",), root=True, stdin="only-this\n"))
    assert session.privilege == "sudo_nopasswd"
    assert (root.exit_status, root.stdout, root.stderr) == (0, "0\n", "")
    assert fed.stdout == "only-this\n"


async def test_a_login_shell_that_refuses_the_handshake_gets_a_channel_per_command(
        mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    # A restricted bash refuses ``exec``: no command shell starts, and every command takes
    # a channel of its own, as before command shells.
    async with own_server(mongo_db, login_shell="/bin/rbash") as (user, sshd, session):
        plain = await session.run(Command(argv=("id", "-un")))
        root = await session.run(Command(argv=("id", "-u"), root=True))
        log = sshd.log()
    assert session.privilege == "sudo_password"
    assert plain.stdout == f"{user.name}\n"
    assert (root.exit_status, root.stdout) == (0, "0\n")
    assert log.count("Starting session:") >= 5  # handshake, detection, and one per command
