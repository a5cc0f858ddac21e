"""SSH to customer servers: pinned host keys, bounded handshakes, sudo without command lines.

Host keys. The inventory's key for the server is used when it has one; otherwise the key
pinned in MongoDB by an earlier connection; otherwise the first key seen is trusted and
pinned (trust on first use — the intervention records it in the ticket's audit trail). A
server presenting any other key is refused before authentication, so the customer's
password is never sent to it. Host key checking is never disabled: unknown keys are
decided by :meth:`_HostKeyCheck.validate_host_public_key`, and pinned keys are passed
in memory so asyncssh also restricts negotiation to that key's algorithm.

Limits. OpenSSH drops unauthenticated connections beyond ``MaxStartups`` (10 by default),
so handshakes are bounded per host and globally; an established connection runs one
command at a time (at most two channels of the ``MaxSessions 10`` allowed).

Privilege. Detected once per connection: root itself, passwordless sudo, or sudo with the
customer's password, which is written to sudo's stdin (``sudo -k -S``) and never appears
in a command line. ``-k`` makes sudo ask every time, so the password line is always
consumed by sudo and never reaches a command's own input; the root shell's sudo gets it
only once it asked for it (with a random prompt), and answering without asking is how
passwordless sudo is told apart.

Command shells. On Linux a session keeps two long-lived POSIX shells, one channel each:
one as the account, and one as root (the account itself when it is root, else started by
the single sudo that also proves the privilege). Each command is written to the right
shell, runs in a subshell with ``/dev/null`` as its input, and is followed by a random
per-command marker that carries its exit status, on stdout and on stderr, so every
command still returns its own output and status (and is audited on its own by the
engine). Measured on loopback OpenSSH, this is what a host costs: a channel per command
means a forked session process and a login shell per command, and sudo per root command
means a password hash per command (yescrypt on current Debian, tens of milliseconds of
CPU each); the shells pay both once per connection. Commands with input of their own
(which may be a secret), Windows hosts, and any account whose login shell does not answer
the shell handshake keep the one-channel-per-command path.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncssh
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.executor.access import ProbeOutcome
from services.executor.claim_integrity import ClaimSealer
from services.executor.command_shell import CommandShell, ShellGone
from services.executor.runbooks.model import (
    STANDARD_PATH,
    Command,
    CommandResult,
    Platform,
    powershell,
)
from services.runtime.redaction import Redactor, default_redactor

MAX_STDOUT_CHARS = 256 * 1024
MAX_STDERR_CHARS = 64 * 1024

HostKeySource = Literal["inventory", "pinned", "first_use"]
Privilege = Literal["root", "sudo_nopasswd", "sudo_password", "none"]


class SshError(Exception):
    """Connecting or logging in failed; ``outcome`` is what access selection needs."""

    def __init__(self, outcome: ProbeOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome: ProbeOutcome = outcome


class HostKeyMismatch(SshError):
    def __init__(self, *, host: str, port: int, expected: str, offered: str | None,
                 source: HostKeySource) -> None:
        super().__init__("host_key_mismatch",
                         f"{host}:{port} presented host key {offered or 'unknown'}, but "
                         f"{expected} is pinned ({source}); connection refused")
        self.expected = expected
        self.offered = offered
        self.source: HostKeySource = source


@dataclass(frozen=True, kw_only=True)
class SshTarget:
    host: str
    port: int
    service_id: str  # pins are kept per server, so a renumbered server keeps its key
    inventory_key: str | None = None  # OpenSSH public key line from the inventory
    # False for servers whose key must come from the inventory or their own disk
    # (access.first_use_allowed): an unknown key is refused, not pinned.
    trust_first_use: bool = True


@dataclass(frozen=True, kw_only=True)
class Credential:
    username: str
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class HostKeyInfo:
    source: HostKeySource
    fingerprint: str
    key_line: str
    newly_pinned: bool = False


def key_line(key: asyncssh.SSHKey) -> str:
    """``<type> <base64>`` without comment: the canonical form pins are stored in."""
    return " ".join(key.export_public_key("openssh").decode("ascii").split()[:2])


DISK_SOURCE = "server disk (rescue)"


class HostKeyPins:
    """Trust-on-first-use pins, one document per server keyed by ``_id`` (FerretDB pushes
    only ``_id`` equality down).

    With a sealer (the executor always has one) each pin carries ``seal``, the executor's
    signed record of the key and where it came from (:mod:`services.executor.claim_integrity`,
    subject ``pin:<service id>``): a pin written into the store by anyone else - a key the
    attacker's host would present, or a "read from disk" the executor never did - is never
    trusted. Reading it fails the connection as a host-key mismatch (no credential is sent),
    and the access decision hands the server to an engineer or refuses, as for any mismatch.
    """

    COLLECTION = "executor_host_keys"

    def __init__(self, db: AsyncDatabase[dict[str, Any]],
                 sealer: ClaimSealer | None = None) -> None:
        self._coll = db[self.COLLECTION]
        self._sealer = sealer

    def _seal(self, service_id: str, line: str, source: str | None) -> dict[str, Any]:
        if self._sealer is None:
            return {}
        return {"seal": self._sealer.seal(f"pin:{service_id}", "host_key",
                                          {"key": line, "source": source})}

    async def _checked(self, service_id: str) -> dict[str, Any] | None:
        doc = await self._coll.find_one({"_id": service_id})
        if doc is None or self._sealer is None:
            return doc
        problem = self._sealer.problem(doc.get("seal"), f"pin:{service_id}", "host_key",
                                       {"key": doc.get("key"), "source": doc.get("source")})
        if problem is not None:
            raise SshError("host_key_mismatch",
                           f"the host key pinned for {service_id} was not pinned by the "
                           f"executor ({problem}): it is not trusted and no credential is "
                           "sent; an engineer confirms the server's key")
        return doc

    async def get(self, service_id: str) -> str | None:
        doc = await self._checked(service_id)
        return str(doc["key"]) if doc else None

    async def get_from_disk(self, service_id: str) -> str | None:
        """The pin only if it was read from the server's own disk (:meth:`replace`), not
        trusted on first use."""
        doc = await self._checked(service_id)
        return str(doc["key"]) if doc and doc.get("source") == DISK_SOURCE else None

    async def pin(self, service_id: str, line: str, *, host: str, port: int,
                  fingerprint: str, ticket_id: str | None) -> str:
        """Pin ``line`` unless another connection pinned a key first; return the pin."""
        try:
            await self._coll.insert_one({
                "_id": service_id, "key": line, "fingerprint": fingerprint, "host": host,
                "port": port, "first_seen": datetime.now(UTC), "ticket_id": ticket_id,
                **self._seal(service_id, line, None)})
        except DuplicateKeyError:
            existing = await self.get(service_id)
            return existing if existing is not None else line
        return line

    async def replace(self, service_id: str, line: str, *, host: str, port: int,
                      ticket_id: str | None) -> None:
        """Pin ``line`` whatever was pinned: only for a key read from the server's own disk
        through an authenticated channel (the provider's rescue system), never for a key a
        network peer offered. The caller audits the change."""
        key = asyncssh.import_public_key(line)
        await self._coll.replace_one({"_id": service_id}, {
            "_id": service_id, "key": line, "fingerprint": key.get_fingerprint(), "host": host,
            "port": port, "first_seen": datetime.now(UTC), "ticket_id": ticket_id,
            "source": DISK_SOURCE, **self._seal(service_id, line, DISK_SOURCE)}, upsert=True)


def _transport_error(target: SshTarget, exc: BaseException) -> SshError:
    """A connection that failed below authentication: unreachable, or SSH itself failed."""
    if isinstance(exc, asyncssh.Error):
        return SshError("ssh_error", f"SSH with {target.host}:{target.port} failed: "
                        f"{exc.reason}")
    return SshError("unreachable", f"{target.host}:{target.port} not reachable: "
                    f"{type(exc).__name__}")


class _HostKeyCheck(asyncssh.SSHClient):
    """Sees the key the server offers; trusts it only for first use."""

    def __init__(self, *, trust_unknown: bool) -> None:
        self.trust_unknown = trust_unknown
        self.offered: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        # Called only for keys outside the pinned set; asyncssh then still proves the
        # server holds the private half before the connection is accepted.
        self.offered = key
        return self.trust_unknown


class SshConnector:
    def __init__(self, *, pins: HostKeyPins, connect_timeout_s: float, command_timeout_s: float,
                 per_host_connects: int, global_connects: int,
                 redactor: Redactor | None = None, command_shells: bool = True) -> None:
        self._pins = pins
        # False: one channel (and one sudo) per command, the behaviour before command
        # shells; kept for comparison (bench/bench_executor.py --sequential-commands).
        self.command_shells = command_shells
        # Output is redacted here, before it is cut to size: a secret straddling the cut
        # would otherwise be kept half in clear by everything downstream.
        self.redactor = redactor or default_redactor()
        self._connect_timeout = connect_timeout_s
        self._command_timeout = command_timeout_s
        self._per_host = per_host_connects
        self._global = asyncio.Semaphore(global_connects)
        self._hosts: weakref.WeakValueDictionary[tuple[str, int], asyncio.Semaphore] = (
            weakref.WeakValueDictionary())

    def _host_slot(self, host: str, port: int) -> asyncio.Semaphore:
        slot = self._hosts.get((host, port))
        if slot is None:
            slot = asyncio.Semaphore(self._per_host)
            self._hosts[(host, port)] = slot
        return slot

    async def open(self, target: SshTarget, credential: Credential, *, platform: Platform,
                   ticket_id: str | None = None) -> SshSession:
        """Connect, check the host key, log in and find out the account's privilege."""
        expected, source = await self._expected_key(target)
        conn, info = await self._connect(target, credential.username, credential, expected,
                                         source, ticket_id=ticket_id)
        session = SshSession(connector=self, conn=conn, target=target, platform=platform,
                             credential=credential, host_key=info)
        try:
            await session.detect_privilege()
        except BaseException:
            session.close()
            raise
        return session

    async def _expected_key(self, target: SshTarget) -> tuple[str | None, HostKeySource]:
        if target.inventory_key:
            return target.inventory_key, "inventory"
        if not target.trust_first_use:
            from_disk = await self._pins.get_from_disk(target.service_id)
            if from_disk:
                return from_disk, "pinned"
            # Only the key exchange, no login (no credential leaves this process): an
            # unreachable server is reported as unreachable (the access decision differs), a
            # reachable one names the key it offers, for the engineer who confirms it.
            offered = await self._offered_key(target)
            raise SshError("host_key_unpinned",
                           f"{target.host}:{target.port} offers host key {offered} but has "
                           "none pinned from the inventory or its disk, and may not be "
                           "trusted on first use")
        pinned = await self._pins.get(target.service_id)
        return (pinned, "pinned") if pinned else (None, "first_use")

    async def _offered_key(self, target: SshTarget) -> str:
        async with self._host_slot(target.host, target.port), self._global:
            try:
                key = await asyncio.wait_for(asyncssh.get_server_host_key(
                    target.host, target.port, config=None), self._connect_timeout)
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                raise _transport_error(target, exc) from None
        if key is None:  # pragma: no cover - asyncssh always has one after kex
            raise SshError("ssh_error", "no host key offered")
        return str(key.get_fingerprint())

    async def _connect(self, target: SshTarget, username: str, credential: Credential | None,
                       expected: str | None, source: HostKeySource, *,
                       password: str | None = None, ticket_id: str | None = None,
                       ) -> tuple[asyncssh.SSHClientConnection, HostKeyInfo]:
        pinned_key = asyncssh.import_public_key(expected) if expected else None
        client_keys: list[asyncssh.SSHKey] | None = None
        secret = password
        if credential is not None:
            secret = credential.password
            if credential.private_key is not None:
                try:
                    client_keys = [asyncssh.import_private_key(credential.private_key)]
                except (asyncssh.KeyImportError, ValueError):
                    raise SshError("auth_failed", "the private key given cannot be read "
                                   "(only unencrypted OpenSSH keys are supported)") from None
        check = _HostKeyCheck(trust_unknown=pinned_key is None)
        options: dict[str, Any] = {
            "username": username, "password": secret, "client_keys": client_keys,
            # In memory, never ~/.ssh/known_hosts: the pinned key or nothing.
            "known_hosts": ([pinned_key] if pinned_key else [], [], []),
            "agent_path": None, "config": None, "preferred_auth":
                "publickey" if client_keys else "password,keyboard-interactive",
            "connect_timeout": self._connect_timeout, "login_timeout": self._connect_timeout,
            "keepalive_interval": 30, "encoding": "utf-8",
        }
        async with self._host_slot(target.host, target.port), self._global:
            try:
                conn, _ = await asyncio.wait_for(
                    asyncssh.create_connection(lambda: check, target.host, target.port,
                                               **options),
                    self._connect_timeout + 5)
            except asyncssh.HostKeyNotVerifiable:
                offered = check.offered.get_fingerprint() if check.offered else None
                expected_fp = pinned_key.get_fingerprint() if pinned_key else "a pinned key"
                raise HostKeyMismatch(host=target.host, port=target.port, expected=expected_fp,
                                      offered=offered, source=source) from None
            except asyncssh.PermissionDenied:
                raise SshError("auth_failed", f"{target.host}:{target.port} refused the "
                               f"credentials of {username}") from None
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                raise _transport_error(target, exc) from None
        server_key = conn.get_server_host_key()
        if server_key is None:  # pragma: no cover - asyncssh always has one after kex
            conn.close()
            raise SshError("ssh_error", "no host key negotiated")
        line = key_line(server_key)
        if pinned_key is not None:
            return conn, HostKeyInfo(source=source, fingerprint=server_key.get_fingerprint(),
                                     key_line=line)
        pin = await self._pins.pin(target.service_id, line, host=target.host, port=target.port,
                                   fingerprint=server_key.get_fingerprint(), ticket_id=ticket_id)
        if pin != line:
            # Another connection pinned a different key a moment ago: one of them lies.
            conn.close()
            raise HostKeyMismatch(
                host=target.host, port=target.port,
                expected=asyncssh.import_public_key(pin).get_fingerprint(),
                offered=server_key.get_fingerprint(), source="pinned")
        return conn, HostKeyInfo(source="first_use", fingerprint=server_key.get_fingerprint(),
                                 key_line=line, newly_pinned=True)

    async def fresh_login(self, target: SshTarget, host_key: HostKeyInfo, username: str,
                          password: str) -> CommandResult:
        """A brand-new connection with ``username``/``password``: does the credential work?"""
        began = time.perf_counter()
        try:
            conn, _ = await self._connect(target, username, None, host_key.key_line,
                                          host_key.source, password=password)
        except SshError as exc:
            elapsed = int((time.perf_counter() - began) * 1000)
            if exc.outcome == "auth_failed":
                return CommandResult(exit_status=1, stderr="login refused", duration_ms=elapsed)
            return CommandResult(exit_status=None, error=str(exc), duration_ms=elapsed)
        conn.close()
        with contextlib.suppress(Exception):
            await conn.wait_closed()
        return CommandResult(exit_status=0, stdout="login succeeded",
                             duration_ms=int((time.perf_counter() - began) * 1000))

    @property
    def command_timeout_s(self) -> float:
        return self._command_timeout

    @property
    def connect_timeout_s(self) -> float:
        return self._connect_timeout


_WINDOWS_IS_ADMIN = (
    "([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent())"
    ".IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)"
)


class SshSession:
    """One logged-in connection; the runbook engine's :class:`Host`."""

    def __init__(self, *, connector: SshConnector, conn: asyncssh.SSHClientConnection,
                 target: SshTarget, platform: Platform, credential: Credential,
                 host_key: HostKeyInfo) -> None:
        self._connector = connector
        self._conn = conn
        self.target = target
        self.platform: Platform = platform
        self._credential = credential
        self.host_key = host_key
        self.privilege: Privilege = "none"
        # Command shells (module docstring): opened on first use, None when closed. Once the
        # account's shell fails its handshake, every command takes a channel of its own.
        self._shells = connector.command_shells and platform == "linux"
        self._user_shell: CommandShell | None = None
        self._root_shell: CommandShell | None = None
        self._opening = asyncio.Lock()

    @property
    def privileged(self) -> bool:
        return self.privilege != "none"

    @property
    def username(self) -> str:
        return self._credential.username

    async def detect_privilege(self) -> None:
        if self.platform == "windows":
            result = await self._exec(powershell(_WINDOWS_IS_ADMIN), as_is=True)
            self.privilege = "root" if result.stdout.strip() == "True" else "none"
            return
        result = await self._exec(Command(argv=("id", "-u")), as_is=True)
        if result.exit_status == 0 and result.stdout.strip() == "0":
            self.privilege = "root"
            return
        if self._user_shell is not None:
            # The sudo that proves the privilege is the one that starts the root shell: one
            # password check for the whole connection.
            opened = await self._open_root_shell()
            if opened == "refused":
                return
            if opened != "unknown":
                self.privilege = opened
                return
        if (await self._exec(Command(argv=("sudo", "-k", "-n", "true")), as_is=True)
                ).exit_status == 0:
            self.privilege = "sudo_nopasswd"
            return
        if self._credential.password is not None:
            probe = Command(argv=("sudo", "-k", "-S", "-p", "", "--", "true"))
            result = await self._exec(probe, as_is=True,
                                      stdin=self._credential.password + "\n")
            if result.exit_status == 0:
                self.privilege = "sudo_password"

    def command_line(self, command: Command) -> tuple[str, str | None]:
        """The remote command line and stdin for ``command`` under this account's privilege."""
        if self.platform == "windows" or command.powershell:
            # Every token of an encoded PowerShell call is a plain word: no quoting needed,
            # and none is possible that cmd.exe and POSIX shells would both honour.
            return " ".join(command.argv), command.stdin
        line = shlex.join(command.argv)
        if not command.root or self.privilege == "root":
            return f"env PATH={STANDARD_PATH} {line}", command.stdin
        if self.privilege == "sudo_nopasswd":
            return f"sudo -n -- {line}", command.stdin
        if self.privilege == "sudo_password" and self._credential.password is not None:
            stdin = self._credential.password + "\n" + (command.stdin or "")
            return f"sudo -k -S -p '' -- {line}", stdin
        raise PermissionError("needs administrator rights")

    async def run(self, command: Command) -> CommandResult:
        try:
            return await self._exec(command)
        except PermissionError as exc:
            return CommandResult(exit_status=None, error=str(exc))

    async def _open_root_shell(
            self) -> Literal["sudo_password", "sudo_nopasswd", "refused", "unknown"]:
        started = await CommandShell.start(self._conn, sudo=True,
                                           password=self._credential.password,
                                           timeout=self._connector.connect_timeout_s)
        if started == "refused":
            return "refused"
        if started is None:
            return "unknown"
        try:
            status, out, _ = await started.run("id -u", self._connector.connect_timeout_s)
        except (TimeoutError, ShellGone, asyncssh.Error, OSError):
            started.close()
            return "unknown"
        if (status, out.strip()) != (0, b"0"):
            started.close()  # sudo runs commands as another user by default here
            return "refused"
        self._root_shell = started
        return "sudo_password" if started.asked_password else "sudo_nopasswd"

    async def _shell_for(self, command: Command, *, as_is: bool,
                         stdin: str | None) -> CommandShell | None:
        """The command shell ``command`` runs in, None for a channel of its own."""
        if not self._shells or command.powershell or (stdin if as_is else command.stdin):
            return None
        async with self._opening:  # one shell of each kind, even for concurrent callers
            if command.root and not as_is and self.privilege in ("sudo_password",
                                                                  "sudo_nopasswd"):
                if self._root_shell is None or self._root_shell.closed:
                    self._root_shell = None
                    # Reopened after a timeout closed it: the privilege must be as found.
                    if await self._open_root_shell() != self.privilege:
                        if self._root_shell is not None:
                            self._root_shell.close()
                        self._root_shell = None
                        return None
                return self._root_shell
            if command.root and not as_is and self.privilege != "root":
                return None  # refused by command_line, as on the channel path
            if self._user_shell is None or self._user_shell.closed:
                started = await CommandShell.start(self._conn, sudo=False, password=None,
                                                   timeout=self._connector.connect_timeout_s)
                if not isinstance(started, CommandShell):
                    self._shells = False  # this login shell takes no handshake: channels
                    return None
                self._user_shell = started
            return self._user_shell

    async def _exec(self, command: Command, *, as_is: bool = False,
                    stdin: str | None = None) -> CommandResult:
        shell = await self._shell_for(command, as_is=as_is, stdin=stdin)
        if shell is not None:
            return await self._in_shell(shell, command)
        if as_is:
            line, data = shlex.join(command.argv), stdin
            if command.powershell:
                line = " ".join(command.argv)
        else:
            line, data = self.command_line(command)
        timeout = command.timeout_s or self._connector.command_timeout_s
        began = time.perf_counter()
        try:
            completed = await self._conn.run(line, input=data, check=False, timeout=timeout)
        except asyncssh.TimeoutError:
            return CommandResult(exit_status=None, error=f"no answer within {timeout:.0f} s",
                                 duration_ms=int((time.perf_counter() - began) * 1000))
        except (asyncssh.Error, OSError) as exc:
            return CommandResult(exit_status=None,
                                 error=f"connection failed: {type(exc).__name__}",
                                 duration_ms=int((time.perf_counter() - began) * 1000))
        elapsed = int((time.perf_counter() - began) * 1000)
        status = completed.exit_status
        if status is None and completed.exit_signal is not None:
            return CommandResult(exit_status=None, stdout=self._tail(completed.stdout,
                                                                     MAX_STDOUT_CHARS),
                                 stderr=self._tail(completed.stderr, MAX_STDERR_CHARS),
                                 error=f"killed by signal {completed.exit_signal[0]}",
                                 duration_ms=elapsed)
        return CommandResult(exit_status=status,
                             stdout=self._tail(completed.stdout, MAX_STDOUT_CHARS),
                             stderr=self._tail(completed.stderr, MAX_STDERR_CHARS),
                             duration_ms=elapsed)

    async def _in_shell(self, shell: CommandShell, command: Command) -> CommandResult:
        timeout = command.timeout_s or self._connector.command_timeout_s
        began = time.perf_counter()
        try:
            status, out, err = await shell.run(shlex.join(command.argv), timeout)
        except TimeoutError:
            return CommandResult(exit_status=None, error=f"no answer within {timeout:.0f} s",
                                 duration_ms=int((time.perf_counter() - began) * 1000))
        except (ShellGone, asyncssh.Error, OSError):
            # The command may have run: it is reported as broken off, never run again.
            return CommandResult(exit_status=None, error="connection failed: the command "
                                 "shell closed", duration_ms=int((time.perf_counter() - began)
                                                                  * 1000))
        return CommandResult(exit_status=status, stdout=self._tail(out, MAX_STDOUT_CHARS),
                             stderr=self._tail(err, MAX_STDERR_CHARS),
                             duration_ms=int((time.perf_counter() - began) * 1000))

    def _tail(self, value: str | bytes | None, limit: int) -> str:
        return tail(value, limit, self._connector.redactor)

    async def fresh_login(self, username: str, password: str) -> CommandResult:
        return await self._connector.fresh_login(self.target, self.host_key, username, password)

    def close(self) -> None:
        self._conn.close()

    async def aclose(self) -> None:
        self._conn.close()
        with contextlib.suppress(Exception):
            await self._conn.wait_closed()


def tail(value: str | bytes | None, limit: int, redactor: Redactor) -> str:
    """A command's output as kept: redacted first, then its last ``limit`` characters."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
    return redactor.redact_tail(text, limit)
