"""Long-lived command shells over one SSH channel each (see :mod:`services.executor.ssh`).

A session keeps two: the account's, and root's from the one ``sudo -k -S`` that also proves
the privilege. Each command is framed by a random marker carrying its exit status, so it
keeps its own output and status while paying for neither a channel nor a sudo password
check of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
from typing import Literal

import asyncssh

from services.executor.runbooks.model import STANDARD_PATH


class ShellGone(Exception):
    """A command shell's channel closed before the command's marker came back."""


class CommandShell:
    """A long-lived POSIX ``sh`` on one channel that runs commands one after another.

    Each command is written as ``(<command line>) </dev/null`` followed by a random marker
    printed with the exit status, on stdout and on stderr; its output is what came before
    the marker. The marker is new for every command, so output cannot end a command early
    unless it guesses 128 random bits. Output arriving after a marker (a background
    process the command left behind, still writing) closes the shell, so it cannot be
    taken for the next command's; a sudo configured with a prompt of its own
    (``passprompt_override``) is not recognised and ends in a timeout, after which the
    session falls back to a channel per command.
    """

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process
        self._lock = asyncio.Lock()
        self.closed = False
        self.asked_password = False  # sudo asked for (and accepted) the password

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection, *, sudo: bool,
                    password: str | None, timeout: float,
                    ) -> CommandShell | Literal["refused"] | None:
        """Start ``sh`` as the account, or as root through sudo; it announces itself with
        a random word.

        Through sudo, the password (if any) is written only when sudo asks for it with
        this call's own random prompt, so an account that needs none (NOPASSWD) is told
        apart by the shell answering without a prompt. Returns the shell, ``"refused"``
        when sudo would not run it (it asked a second time: wrong password; or exited:
        not a sudoer), None when no shell answered (an unusual login shell, a timeout):
        the caller then uses a channel per command.
        """
        ready = f"ivt-ready-{secrets.token_hex(16)}".encode()
        prompt = f"ivt-password-{secrets.token_hex(16)}:"
        script = shlex.join(("sh", "-c", f"echo {ready.decode()}; exec sh"))
        if not sudo:
            launcher = f"env PATH={STANDARD_PATH}"
        elif password is None:
            launcher = "sudo -n --"
        else:
            launcher = f"sudo -k -S -p {shlex.quote(prompt)} --"
        try:
            process = await asyncio.wait_for(
                conn.create_process(f"exec {launcher} {script}", encoding=None), timeout)
        except (TimeoutError, asyncssh.Error, OSError):
            return None
        shell = cls(process)
        started: bool | Literal["refused"] = False
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            started = await asyncio.wait_for(
                shell._announce(ready, prompt.encode(), password if sudo else None), timeout)
        if started is True:
            return shell
        shell.close()
        return "refused" if started == "refused" and sudo else None

    async def _announce(self, ready: bytes, prompt: bytes,
                        password: str | None) -> bool | Literal["refused"]:
        stdout, stderr = self._process.stdout, self._process.stderr
        shell_up = asyncio.ensure_future(stdout.readuntil(ready + b"\n"))
        asked = asyncio.ensure_future(stderr.readuntil(prompt))
        try:
            if password is None:
                await _first(shell_up)
                return True if _succeeded(shell_up) else "refused"
            await _first(shell_up, asked)
            if _succeeded(shell_up):
                return True  # no prompt: this account needs no password for sudo
            if not _succeeded(asked):
                return "refused"  # sudo exited without asking: not a sudoer at all
            # Nothing but the password is sent before the shell announced itself, so no
            # command line is ever read by sudo as a password attempt.
            self._process.stdin.write(password.encode() + b"\n")
            asked = asyncio.ensure_future(stderr.readuntil(prompt))
            await _first(shell_up, asked)
            self.asked_password = True
            return True if _succeeded(shell_up) else "refused"
        finally:
            for task in (shell_up, asked):
                task.cancel()
            await asyncio.gather(shell_up, asked, return_exceptions=True)

    async def run(self, line: str, timeout: float) -> tuple[int, bytes, bytes]:
        """Exit status, stdout and stderr of ``line``; TimeoutError (the shell is closed
        then, like a channel that timed out) or :class:`ShellGone`."""
        async with self._lock:
            if self.closed:
                raise ShellGone
            mark = secrets.token_hex(16)
            self._process.stdin.write(
                f"({line}) </dev/null; printf '\\n%s %s\\n' {mark} \"$?\"; "
                f"printf '\\n%s\\n' {mark} >&2\n".encode())
            # Found with bytes.find, not a regular expression: a pattern per random marker
            # would be compiled anew for every command (and flush the re module's cache).
            end = b"\n" + mark.encode()
            try:
                (out, status, out_extra), (err, _, err_extra) = await asyncio.wait_for(
                    asyncio.gather(_until(self._process.stdout, end + b" "),
                                   _until(self._process.stderr, end + b"\n")), timeout)
            except BaseException:
                self.close()
                raise
            if out_extra or err_extra:
                # Something (a background process the command left) writes after the
                # marker: later commands' output would be mixed with it.
                self.close()
            return status, out, err

    def close(self) -> None:
        self.closed = True
        self._process.close()


async def _first(*tasks: asyncio.Future[bytes]) -> None:
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)


def _succeeded(task: asyncio.Future[bytes]) -> bool:
    """Done with a result (EOF before the word raises IncompleteReadError)."""
    return task.done() and not task.cancelled() and task.exception() is None


async def _until(reader: asyncssh.SSHReader[bytes], end: bytes) -> tuple[bytes, int, bool]:
    """Everything ``reader`` gives up to the ``end`` marker: (data, the number that follows
    a marker ending in a space, up to its newline; whether more data followed)."""
    buffer = bytearray()
    searched = 0
    while True:
        at = buffer.find(end, searched)
        if at >= 0:
            tail = at + len(end)
            if not end.endswith(b" "):
                return bytes(buffer[:at]), 0, tail != len(buffer)
            newline = buffer.find(b"\n", tail)
            if newline >= 0 and buffer[tail:newline].isdigit():
                return bytes(buffer[:at]), int(buffer[tail:newline]), newline + 1 != len(buffer)
            if newline >= 0:
                raise ShellGone  # not a status: the protocol is broken
            searched = at  # the status is still on its way
        else:
            # A marker may straddle two reads: search again from before the old end.
            searched = max(0, len(buffer) - len(end))
        chunk = await reader.read(65536)
        if not chunk:
            raise ShellGone
        buffer += chunk
