"""Checking auth's signed verdict: shared, because the executor verifies what auth signs and
may not import ``services.auth``.

The scheme (auth signs in ``services/auth/signing.py``): Ed25519 over
:meth:`~schemas.events.AuthorizationVerified.signed_bytes`, the canonical JSON
(:func:`schemas.canonical.canonical_json`: JSON-mode dump, keys sorted, no whitespace,
UTF-8) of every field of the event except ``signature`` - envelope, account, the whole
embedded ticket with its still-sealed credentials, the resolved server and the review flag.
The :class:`~schemas.values.Signature` names the signing key's id, so verifiers accept
several auth keys during a rotation.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.events import AuthorizationVerified
from services.runtime.crypto import SignatureError, SignatureFailure, VerifyKey
from services.runtime.facts import FactRefused, verify_fact

__all__ = ["SignatureError", "verify_verdict"]


def verify_verdict(
    event: AuthorizationVerified, verify_keys: Mapping[str, VerifyKey]
) -> AuthorizationVerified:
    """Return ``event`` if auth's signature on it checks against ``verify_keys``.

    Raises :class:`~services.runtime.crypto.SignatureError` (``reason`` is
    ``malformed`` for an unsigned verdict, else ``unknown_key``, ``wrong_algorithm``,
    ``malformed`` or ``bad_signature``), its message naming the ticket and revision. The
    bytes are recomputed from the parsed event, never taken from the wire, so any altered
    field - however it was re-serialised - fails. What the signature cannot say (is this
    revision the latest, was it already handled) is the caller's to check.
    """
    try:
        verify_fact(event, verify_keys, what="verdict")
    except FactRefused as exc:
        reason: SignatureFailure = "malformed" if exc.reason == "unsigned" else exc.reason
        raise SignatureError(reason, str(exc)) from None
    return event
