"""The resume checks on a stored claim: what the executor signed, and what follows from the
verdict. Plain values: the claim documents are built as the store writes them, then edited
the way someone with write access to the database would."""

from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from executor_verdicts import verdict

from schemas.events import AuthorizationVerified
from services.executor.access import AccessDecision
from services.executor.claim_integrity import (
    ClaimSealer,
    Limits,
    accepted_record,
    decision_follows,
    staleness,
    tampering,
)
from services.executor.claim_record import Claim
from services.executor.handover_notes import review_decision
from services.runtime.crypto import PrivateSealingKey, SigningKey

KEY = PrivateSealingKey.generate()
SEALER = ClaimSealer(SigningKey.generate(key_id_prefix="audit-executor"))
LIMITS = Limits(max_age=timedelta(days=1), clock_skew=timedelta(minutes=5),
                rescue_configured=True)
SSH_RUN = AccessDecision(method="ssh", mode="automated", disposition="run",
                         runbook="diagnostics", reason="SSH login works")


def a_verdict(category: str = "diagnostics", **kw: Any) -> AuthorizationVerified:
    return verdict(signing_key=None, sealing_key=KEY.public, username="admin", password="pw",
                   ticket_id="HD-7", category=category, **kw)


def stored(v: AuthorizationVerified, *, sealer: ClaimSealer = SEALER,
           accepted_at: datetime | None = None, **fields: Any) -> dict[str, Any]:
    """A claim document as :class:`~services.executor.claims.ClaimStore` writes it."""
    claim_id = f"{v.ticket_id}:{v.revision}"
    verdict_json = v.model_dump_json()
    accepted = accepted_record(verdict_json, accepted_at or v.occurred_at)
    doc: dict[str, Any] = {
        "_id": claim_id, "ticket_id": v.ticket_id, "revision": v.revision,
        "verdict_event_id": str(v.event_id), "verdict": verdict_json, "status": "open",
        "attempt": 2, "seals": {"accepted": {**sealer.seal(claim_id, "accepted", accepted),
                                             "value": accepted}}}
    for name, value in fields.items():
        doc[name] = value
        if name == "rescue":
            for key, record in value.items():
                doc["seals"][f"rescue_{key}"] = sealer.seal(claim_id, f"rescue.{key}", record)
        else:
            doc["seals"][name] = sealer.seal(claim_id, name, value)
    return doc


def findings(doc: dict[str, Any], v: AuthorizationVerified) -> list[str]:
    return tampering(Claim.from_doc(doc), v, SEALER, LIMITS)


def test_a_claim_as_the_executor_wrote_it_may_run() -> None:
    v = a_verdict()
    doc = stored(v, decision=asdict(SSH_RUN), review_passed=True,
                 rescue={"access": {"address": "192.0.2.9", "port": 22}})
    assert findings(doc, v) == []


def test_a_claim_the_executor_never_accepted_is_refused() -> None:
    v = a_verdict()
    doc = stored(v)
    del doc["seals"]
    assert findings(doc, v) == ["accepted: not signed by the executor"]


def test_a_claim_record_signed_by_another_key_is_refused() -> None:
    v = a_verdict()
    stranger = ClaimSealer(SigningKey.generate(key_id_prefix="audit-executor"))
    assert any("unknown key" in f for f in findings(stored(v, sealer=stranger), v))


def test_a_swapped_verdict_is_refused_even_a_genuine_one_for_the_same_revision() -> None:
    v, other = a_verdict(), a_verdict()
    doc = stored(v)
    doc["verdict"], doc["verdict_event_id"] = other.model_dump_json(), str(other.event_id)
    assert findings(doc, other) == ["verdict: not the verdict this claim accepted"]


def test_a_claim_moved_to_another_ticket_is_refused() -> None:
    v = a_verdict()
    doc = stored(v)
    doc["_id"], doc["ticket_id"] = "HD-8:1", "HD-8"
    assert any("is not the claim of verdict" in f for f in findings(doc, v))


