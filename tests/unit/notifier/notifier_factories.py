"""Events as the other services publish them, for the notifier's tests and benchmark.

Imported by the notifier's unit tests (this folder is on ``sys.path`` via conftest), its
integration tests and ``bench/bench_notifier.py`` (which add this folder themselves).
Free-text fields take a ``text`` marker so a test can tell where each one ends up.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from schemas import (
    Action,
    AuthorizationRejected,
    Backup,
    ClarificationRequested,
    EngineerAcknowledged,
    FieldError,
    HardwareEscalated,
    InterventionCompleted,
    InterventionQueued,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
    SealedCredentials,
    ServerRef,
    TicketRejected,
    TicketSubmitted,
    WrittenAuthorization,
    scope_of,
)
from schemas.envelope import Producer
from services.runtime.crypto import PrivateSealingKey, seal

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
EXECUTOR_KEY = PrivateSealingKey.generate()
PASSWORD = "Tr0ub4dor&3-notifier-test-password"


def new_ticket_id() -> str:
    return f"HD-{uuid4().hex[:12]}"


def submitted(*, ticket_id: str | None = None, revision: int = 1, at: datetime = NOW,
              text: str = "t", **overrides: Any) -> TicketSubmitted:
    fields: dict[str, Any] = {
        "account_id": "ACC-1",
        "department": "technical_issues",
        "channel": "client_area",
        "language": "en",
        "server": ServerRef(service_name=f"web-{text}"[:255]),
        "category": "diagnostics",
        "category_source": "form",
        "confidence": "high",
        "description": f"description {text}: my root password is {PASSWORD}",
        "error_messages": (f"error message {text}",),
        "parameters": {"note": f"parameter {text}"},
        "credentials": SealedCredentials(
            username=f"user-{text}"[:200], kind="password",
            sealed=seal(PASSWORD.encode(), EXECUTOR_KEY.public)),
        "authorization": WrittenAuthorization(
            statement=f"statement {text}", accepts_backup_responsibility=True,
            accepts_service_interruption=True, accepts_data_loss_disclaimer=True,
            signed_by=f"signer {text}", signed_at=at - timedelta(minutes=5)),
    }
    fields.update(overrides)
    fields.setdefault("scope", scope_of(fields["category"]))
    return TicketSubmitted.new(ticket_id=ticket_id or new_ticket_id(), revision=revision,
                               occurred_at=at, **fields)


def _cause(ticket: TicketSubmitted, at: datetime, revision: int | None = None
           ) -> dict[str, Any]:
    return {"ticket_id": ticket.ticket_id, "revision": revision or ticket.revision,
            "causation_id": ticket.event_id, "occurred_at": at}


def rejected(*, ticket_id: str | None = None, text: str = "t", language: str = "en",
             at: datetime = NOW) -> TicketRejected:
    return TicketRejected.new(
        ticket_id=ticket_id or new_ticket_id(), revision=1, occurred_at=at, language=language,
        errors=(FieldError(field="server.ip", message=f"not a valid IP address ({text})",
                           code="ip_any_address"),))


def auth_rejected(ticket: TicketSubmitted, *, at: datetime = NOW, text: str = "t",
                  reasons: tuple[str, ...] = ("not_owner",)) -> AuthorizationRejected:
    return AuthorizationRejected.new(**_cause(ticket, at), reasons=reasons,
                                     details=f"details {text}")


def clarification(ticket: TicketSubmitted, *, at: datetime = NOW, text: str = "t",
                  producer: Producer = "executor", revision: int | None = None
                  ) -> ClarificationRequested:
    return ClarificationRequested.new(**_cause(ticket, at, revision), producer=producer,
                                      question=f"question {text}?", field="server")


def started(ticket: TicketSubmitted, *, at: datetime = NOW, text: str = "t",
            timeline: str = "standard", mode: str = "automated", method: str = "ssh",
            revision: int | None = None) -> InterventionStarted:
    return InterventionStarted.new(**_cause(ticket, at, revision), access_method=method,
                                   reason=f"reason {text}", runbook="diagnostics", mode=mode,
                                   timeline=timeline)


def queued(ticket: TicketSubmitted, *, at: datetime = NOW, position: int = 3,
           starts_in: timedelta = timedelta(minutes=4), revision: int | None = None
           ) -> InterventionQueued:
    return InterventionQueued.new(**_cause(ticket, at, revision), position=position,
                                  expected_start_at=at + starts_in,
                                  typical_run_seconds=120, concurrency=1)


def manual_step(ticket: TicketSubmitted, *, at: datetime = NOW, text: str = "t",
                step_id: str = "step-1", method: str = "ipkvm") -> ManualStepRequested:
    return ManualStepRequested.new(
        **_cause(ticket, at), step_id=step_id, method=method,
        instructions=(f"instruction {text}",), verification=(f"verification {text}",),
        reason=f"step reason {text}", deadline=at + timedelta(hours=1))


def step_completed(ticket: TicketSubmitted, step: ManualStepRequested, *,
                   at: datetime = NOW, text: str = "t", status: str = "done"
                   ) -> ManualStepCompleted:
    return ManualStepCompleted.new(
        ticket_id=ticket.ticket_id, revision=ticket.revision, causation_id=step.event_id,
        occurred_at=at, step_id=step.step_id, status=status, notes=f"notes {text}",
        engineer_id="ENG-1", display_name=f"engineer {text}", channel="matrix")


def completed(ticket: TicketSubmitted, *, at: datetime = NOW, text: str = "t",
              outcome: str = "resolved", new_credentials: bool = True,
              revision: int | None = None) -> InterventionCompleted:
    return InterventionCompleted.new(
        **_cause(ticket, at, revision), outcome=outcome, access_method="ssh",
        actions=(Action(step=f"step {text}", command=f"command {text}", exit_status=0,
                        duration_ms=1200, result="changed"),),
        backups=(Backup(location=f"/root/backup-{text}", description=f"backup {text}"),),
        new_credentials_issued=new_credentials, recommendations=(f"recommendation {text}",),
        reason=f"outcome reason {text}" if outcome != "resolved" else None)


def hardware(ticket: TicketSubmitted, *, at: datetime = NOW, text: str = "t"
             ) -> HardwareEscalated:
    return HardwareEscalated.new(**_cause(ticket, at), component="disk", device="/dev/sda",
                                 evidence=(f"evidence {text}: SMART reallocated sectors",),
                                 severity="critical")


def acknowledged(ticket: TicketSubmitted, page_id: UUID, *, at: datetime = NOW,
                 text: str = "t") -> EngineerAcknowledged:
    return EngineerAcknowledged.new(
        ticket_id=ticket.ticket_id, revision=ticket.revision, causation_id=page_id,
        occurred_at=at, engineer_id="ENG-1", display_name=f"engineer {text}", channel="matrix",
        acknowledged_event_id=page_id)
