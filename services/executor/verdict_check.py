"""Should the executor act on this AuthorizationVerified? The checks that need no store.

Authenticity is auth's Ed25519 signature over the verdict's canonical bytes (checked by
:func:`services.runtime.verdicts.verify_verdict`, shared with auth's tests); freshness is
the verdict's own ``occurred_at`` within ``max_age`` and not in the future beyond the clock
skew. What needs the claim store — a stale revision, a revision already claimed, a replay —
is decided in :mod:`services.executor.handlers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from schemas.events import AuthorizationVerified
from services.runtime.crypto import SignatureError, VerifyKey
from services.runtime.verdicts import verify_verdict

RefusalCode = Literal[
    "unsigned",
    "unknown_key",
    "wrong_algorithm",
    "malformed",
    "bad_signature",
    "stale",
    "from_the_future",
    "revision_stale",
    "revision_already_claimed",
    "replayed",
]


@dataclass(frozen=True, kw_only=True)
class Refusal:
    code: RefusalCode
    message: str


def check_verdict(event: AuthorizationVerified, verify_keys: Mapping[str, VerifyKey], *,
                  now: datetime, max_age: timedelta, clock_skew: timedelta) -> Refusal | None:
    """None when the verdict is authentic and fresh, else why not (for the audit trail)."""
    if event.signature is None:
        return Refusal(code="unsigned", message=f"verdict {event.event_id} is not signed")
    try:
        verify_verdict(event, verify_keys)
    except SignatureError as exc:
        return Refusal(code=exc.reason, message=str(exc))
    age = now - event.occurred_at
    if age > max_age:
        return Refusal(code="stale", message=(
            f"verdict {event.event_id} was issued {age.total_seconds():.0f} s ago, more than "
            f"the {max_age.total_seconds():.0f} s a verdict stays valid"))
    if -age > clock_skew:
        return Refusal(code="from_the_future", message=(
            f"verdict {event.event_id} is dated {-age.total_seconds():.0f} s in the future"))
    return None