def test_a_decision_edited_to_another_runbook_is_refused() -> None:
    v = a_verdict()
    doc = stored(v, decision=asdict(SSH_RUN))
    doc["decision"]["runbook"] = "root_password_reset"
    assert findings(doc, v) == ["decision: bad signature"]


def test_a_signed_decision_that_does_not_follow_from_the_verdict_is_refused() -> None:
    v = a_verdict("diagnostics")
    reset = asdict(AccessDecision(method="rescue", mode="automated", disposition="run",
                                  runbook="rescue.root_password_reset", reason="x"))
    [finding] = findings(stored(v, decision=reset), v)
    assert "does not follow from the verdict" in finding


def test_a_flipped_review_passed_is_refused() -> None:
    v = a_verdict(review_required=True, review_reason="3 in 30 days")
    doc = stored(v)
    doc["review_passed"] = True
    assert findings(doc, v) == ["review_passed: not signed by the executor"]


def test_a_closed_claim_edited_back_to_open_is_refused() -> None:
    v = a_verdict()
    doc = stored(v, closed={"status": "finished", "outcome": "resolved"})
    doc["status"] = "open"
    assert findings(doc, v) == ["status: the claim was closed, and is open again"]


def test_redirected_rescue_access_is_refused() -> None:
    v = a_verdict("root_password_reset")
    doc = stored(v, rescue={"access": {"address": "192.0.2.9", "port": 22}})
    doc["rescue"]["access"]["address"] = "203.0.113.66"
    assert findings(doc, v) == ["rescue.access: bad signature"]


def test_a_hand_over_turned_into_a_review_is_refused() -> None:
    v = a_verdict()
    console = {"kind": "console", "method": "ipkvm", "runbook": "console.diagnostics",
               "step_id": "r1-console"}
    doc = stored(v, handover=console)
    doc["handover"] = {**console, "kind": "review", "step_id": "r1-review"}
    assert findings(doc, v) == ["handover: bad signature"]


def test_a_verdict_accepted_when_already_too_old_is_refused() -> None:
    v = a_verdict()
    doc = stored(v, accepted_at=v.occurred_at + timedelta(days=2))
    assert findings(doc, v) == ["accepted: the verdict was already too old when accepted"]


def test_a_verdict_past_its_age_limit_may_no_longer_act() -> None:
    v = a_verdict(at=datetime.now(UTC) - timedelta(days=2))
    assert "more than the 86400 s" in (staleness(v, datetime.now(UTC), LIMITS) or "")
    future = a_verdict(at=datetime.now(UTC) + timedelta(hours=1))
    assert "in the future" in (staleness(future, datetime.now(UTC), LIMITS) or "")
    assert staleness(a_verdict(), datetime.now(UTC), LIMITS) is None


def test_the_runbooks_that_follow_from_a_verdict() -> None:
    diag = a_verdict("diagnostics")
    assert decision_follows(diag, "ssh", "diagnostics", rescue_configured=True)
    review = review_decision(diag)
    assert decision_follows(diag, review.method, review.runbook, rescue_configured=True)
    assert not decision_follows(diag, "ssh", "root_password_reset", rescue_configured=True)
    assert not decision_follows(diag, "rescue", "rescue.root_password_reset",
                                rescue_configured=True)
    reset = a_verdict("root_password_reset")
    assert decision_follows(reset, "rescue", "rescue.root_password_reset",
                            rescue_configured=True)


def test_a_round_trip_through_the_store_keeps_signed_datetimes_valid() -> None:
    # The store keeps milliseconds and drops the zone: the signature must still hold.
    at = datetime(2026, 12, 6, 15, 0, 1, 123456, tzinfo=UTC)
    seal = SEALER.seal("HD-7:1:r1-review", "manual_decision", {"reported_at": at})
    back = at.replace(microsecond=123000, tzinfo=None)
    assert SEALER.problem(seal, "HD-7:1:r1-review", "manual_decision",
                          {"reported_at": back}) is None
