"""Only an authentic, fresh verdict is acted on; every other one is refused with a reason."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from executor_verdicts import verdict

from schemas.events import AuthorizationVerified
from schemas.registry import encode, parse_event
from schemas.values import Signature
from services.executor.verdict_check import check_verdict
from services.runtime.crypto import PrivateSealingKey, SigningKey, sign

AUTH = SigningKey.generate()
FORGER = SigningKey.generate()
EXECUTOR = PrivateSealingKey.generate()
TRUSTED = {AUTH.key_id: AUTH.verify_key}
NOW = datetime.now(UTC)


def check(event: AuthorizationVerified, now: datetime = NOW) -> str | None:
    refusal = check_verdict(event, TRUSTED, now=now, max_age=timedelta(hours=24),
                            clock_skew=timedelta(minutes=5))
    return refusal.code if refusal else None


def good(**kw: object) -> AuthorizationVerified:
    return verdict(signing_key=AUTH, sealing_key=EXECUTOR.public, username="admin",
                   password="pw-123456", at=NOW, **kw)  # type: ignore[arg-type]


def test_authentic_fresh_verdict_passes() -> None:
    assert check(good()) is None


def test_unsigned_verdict_is_refused() -> None:
    assert check(good().model_copy(update={"signature": None})) == "unsigned"


def test_verdict_signed_by_another_key_is_refused() -> None:
    forged = verdict(signing_key=FORGER, sealing_key=EXECUTOR.public, username="admin",
                     password="x-123456", at=NOW)
    assert check(forged) == "unknown_key"


def test_forger_reusing_auths_key_id_is_refused() -> None:
    event = good()
    fake = sign(event.signed_bytes(), FORGER)
    forged = event.with_signature(Signature(key_id=AUTH.key_id, value=fake.value))
    assert check(forged) == "bad_signature"


@pytest.mark.parametrize("edit", [
    lambda d: d["server"].update(ip="203.0.113.99"),
    lambda d: d["server"].update(ssh_host_key=None, ssh_port=2222),
    lambda d: d["ticket"].update(category="root_password_reset", scope="included"),
    lambda d: d["ticket"]["credentials"].update(username="root"),
    lambda d: d["ticket"]["parameters"].update(unit="sshd"),
    lambda d: d.update(review_required=False, review_reason=None, occurred_at=d["occurred_at"]),
])
def test_any_altered_field_breaks_the_signature(edit: object) -> None:
    import json

    original = good(review_required=True, review_reason="busy server")
    data = json.loads(encode(original))
    edit(data)  # type: ignore[operator]
    altered = parse_event(json.dumps(data), AuthorizationVerified)
    assert altered.signed_bytes() != original.signed_bytes(), "the edit must alter signed content"
    assert check(altered) == "bad_signature"


def test_old_verdicts_are_refused_as_stale() -> None:
    assert check(good(), now=NOW + timedelta(hours=25)) == "stale"


def test_future_dated_verdicts_are_refused() -> None:
    assert check(good(), now=NOW - timedelta(hours=1)) == "from_the_future"
