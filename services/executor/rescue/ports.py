"""What the rescue flow (:mod:`services.executor.rescue.flow`) needs from the executor and
what it hands back: its ports, its timing, its failure and its result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from schemas.values import SealedSecret
from services.executor.claims import Claim, ClaimStore, Owner
from services.executor.rescue.provider import RescueProvider
from services.executor.runbooks.engine import CredentialIssuer, Engine, Handover, RunResult
from services.executor.ssh import HostKeyPins, SshConnector, SshSession
from services.runtime.redaction import Redactor, default_redactor

AuditFn = Callable[[Claim, str, str, Mapping[str, Any]], Awaitable[None]]
EngineFactory = Callable[[SshSession, CredentialIssuer], Engine]


@dataclass(frozen=True, kw_only=True)
class RescueTiming:
    boot_timeout_s: float = 900.0
    poll_s: float = 5.0
    ssh_wait_s: float = 120.0  # for the rescue system's sshd, and the server's after boot-back


@dataclass(kw_only=True)
class RescuePorts:
    """What the flow needs from the executor, wired by :mod:`services.executor.runs`."""

    provider: RescueProvider
    claims: ClaimStore
    owner: Owner
    connector: SshConnector
    pins: HostKeyPins
    audit: AuditFn
    engine: EngineFactory
    seal: Callable[[str], SealedSecret]
    unseal: Callable[[SealedSecret], str]
    tracer: trace.Tracer
    timing: RescueTiming = field(default_factory=RescueTiming)
    # EXECUTOR_RESCUE_MANAGEMENT_SOURCES: where a firewall repair lets SSH in from.
    management_sources: tuple[str, ...] = ()
    # The process's redactor: holds this run's secrets for as long as the run lasts.
    redactor: Redactor = field(default_factory=default_redactor)


class RescueFailed(Exception):
    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(reason)
        self.phase = phase
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class RescueResult:
    run: RunResult
    handover: Handover | None = None
