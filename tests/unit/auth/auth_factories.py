"""Test data for auth: tickets, inventory records and keys, built as the services build them.

Imported by the auth unit tests (their folder is on ``sys.path``), the auth integration
tests and ``bench/bench_auth.py`` (which put this folder on ``sys.path`` themselves).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from schemas import (
    SealedCredentials,
    ServerRef,
    TicketSubmitted,
    WrittenAuthorization,
    scope_of,
)
from schemas.events import Vouch
from services.auth.inventory import ServerRecord
from services.runtime.crypto import PrivateSealingKey, SigningKey, seal

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
# The executor's key: tests seal with its public half, as intake does. Auth never sees it.
EXECUTOR_KEY = PrivateSealingKey.generate()
AUTH_KEY = SigningKey.generate()

STATEMENT = "I authorize the provider's support to perform OS-level intervention on this server."


def authorization(**overrides: Any) -> WrittenAuthorization:
    fields: dict[str, Any] = {
        "statement": STATEMENT,
        "accepts_backup_responsibility": True,
        "accepts_service_interruption": True,
        "accepts_data_loss_disclaimer": True,
        "signed_by": "Jane Doe",
        "signed_at": NOW - timedelta(minutes=3),
    }
    fields.update(overrides)
    return WrittenAuthorization(**fields)


def credentials(secret: bytes = b"correct horse battery staple") -> SealedCredentials:
    return SealedCredentials(
        username="admin", kind="password", sealed=seal(secret, EXECUTOR_KEY.public)
    )


def ticket(
    *,
    ticket_id: str | None = None,
    revision: int = 1,
    server: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    at: datetime = NOW,
    **overrides: Any,
) -> TicketSubmitted:
    """A valid ticket revision submitted a minute before ``at`` (the decision's "now";
    pass the real time for tests that run the service's clock)."""
    fields: dict[str, Any] = {
        "account_id": "ACC-1",
        "department": "technical_issues",
        "channel": "client_area",
        "language": "en",
        "server": ServerRef.model_validate(server or {"ip": "203.0.113.10"}),
        "category": "diagnostics",
        "category_source": "form",
        "confidence": "high",
        "description": "Server answers ping but SSH times out since this morning.",
        "credentials": credentials(),
        "authorization": authorization(signed_at=at - timedelta(minutes=3)),
        "vouched_by": Vouch(integration="test-helpdesk", customer="client:1"),
    }
    fields.update(overrides)
    fields.setdefault("scope", scope_of(fields["category"]))
    return TicketSubmitted.new(
        ticket_id=ticket_id or f"HD-{uuid4().hex[:12]}",
        revision=revision,
        occurred_at=occurred_at or at - timedelta(minutes=1),
        **fields,
    )


def server(**overrides: Any) -> ServerRecord:
    fields: dict[str, Any] = {
        "service_id": "SRV-1",
        "service_name": "web-01",
        "ips": "203.0.113.10 2001:db8::10",
        "account_id": "ACC-1",
        "authorized_contacts": "ACC-2",
        "type": "dedicated",
        "os_family": "linux",
        "ipkvm": True,
        "rescue": True,
        "ssh_port": 22,
        "datacenter": "MIL-1",
    }
    fields.update(overrides)
    return ServerRecord.model_validate(fields)
