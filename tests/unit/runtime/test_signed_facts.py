"""The notifier's facts (an engineer's acknowledgement, a manual-step report) count only when
signed by the notifier's key over every field: a tampered field, a stranger's key, a forger
reusing the notifier's key id or a missing signature is refused with its reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from schemas.events import EngineerAcknowledged, ManualStepCompleted, SignedEvent
from schemas.registry import encode, parse_event
from schemas.values import Signature
from services.runtime.crypto import SigningKey, build_keyring, sign
from services.runtime.facts import FactRefused, sign_fact, signing_publisher, verify_fact

NOTIFIER = SigningKey.generate(key_id_prefix="notifier")
STRANGER = SigningKey.generate(key_id_prefix="notifier")
AUTH = SigningKey.generate()
TRUSTED = build_keyring([NOTIFIER.verify_key])


def report(**kw: Any) -> ManualStepCompleted:
    fields: dict[str, Any] = {
        "ticket_id": "T-1001", "revision": 2, "occurred_at": datetime.now(UTC),
        "step_id": "r2-review", "status": "done", "notes": "checked with the customer",
        "engineer_id": "eng-marta", "display_name": "Marta Rossi", "channel": "matrix"}
    return ManualStepCompleted.new(**{**fields, **kw})


def ack() -> EngineerAcknowledged:
    return EngineerAcknowledged.new(
        ticket_id="T-1001", revision=2, engineer_id="eng-marta", display_name="Marta Rossi",
        channel="slack", acknowledged_event_id=uuid4())


def refusal(event: SignedEvent) -> str:
    with pytest.raises(FactRefused) as caught:
        verify_fact(event, TRUSTED)
    return caught.value.reason


@pytest.mark.parametrize("make", [report, ack])
def test_a_fact_signed_by_the_notifier_verifies_after_a_round_trip(make: Any) -> None:
    event = sign_fact(make(), NOTIFIER)
    assert event.schema_version == 2
    # What the executor parses from the bus, re-serialised by pydantic: still verifies.
    verify_fact(parse_event(encode(event), type(event)), TRUSTED)


@pytest.mark.parametrize("make", [report, ack])
def test_an_unsigned_fact_is_refused(make: Any) -> None:
    assert refusal(make()) == "unsigned"


def test_a_fact_signed_by_a_stranger_is_refused_as_an_unknown_key() -> None:
    assert refusal(sign_fact(report(), STRANGER)) == "unknown_key"


def test_a_fact_signed_by_auth_is_not_the_notifiers_word() -> None:
    # Auth's key signs verdicts; it is not trusted for engineers' facts.
    assert refusal(sign_fact(report(), AUTH)) == "unknown_key"


def test_a_forger_reusing_the_notifiers_key_id_is_refused() -> None:
    event = report()
    fake = sign(event.signed_bytes(), STRANGER)
    forged = event.with_signature(Signature(key_id=NOTIFIER.key_id, value=fake.value))
    assert refusal(forged) == "bad_signature"


@pytest.mark.parametrize(("field", "value"), [
    ("status", "failed"),
    ("step_id", "r2-console"),          # another step of the same ticket
    ("engineer_id", "eng-mallory"),     # who reported it
    ("display_name", "Mallory"),
    ("notes", "all good, trust me"),
    ("ticket_id", "T-2002"),            # another ticket
    ("revision", 3),
    ("channel", "telegram"),
])
def test_changing_any_signed_field_of_a_report_breaks_the_signature(
        field: str, value: object) -> None:
    signed = sign_fact(report(), NOTIFIER)
    document = json.loads(encode(signed))
    document[field] = value
    tampered = parse_event(json.dumps(document).encode(), ManualStepCompleted)
    assert refusal(tampered) == "bad_signature"


def test_changing_the_acknowledging_engineer_breaks_the_signature() -> None:
    signed = sign_fact(ack(), NOTIFIER)
    assert refusal(signed.model_copy(update={"engineer_id": "eng-mallory"})) == "bad_signature"


def test_a_refusal_is_a_decode_error_whose_class_names_the_reason() -> None:
    with pytest.raises(FactRefused) as caught:
        verify_fact(report(), TRUSTED)
    assert caught.value.error_class == "FactRefused.unsigned"
    assert "T-1001" in str(caught.value)
    assert "checked with the customer" not in str(caught.value)  # no field values


def test_a_rotated_in_key_and_the_old_one_are_both_trusted() -> None:
    new = SigningKey.generate(key_id_prefix="notifier")
    ring = build_keyring([NOTIFIER.verify_key, new.verify_key])
    verify_fact(sign_fact(report(), NOTIFIER), ring)
    verify_fact(sign_fact(report(), new), ring)


def test_re_signing_the_same_event_gives_the_same_signature() -> None:
    # A notifier that crashed and publishes the same event again publishes the same bytes.
    event = report()
    assert sign_fact(event, NOTIFIER).signature == sign_fact(event, NOTIFIER).signature


async def test_the_signing_publisher_signs_the_notifiers_facts_and_nothing_else() -> None:
    sent: list[Any] = []

    async def publish(event: Any) -> None:
        sent.append(event)

    signed = signing_publisher(publish, NOTIFIER, "notifier")
    await signed(report())
    await signed(ack())
    for event in sent:
        verify_fact(event, TRUSTED)


def _verdict_on(ticket_signed: bool) -> Any:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "executor"))
    from executor_verdicts import verdict

    from services.runtime.crypto import PrivateSealingKey

    event = verdict(signing_key=None, sealing_key=PrivateSealingKey.generate().public,
                    username="admin", password="pw-123456")
    if ticket_signed:
        intake = SigningKey.generate(key_id_prefix="intake")
        event = event.model_copy(update={"ticket": sign_fact(event.ticket, intake)})
    return sign_fact(event, AUTH)


def test_a_verdict_on_an_unsigned_ticket_signs_the_bytes_it_signed_before_tickets_were():
    # An older auth never wrote ticket.signature: its verdicts must still verify.
    event = _verdict_on(ticket_signed=False)
    assert b'"signature"' not in event.signed_bytes()
    verify_fact(event, build_keyring([AUTH.verify_key]))


def test_a_verdict_covers_intakes_signature_on_the_embedded_ticket():
    event = _verdict_on(ticket_signed=True)
    assert event.ticket.signature is not None
    assert event.ticket.signature.value in event.signed_bytes().decode()
    stripped = event.model_copy(update={"ticket": event.ticket.model_copy(
        update={"signature": None})})
    with pytest.raises(FactRefused) as caught:
        verify_fact(stripped, build_keyring([AUTH.verify_key]))
    assert caught.value.reason == "bad_signature"
