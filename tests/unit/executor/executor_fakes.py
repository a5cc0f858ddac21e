"""In-memory stand-ins for the engine's ports: host, journal, audit log, vault, redactor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.executor.runbooks.engine import Engine, JournalEntry, LeaseLost
from services.executor.runbooks.model import Command, CommandResult, FreshLogin, RunOptions
from services.runtime.redaction import Redactor

Responder = Callable[[Command], CommandResult]


def ok(stdout: str = "", exit_status: int = 0) -> CommandResult:
    return CommandResult(exit_status=exit_status, stdout=stdout, duration_ms=1)


@dataclass
class FakeHost:
    responder: Responder = lambda command: ok()
    platform: Any = "linux"
    privileged: bool = True
    ran: list[Command] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    login_ok: bool = True

    async def run(self, command: Command) -> CommandResult:
        self.ran.append(command)
        return self.responder(command)

    async def fresh_login(self, username: str, password: str) -> CommandResult:
        self.logins.append((username, password))
        return ok() if self.login_ok else CommandResult(exit_status=1, duration_ms=1)

    def argvs(self) -> list[tuple[str, ...]]:
        return [c.argv for c in self.ran]


@dataclass
class FakeJournal:
    entries: dict[int, JournalEntry] = field(default_factory=dict)
    history: list[tuple[int, str, str | None]] = field(default_factory=list)
    lose_lease_on: str | None = None  # a state whose write fails with LeaseLost

    def entry(self, index: int) -> JournalEntry | None:
        return self.entries.get(index)

    async def record(self, index: int, entry: JournalEntry) -> None:
        if entry.state == self.lose_lease_on:
            raise LeaseLost("taken over")
        self.entries[index] = entry
        self.history.append((index, entry.state, entry.result))


@dataclass
class FakeLog:
    records: list[dict[str, Any]] = field(default_factory=list)

    async def command(self, **record: Any) -> None:
        self.records.append(record)


@dataclass
class FakeIssuer:
    reason: str | None = None
    deposits: dict[str, tuple[str, str]] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)

    async def unavailable(self) -> str | None:
        return self.reason

    async def deposit(self, *, step_key: str, account: str, secret: str) -> str:
        deposit_id = f"dep-{len(self.deposits)}"
        self.deposits[deposit_id] = (account, secret)
        self.events.append(("deposit", deposit_id))
        return deposit_id

    async def activate(self, deposit_id: str) -> None:
        self.events.append(("activate", deposit_id))

    async def discard(self, deposit_id: str) -> None:
        self.events.append(("discard", deposit_id))


@dataclass
class FakeSink:
    """Records what the engine teaches, and redacts with a real redactor of its own."""

    secrets: list[str] = field(default_factory=list)
    redactor: Redactor = field(default_factory=Redactor)

    def add(self, secret: str) -> None:
        self.secrets.append(secret)
        self.redactor.add(secret)

    def redact(self, value: Any) -> Any:
        return self.redactor.redact(value)


@dataclass
class Rig:
    host: FakeHost
    journal: FakeJournal
    log: FakeLog
    issuer: FakeIssuer
    sink: FakeSink
    spans: InMemorySpanExporter
    engine: Engine


def rig(host: FakeHost | None = None, *, journal: FakeJournal | None = None,
        issuer: FakeIssuer | None = None, dry_run: bool = False) -> Rig:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    host = host or FakeHost()
    journal = journal or FakeJournal()
    log, sink = FakeLog(), FakeSink()
    issuer = issuer or FakeIssuer()
    engine = Engine(host=host, journal=journal, log=log, issuer=issuer, secrets_sink=sink,
                    tracer=provider.get_tracer("test"),
                    options=RunOptions(dry_run=dry_run, service_settle_s=0))
    return Rig(host=host, journal=journal, log=log, issuer=issuer, sink=sink, spans=spans,
               engine=engine)


__all__ = ["Command", "FakeHost", "FreshLogin", "ok", "rig"]
