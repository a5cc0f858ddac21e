"""GET /v1/tickets/{id}: status and timeline from audit records, with nothing secret in it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from services.intake.timeline import ticket_status
from services.runtime.audit import AuditRecord

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CIPHERTEXT = "Q2lwaGVydGV4dC1zaG91bGQtbm90LWJlLXNob3du"


def record(seq: int, kind: str, data: dict[str, Any], actor: str = "intake") -> AuditRecord:
    return AuditRecord(ticket_id="HD-1", seq=seq, record_id=f"r{seq}", kind=kind, actor=actor,
                       at=T0 + timedelta(seconds=seq), data=data, prev_hash="0" * 64,
                       hash="f" * 64)


def event(seq: int, event_type: str, actor: str = "intake", **fields: Any) -> AuditRecord:
    body = {"event_type": event_type, "ticket_id": "HD-1", "revision": 1, **fields}
    return record(seq, "event", {"event_type": event_type, "topic": "t", "event": body}, actor)


SUBMITTED = event(
    2, "TicketSubmitted", category="root_password_reset", scope="included",
    confidence="high", category_source="classified",
    description="my password is hunter2, please reset it",
    credentials={"username": "root", "kind": "password",
                 "sealed": {"key_id": "exec-1", "ciphertext": CIPHERTEXT}},
    authorization={"statement": "I authorize", "signed_by": "Jane Doe"},
)


def test_unknown_ticket_has_no_status() -> None:
    assert ticket_status("HD-1", []) is None


def test_submitted_ticket_shows_category_and_sealed_credentials_only() -> None:
    status = ticket_status("HD-1", [
        record(1, "intake.refused", {"revision": 1, "reason": "stale", "source": "topic"}),
        SUBMITTED,
    ])
    assert status is not None
    assert (status.status, status.revision, status.category, status.scope, status.credentials) == (
        "submitted", 1, "root_password_reset", "included", "sealed")
    assert [e.kind for e in status.timeline] == ["intake.refused", "event"]
    assert status.timeline[0].details == {"revision": 1, "reason": "stale"}
    assert status.timeline[1].details["credentials"] == "sealed"
    shown = status.model_dump_json()
    for secret in (CIPHERTEXT, "hunter2", "exec-1", "Jane Doe", "I authorize"):
        assert secret not in shown


def test_status_follows_the_lifecycle_and_ignores_bystander_events() -> None:
    status = ticket_status("HD-1", [
        SUBMITTED,
        event(3, "AuthorizationVerified", "auth", review_required=False,
              signature={"key_id": "auth-1", "value": "c2lnbmF0dXJl"}),
        event(4, "InterventionStarted", "executor", access_method="ssh", runbook="reset",
              mode="automated"),
        event(5, "InterventionCompleted", "executor", outcome="resolved",
              actions=[{"command": "chpasswd root <<< hunter2"}]),
        event(6, "TicketUpdated", "notifier", kind="completion", message="Done.",
              language="en"),
    ])
    assert status is not None
    assert (status.status, status.outcome) == ("completed", "resolved")
    shown = json.loads(status.model_dump_json())
    assert "c2lnbmF0dXJl" not in json.dumps(shown)
    assert "hunter2" not in json.dumps(shown)
    assert shown["timeline"][2]["details"] == {"access_method": "ssh", "runbook": "reset",
                                               "mode": "automated"}


def test_rejection_shows_the_errors_to_fix() -> None:
    errors = [{"field": "channel", "message": "live chat is for consultation only"}]
    status = ticket_status("HD-1", [event(1, "TicketRejected", errors=errors, language="it")])
    assert status is not None
    assert status.status == "rejected"
    assert status.timeline[0].details == {"errors": errors}


def test_a_new_revision_reopens_the_ticket() -> None:
    status = ticket_status("HD-1", [
        event(1, "InterventionCompleted", "executor", outcome="unresolved"),
        record(2, "event", {"event_type": "TicketSubmitted", "event": {
            "event_type": "TicketSubmitted", "revision": 2, "category": "diagnostics",
            "scope": "included"}}),
    ])
    assert status is not None
    assert (status.status, status.revision, status.outcome) == ("submitted", 2, None)


def test_unknown_records_show_only_who_did_what_when() -> None:
    status = ticket_status("HD-1", [record(1, "action", {"command": "cat /etc/shadow",
                                                         "output": "root:$6$secret"},
                                           actor="executor")])
    assert status is not None
    assert status.timeline[0].details == {}
    assert status.status == "received"


def test_timeline_seq_is_the_place_in_the_merged_timeline_not_a_chains_seq() -> None:
    # Each service's chain counts its own seq: intake 1, auth 1, intake 2.
    records = [SUBMITTED.model_copy(update={"seq": 1}),
               event(1, "AuthorizationVerified", "auth", review_required=False),
               record(2, "intake.refused", {"revision": 1, "reason": "stale"})]
    status = ticket_status("HD-1", records)
    assert status is not None
    assert [e.seq for e in status.timeline] == [1, 2, 3]
    assert [e.actor for e in status.timeline] == ["intake", "auth", "intake"]
