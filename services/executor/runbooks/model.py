"""What a runbook is: data. Steps of pre-check, change, verification and rollback.

A :class:`Runbook` validates its parameters into a frozen model and turns them into an
ordered tuple of :class:`Step` declarations. Each part of a step is a small function of the
:class:`Context` (validated parameters plus facts learnt by earlier steps) that returns the
:class:`Command` values to run; the one engine (:mod:`services.executor.runbooks.engine`)
runs them, records them and decides what happens next.

Rules every declaration follows, because the engine relies on them:

- pre-checks and simulations are read-only (dry-run runs them);
- a command is an argument list built from validated values and constants; it is joined
  with :func:`shlex.join` (or encoded for PowerShell), never formatted from ticket text;
- secrets travel only in ``Command.stdin``, never in ``argv``;
- the step list depends on the parameters only, never on facts, so a resumed run finds
  the same step at the same index in its journal.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.common import field_errors, summarise
from schemas.scope import Category

Platform = Literal["linux", "windows"]
Phase = Literal["precheck", "simulate", "change", "verify", "rollback"]
StepResult = Literal[
    "ok", "changed", "no_change_needed", "failed", "rolled_back", "skipped", "planned"
]

P = TypeVar("P", bound=BaseModel)

# sudo's secure_path on Debian/Ubuntu; used for unprivileged commands too, because an
# admin's login PATH often lacks the sbin directories where smartctl, mdadm and sshd live.
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, kw_only=True)
class Command:
    """One command for the remote host.

    ``ok_exit`` lists the exit statuses that are answers rather than failures (``grep``
    exits 1 for "no match"); ``None`` accepts any status (``smartctl`` returns a bit mask
    the parser reads). ``stdin`` may hold a secret: it is never displayed or recorded.
    """

    argv: tuple[str, ...]
    root: bool = False
    stdin: str | None = field(default=None, repr=False)
    ok_exit: frozenset[int] | None = frozenset({0})
    timeout_s: float | None = None
    shown: str | None = None  # what to display instead of argv (PowerShell's script)
    powershell: bool = False

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0] or self.argv[0].startswith("-"):
            raise ValueError("a command needs a program name as its first argument")

    def display(self) -> str:
        text = self.shown if self.shown is not None else shlex.join(self.argv)
        return f"[as administrator] {text}" if self.root else text

    def accepts(self, exit_status: int | None) -> bool:
        if exit_status is None:
            return False
        return self.ok_exit is None or exit_status in self.ok_exit


def sh(script: str, *args: str, root: bool = False,
       ok_exit: frozenset[int] | None = frozenset({0})) -> Command:
    """A constant POSIX shell script with values passed as positional parameters.

    The script is a literal of this codebase; ticket values only ever arrive as ``"$1"``
    and friends, so no value is parsed as shell syntax.
    """
    return Command(argv=("sh", "-c", script, "sh", *args), root=root, ok_exit=ok_exit)


# PowerShell reads five characters as a single quote (its tokenizer's IsSingleQuote):
# ASCII ' and the typographic U+2018, U+2019, U+201A, U+201B. Any of them, unescaped, ends a
# single-quoted literal, so each is doubled.
_PS_SINGLE_QUOTES = re.compile("['\u2018\u2019\u201a\u201b]")


def ps_quote(value: str) -> str:
    """A PowerShell single-quoted string literal (only single quotes are special inside one,
    in all five of the forms PowerShell accepts)."""
    return "'" + _PS_SINGLE_QUOTES.sub(lambda m: m.group(0) * 2, value) + "'"


def powershell(script: str, *, root: bool = False, stdin: str | None = None,
               ok_exit: frozenset[int] | None = frozenset({0})) -> Command:
    """A PowerShell script for Windows OpenSSH hosts, sent as ``-EncodedCommand``.

    Windows OpenSSH hands the command line to ``cmd.exe`` by default, whose quoting has
    nothing in common with POSIX; base64 UTF-16LE sidesteps quoting entirely. Values go
    into the script through :func:`ps_quote`.
    """
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return Command(argv=("powershell.exe", "-NoProfile", "-NonInteractive", "-EncodedCommand",
                         encoded), root=root, stdin=stdin, ok_exit=ok_exit,
                   shown=f"powershell: {script}", powershell=True)


@dataclass(frozen=True, kw_only=True)
class FreshLogin:
    """Verify a credential by opening a new SSH connection with it."""

    username: str
    secret: str = field(repr=False)

    def display(self) -> str:
        return f"fresh SSH login as {self.username} with the new password"


Operation = Command | FreshLogin


@dataclass(frozen=True, kw_only=True)
class BackupNote:
    """A copy a step made of what it changes: where it is, and what it is of."""

    location: str
    description: str

    def to_json(self) -> dict[str, str]:
        return {"location": self.location, "description": self.description}


@dataclass(frozen=True, kw_only=True)
class CommandResult:
    exit_status: int | None  # None: the command did not run to completion
    stdout: str = ""
    stderr: str = ""
    duration_ms: int = 0
    error: str | None = None  # why it did not complete (timeout, connection lost, ...)


Results = tuple[CommandResult, ...]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    dry_run: bool = False
    service_settle_s: float = 3.0


@dataclass(kw_only=True)
class Context(Generic[P]):
    """What a step's functions see: validated parameters, the platform, learnt facts."""

    params: P
    platform: Platform
    options: RunOptions
    facts: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    resuming: bool = False

    def fact(self, name: str, default: str = "") -> str:
        value = self.facts.get(name)
        return value if isinstance(value, str) else default

    def satisfies(self, requirement: str) -> bool:
        """``root``, ``tool:<name>``, ``flag:<name>`` (learnt by a detect step) or
        ``fact:<name>`` (any truthy learnt fact)."""
        if requirement == "root":
            return bool(self.facts.get("privileged"))
        kind, _, name = requirement.partition(":")
        if kind == "tool":
            return name in self.facts.get("tools", ())
        if kind == "flag":
            return name in self.facts.get("flags", ())
        if kind == "fact":
            return bool(self.facts.get(name))
        raise ValueError(f"unknown step requirement {requirement!r}")


