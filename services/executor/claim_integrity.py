"""Claims that cannot be steered from the database: signed claim records and the resume checks.

Auth's signature makes the verdict trustworthy wherever it is stored, but a claim holds more
than the verdict: fields the executor itself decided (the access decision, "an engineer
approved the review", the hand-over record, the rescue system's access, that the claim is
closed) and the time it accepted the verdict. Anyone who can write the claim store could
edit those, so the executor signs each when it writes it and checks it whenever a run of the
claim starts (first run, restart, redelivery, lease take-over):

- a *claim record* is Ed25519 over ``b"intervention-claim-record:v1:"`` + canonical JSON of
  ``{subject, field, value}``, where the subject is the claim id, so a record cannot be
  copied onto another claim; the ``accepted`` record (written when the claim is made) holds
  the SHA-256 of the verdict and the acceptance time, so a swapped verdict (even another
  genuine one) or a claim the executor never made is refused. The key is the executor's audit key
  (``audit-executor.key``): it is the executor's own private key, already in every key set
  and compose secret, held by no other service; the context prefix keeps a claim record
  from ever being read as an audit record, an anchor or an event;
- :func:`tampering` lists what does not hold on a stored claim (pure: no I/O), and
  :func:`decision_follows` says whether a runbook and access method can follow from the
  verdict at all;
- what the verdict itself determines (category, server, IP, the claim's ticket and revision)
  is never trusted from the claim document: it is checked against the verdict.

Checks fail closed: a record missing, unsigned, signed by another key or over other values
counts as tampered, and the procedure refuses the claim (audited, no action on a server).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from schemas.canonical import canonical_json
from schemas.events import AuthorizationVerified
from schemas.values import Signature
from services.executor.access import (
    Probe,
    ProbeOutcome,
    ServerFacts,
    select_access,
)
from services.executor.claim_record import Claim, claim_id_for
from services.executor.handover_notes import retry_decision, review_decision
from services.runtime.crypto import SignatureError, SigningKey, VerifyKey, sign, verify

CONTEXT = b"intervention-claim-record:v1:"


def plain(value: Any) -> Any:
    """The JSON form a record is signed over. Datetimes become UTC ISO text at millisecond
    precision (what a round trip through the store keeps), tuples become lists."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        aware = aware.astimezone(UTC)
        return aware.replace(microsecond=aware.microsecond // 1000 * 1000).isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def verdict_digest(verdict_json: str) -> str:
    return hashlib.sha256(verdict_json.encode("utf-8")).hexdigest()


class ClaimSealer:
    """Signs and checks claim records with the executor's own key (module doc)."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        # Only the executor's current key: a rotation makes open claims' records
        # unverifiable, so they are refused (docs/security.md: finish open claims first).
        self._trusted: dict[str, VerifyKey] = {key.key_id: key.verify_key}

    @property
    def key_id(self) -> str:
        return self._key.key_id

    @staticmethod
    def _message(subject: str, field: str, value: Any) -> bytes:
        return CONTEXT + canonical_json({"subject": subject, "field": field,
                                         "value": plain(value)})

    def seal(self, subject: str, field: str, value: Any) -> dict[str, str]:
        signature = sign(self._message(subject, field, value), self._key)
        return {"key_id": signature.key_id, "signature": signature.value}

    def problem(self, seal: Any, subject: str, field: str, value: Any) -> str | None:
        """Why ``seal`` does not sign ``value`` as ``field`` of ``subject``; None if it does."""
        if not isinstance(seal, Mapping) or not seal.get("signature"):
            return f"{field}: not signed by the executor"
        try:
            verify(self._message(subject, field, value),
                   Signature(algorithm="ed25519", key_id=str(seal.get("key_id", "")),
                             value=str(seal["signature"])), self._trusted)
        except SignatureError as exc:
            return f"{field}: {exc.reason.replace('_', ' ')}"
        except ValueError:
            return f"{field}: malformed signature"
        return None


# --- what the verdict determines ---------------------------------------------------------

_PROBES: tuple[Probe, ...] = tuple(
    Probe(outcome=outcome, privileged=privileged)
    for outcome in get_args(ProbeOutcome) for privileged in (True, False))


def possible_decisions(verdict: AuthorizationVerified, *, rescue_configured: bool,
                       ) -> frozenset[tuple[str, str]]:
    """Every (access method, runbook) the procedure can reach for this verdict, whatever the
    live probe finds: a stored decision or hand-over outside this set was not made here."""
    server = verdict.server
    facts = ServerFacts(type=server.type, os_family=server.os_family, ipkvm=server.ipkvm,
                        rescue=server.rescue, rescue_automated=rescue_configured)
    found = {(d.method, d.runbook) for d in (review_decision(verdict), retry_decision(verdict))}
    for probe in _PROBES:
        decision = select_access(facts, verdict.ticket.category, probe)
        found.add((decision.method, decision.runbook))
    return frozenset(found)


def decision_follows(verdict: AuthorizationVerified, method: str, runbook: str, *,
                     rescue_configured: bool) -> bool:
    # Rescue-capable servers may lose the provider API while a claim is open (and the API
    # may be added): either configuration's decisions follow from the verdict.
    return any((method, runbook) in possible_decisions(verdict, rescue_configured=configured)
               for configured in {rescue_configured, not rescue_configured})


# --- the checks on a stored claim ----------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Limits:
    max_age: timedelta
    clock_skew: timedelta
    rescue_configured: bool


def accepted_record(verdict_json: str, accepted_at: datetime) -> dict[str, Any]:
    return {"verdict_sha256": verdict_digest(verdict_json), "accepted_at": plain(accepted_at)}


def tampering(claim: Claim, verdict: AuthorizationVerified, sealer: ClaimSealer,
              limits: Limits) -> list[str]:
    """What on this stored claim did not come from the executor or does not follow from its
    (already verified) verdict; empty when the claim may run."""
    found: list[str] = []
    subject = claim.id
    expected_id = claim_id_for(verdict.ticket_id, verdict.revision)
    if (claim.id != expected_id or claim.ticket_id != verdict.ticket_id
            or claim.revision != verdict.revision
            or claim.verdict_event_id != str(verdict.event_id)):
        found.append(f"claim {claim.id} is not the claim of verdict {verdict.event_id} "
                     f"({expected_id})")
    seals = claim.seals
    accepted = seals.get("accepted")
    value = accepted.get("value") if isinstance(accepted, Mapping) else None
    if (problem := sealer.problem(accepted, subject, "accepted", value)) is not None:
        found.append(problem)
    elif not isinstance(value, Mapping) or value.get(
            "verdict_sha256") != verdict_digest(claim.verdict_json):
        found.append("verdict: not the verdict this claim accepted")
    else:
        # The same age rule as at first acceptance, with the signed acceptance time.
        at = datetime.fromisoformat(str(value.get("accepted_at")))
        if at - verdict.occurred_at > limits.max_age:
            found.append("accepted: the verdict was already too old when accepted")
    if "closed" in seals:
        found.append("status: the claim was closed, and is open again")
    if claim.review_passed and (problem := sealer.problem(
            seals.get("review_passed"), subject, "review_passed", True)) is not None:
        found.append(problem)
    for field, record in (("decision", claim.decision), ("handover", claim.handover)):
        if record is not None:
            found.extend(_access_record(field, record, seals.get(field), verdict, sealer,
                                        limits))
    for key in sorted(claim.rescue):
        if (problem := sealer.problem(seals.get(f"rescue_{key}"), subject, f"rescue.{key}",
                                      claim.rescue[key])) is not None:
            found.append(problem)
    return found


def _access_record(field: str, record: Mapping[str, Any], seal: Any,
                   verdict: AuthorizationVerified, sealer: ClaimSealer, limits: Limits,
                   ) -> list[str]:
    """A stored decision or parked hand-over: signed by the executor (for the verdict's
    claim), and a method and runbook the procedure can reach from the verdict."""
    subject = claim_id_for(verdict.ticket_id, verdict.revision)
    if (problem := sealer.problem(seal, subject, field, record)) is not None:
        return [problem]
    method, runbook = str(record.get("method")), str(record.get("runbook"))
    if not decision_follows(verdict, method, runbook,
                            rescue_configured=limits.rescue_configured):
        return [f"{field}: runbook {runbook!r} by {method!r} does not follow from the verdict"]
    return []


def staleness(verdict: AuthorizationVerified, now: datetime, limits: Limits) -> str | None:
    """Why the verdict may no longer lead to an action on a server (None: it still may)."""
    age = now - verdict.occurred_at
    if age > limits.max_age:
        return (f"the verdict was issued {age.total_seconds():.0f} s ago, more than the "
                f"{limits.max_age.total_seconds():.0f} s a verdict stays valid")
    if -age > limits.clock_skew:
        return f"the verdict is dated {-age.total_seconds():.0f} s in the future"
    return None
