"""What a runbook run records and returns, and the ports the engine runs through.

The journal entry per step (``changing`` → ``changed`` → ``done``), the customer-facing
action line, the outcome of each step and of the run, and a hand-over when the automation
stops: plain values, stored in the claim and read back by a resumed run. The Protocols are
what :mod:`services.executor.runbooks.engine` needs from the host, the journal, the audit
log and the credential vault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from services.executor.runbooks.model import (
    BackupNote,
    Command,
    CommandResult,
    Phase,
    Platform,
    StepResult,
)

JournalState = Literal["changing", "changed", "done"]


class LeaseLost(Exception):
    """This executor no longer owns the claim; another one may be running it."""


@dataclass(frozen=True, kw_only=True)
class ActionRecord:
    """The customer-facing line for one step (becomes a schemas ``Action``)."""

    step: str
    command: str
    exit_status: int | None
    duration_ms: int
    result: StepResult

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "command": self.command, "exit_status": self.exit_status,
                "duration_ms": self.duration_ms, "result": self.result}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ActionRecord:
        return cls(step=str(data["step"]), command=str(data["command"]),
                   exit_status=data.get("exit_status"),
                   duration_ms=int(data.get("duration_ms") or 0), result=data["result"])


@dataclass(frozen=True, kw_only=True)
class JournalEntry:
    name: str
    state: JournalState
    result: StepResult | None = None
    reason: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    action: ActionRecord | None = None
    credential: str | None = None  # deposit id of a credential this step issued
    credential_active: bool = False
    backups: tuple[BackupNote, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "result": self.result,
                "reason": self.reason, "facts": self.facts,
                "action": self.action.to_json() if self.action else None,
                "credential": self.credential, "credential_active": self.credential_active,
                "backups": [b.to_json() for b in self.backups],
                "at": datetime.now(UTC).isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        action = data.get("action")
        return cls(name=str(data["name"]), state=data["state"], result=data.get("result"),
                   reason=data.get("reason"), facts=dict(data.get("facts") or {}),
                   action=ActionRecord.from_json(action) if action else None,
                   credential=data.get("credential"),
                   credential_active=bool(data.get("credential_active")),
                   backups=tuple(BackupNote(location=str(b["location"]),
                                            description=str(b["description"]))
                                 for b in data.get("backups") or ()))


class StepJournal(Protocol):
    def entry(self, index: int) -> JournalEntry | None: ...

    async def record(self, index: int, entry: JournalEntry) -> None:
        """Durably store ``entry``; raise :class:`LeaseLost` if the claim is not ours."""


class CommandLog(Protocol):
    async def command(self, *, index: int, step: str, phase: Phase, n: int, display: str,
                      root: bool, result: CommandResult) -> None:
        """Audit one command as it happened (display and output get redacted there)."""


class Host(Protocol):
    @property
    def platform(self) -> Platform: ...

    @property
    def privileged(self) -> bool: ...

    async def run(self, command: Command) -> CommandResult: ...

    async def fresh_login(self, username: str, password: str) -> CommandResult: ...


class CredentialIssuer(Protocol):
    async def unavailable(self) -> str | None:
        """Why a new credential cannot be deposited for the customer (None: it can)."""

    async def deposit(self, *, step_key: str, account: str, secret: str) -> str:
        """Store ``secret`` sealed to the customer, pending; return the deposit id."""

    async def activate(self, deposit_id: str) -> None: ...

    async def discard(self, deposit_id: str) -> None: ...


class SecretSink(Protocol):
    """The process's redactor: learns the secrets a run creates, and masks every secret it
    knows in what the run writes to its journal (a reason or a fact can quote output)."""

    def add(self, secret: str) -> None: ...

    def redact(self, value: Any) -> Any: ...


class BackupLog(Protocol):
    async def backup(self, *, index: int, step: str, notes: Sequence[BackupNote]) -> None:
        """Audit the copies a step made, with their locations (idempotent per step)."""


@dataclass(frozen=True, kw_only=True)
class Handover:
    """A step the automation stops at; an engineer takes it from here (ManualStepRequested)."""

    index: int
    step: str
    title: str
    reason: str
    instructions: tuple[str, ...]
    verification: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class StepOutcome:
    index: int
    name: str
    result: StepResult
    reason: str | None
    action: ActionRecord
    facts: dict[str, Any]
    credential_issued: bool = False
    backups: tuple[BackupNote, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RunResult:
    steps: tuple[StepOutcome, ...]
    facts: dict[str, Any]
    handover: Handover | None = None

    @property
    def new_credentials_issued(self) -> bool:
        return any(s.credential_issued for s in self.steps)

    @property
    def actions(self) -> tuple[ActionRecord, ...]:
        return tuple(s.action for s in self.steps)

    @property
    def backups(self) -> tuple[BackupNote, ...]:
        return tuple(b for s in self.steps for b in s.backups)