def _always(results: Results, ctx: Context[Any]) -> bool:
    return True


@dataclass(frozen=True, kw_only=True)
class Step(Generic[P]):
    """One step of a runbook.

    Order of play: ``requires`` (else skipped) → ``precheck`` → ``learn`` facts → ``refuse``
    (a reason stops the step as failed, before any change) → ``needed``? → ``simulate`` →
    ``change`` → wait ``settle`` → ``verify`` → ``rollback`` if verification fails
    (verification passes when every verify command exits with an accepted status and
    ``verified`` agrees). A step without ``change`` is a check. ``rerunnable`` says whether a change
    interrupted by a crash may be re-run once the pre-check says it is still needed;
    otherwise the engine hands the step to an engineer. ``issues_credential`` names the
    account whose new password the step sets: the engine generates it, deposits it
    (sealed) with the customer's credential vault before the change and activates the
    deposit once the change succeeded. ``backups`` lists the copies the step's change made
    (a backup step's declaration): the engine records each in the audit trail, with its
    location, once the change succeeded, and the completion lists them for the customer.
    """

    name: str
    title: str
    requires: tuple[str, ...] = ()
    precheck: Callable[[Context[P]], Sequence[Command]] | None = None
    learn: Callable[[Results, Context[P]], Mapping[str, Any]] | None = None
    refuse: Callable[[Results, Context[P]], str | None] | None = None
    needed: Callable[[Results, Context[P]], bool] = _always
    simulate: Callable[[Context[P]], Sequence[Command]] | None = None
    change: Callable[[Context[P]], Sequence[Operation]] | None = None
    settle: Callable[[Context[P]], float] | None = None
    verify: Callable[[Context[P]], Sequence[Operation]] | None = None
    verified: Callable[[Results, Context[P]], bool] = _always
    rollback: Callable[[Context[P]], Sequence[Command]] | None = None
    rerunnable: bool | Callable[[Context[P]], bool] = True
    issues_credential: Callable[[Context[P]], str] | None = None
    blocking: bool = True
    manual_instructions: tuple[str, ...] = ()
    backups: Callable[[Context[P]], Sequence[BackupNote]] | None = None

    def is_rerunnable(self, ctx: Context[P]) -> bool:
        return self.rerunnable if isinstance(self.rerunnable, bool) else self.rerunnable(ctx)


class ParameterError(ValueError):
    """Ticket parameters a runbook cannot use; the message names fields, never values."""

    def __init__(self, runbook: str, message: str) -> None:
        super().__init__(f"parameters for runbook {runbook}: {message}")
        self.runbook = runbook


@dataclass(frozen=True, kw_only=True)
class Runbook(Generic[P]):
    name: str
    category: Category
    title: str
    platforms: frozenset[Platform]
    params: type[P]
    build: Callable[[P, Platform], tuple[Step[P], ...]]
    needs_root: bool = True

    def parse_params(self, raw: Mapping[str, object]) -> P:
        try:
            return self.params.model_validate(dict(raw))
        except ValidationError as exc:
            raise ParameterError(self.name, summarise(field_errors(exc))) from None

    def steps(self, params: P, platform: Platform) -> tuple[Step[P], ...]:
        if platform not in self.platforms:
            raise ValueError(f"runbook {self.name} has no {platform} variant")
        steps = self.build(params, platform)
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"runbook {self.name} has duplicate step names")
        return steps
