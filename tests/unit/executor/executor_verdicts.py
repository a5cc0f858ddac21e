"""Signed verdicts as auth makes them, for executor tests (unit, integration, bench)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "auth"))
from auth_factories import authorization

from schemas import SealedCredentials, ServerRef, TicketSubmitted, scope_of
from schemas.events import AuthorizationVerified, ResolvedServer, Vouch
from services.runtime.crypto import PublicSealingKey, SigningKey, seal_text, sign


def resolved_server(**overrides: Any) -> ResolvedServer:
    fields: dict[str, Any] = {
        "service_id": "SRV-1", "service_name": "web-01", "ip": "127.0.0.1", "type": "dedicated",
        "os_family": "linux", "ipkvm": True, "rescue": True, "ssh_port": 22,
        "datacenter": "MIL-1",
    }
    fields.update(overrides)
    return ResolvedServer.model_validate(fields)


def verdict(*, signing_key: SigningKey | None, sealing_key: PublicSealingKey, username: str,
            password: str, ticket_id: str | None = None, revision: int = 1,
            category: str = "diagnostics", parameters: dict[str, Any] | None = None,
            server: ResolvedServer | None = None, account_id: str = "ACC-1",
            at: datetime | None = None, **envelope: Any) -> AuthorizationVerified:
    now = at or datetime.now(UTC)
    ticket_id = ticket_id or f"HD-{uuid4().hex[:12]}"
    ticket = TicketSubmitted.new(
        ticket_id=ticket_id, revision=revision, occurred_at=now - timedelta(minutes=1),
        account_id=account_id, department="technical_issues", channel="client_area",
        language="en", server=ServerRef(service_id=(server or resolved_server()).service_id),
        category=category, category_source="form", confidence="high",
        scope=scope_of(category),  # type: ignore[arg-type]
        description="Please help with the server.", parameters=parameters or {},
        credentials=SealedCredentials(username=username, kind="password",
                                      sealed=seal_text(password, sealing_key)),
        authorization=authorization(signed_at=now - timedelta(minutes=5)),
        vouched_by=Vouch(integration="test-helpdesk", customer=f"portal:{account_id}"),
    )
    event = AuthorizationVerified.caused_by(
        ticket, account_id=account_id, ticket=ticket, server=server or resolved_server(),
        occurred_at=now, **envelope)
    if signing_key is None:
        return event
    return event.with_signature(sign(event.signed_bytes(), signing_key))
