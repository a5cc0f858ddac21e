"""Seal at the edge: plaintext credentials become ciphertext before anything is kept.

Three users:

- intake's HTTP API (:class:`Sealer`): the customer's password or private key is taught to
  the process's redactor, then sealed to the executor's public key, before the request is
  classified, stored, audited or published;
- the helpdesk, which must publish on ``helpdesk.ticket-requests`` with credentials already
  sealed: :func:`seal_credentials` (importable) and ``intervene seal`` (CLI) do that, and
  :func:`seal_request` seals a whole request document;
- the helpdesk topic's dead-letter copies: :func:`scrub_for_dlq` removes anything
  credential-like before a refused message is copied to ``<topic>.dlq``.

Intake holds only the public half of the sealing key: it can seal but never open.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.common import field_errors, summarise
from schemas.request import PlainCredentials, SealedCredentials
from services.runtime.crypto import PublicSealingKey, seal_text
from services.runtime.keys import SEALING_PUBLIC_FILE, default_keys_dir, load_sealing_public
from services.runtime.redaction import Redactor, default_redactor, is_sensitive_field

__all__ = [
    "Sealer",
    "load_recipient",
    "scrub_for_dlq",
    "seal_credentials",
    "seal_request",
]


def load_recipient(path: Path | None = None) -> PublicSealingKey:
    """The executor's public sealing key: ``path``, else ``executor-sealing.pub`` in
    ``$INTERVENTION_KEYS_DIR`` (or ``var/keys``). Raises ``KeyFileError`` with a fix."""
    return load_sealing_public(path or default_keys_dir() / SEALING_PUBLIC_FILE)


class Sealer:
    """Seals one request's plaintext credentials to the executor's key."""

    def __init__(self, recipient: PublicSealingKey, redactor: Redactor | None = None) -> None:
        self.recipient = recipient
        self._redactor = redactor if redactor is not None else default_redactor()

    @property
    def key_id(self) -> str:
        return self.recipient.key_id

    def learn(self, credentials: PlainCredentials) -> None:
        """Teach the redactor the secret, so no later log line or record can show it."""
        self._redactor.add(credentials.secret_value())

    def seal(self, credentials: PlainCredentials) -> SealedCredentials:
        self.learn(credentials)  # before sealing: a failure while sealing may be logged
        return credentials.seal(lambda secret: seal_text(secret, self.recipient))


def seal_credentials(
    username: str,
    *,
    password: str | None = None,
    private_key: str | None = None,
    recipient: PublicSealingKey | None = None,
    key_path: Path | None = None,
) -> SealedCredentials:
    """Sealed credentials for a helpdesk request on ``helpdesk.ticket-requests``.

    Give ``username`` and exactly one of ``password`` / ``private_key`` (OpenSSH format).
    The recipient is ``recipient``, else the public key file at ``key_path``, else the
    default key set's (see :func:`load_recipient`). Publish
    ``result.model_dump(mode="json")`` as the request's ``credentials``.

    Raises ``ValueError`` naming the fields at fault (never their values).
    """
    try:
        plain = PlainCredentials.model_validate(
            {"username": username, "password": password, "private_key": private_key}
        )
    except ValidationError as exc:
        # Not chained: the pydantic error's text quotes the input, i.e. the secret.
        message = f"credentials: {summarise(field_errors(exc))}"
    else:
        return Sealer(recipient or load_recipient(key_path)).seal(plain)
    raise ValueError(message)


def seal_request(
    request: Mapping[str, Any], *, recipient: PublicSealingKey | None = None
) -> dict[str, Any]:
    """A copy of a helpdesk request document whose plaintext credentials are sealed.

    Already-sealed credentials are left as they are, so the call is idempotent. Raises
    ``ValueError`` when the credentials are neither.
    """
    out = dict(request)
    credentials = out.get("credentials")
    if not isinstance(credentials, Mapping):
        raise ValueError("credentials: must be an object with username and password/private_key")
    if "sealed" in credentials:
        return out
    username = credentials.get("username")
    if not isinstance(username, str):
        raise ValueError("credentials.username: must be a string")
    password, private_key = credentials.get("password"), credentials.get("private_key")
    if not isinstance(password, str | None) or not isinstance(private_key, str | None):
        raise ValueError("credentials: password and private_key must be strings")
    sealed = seal_credentials(
        username, password=password, private_key=private_key, recipient=recipient
    )
    out["credentials"] = sealed.model_dump(mode="json")
    return out


# --- dead-letter copies ----------------------------------------------------------------

_SEALED_KEYS = frozenset({"username", "kind", "sealed"})
_REMOVED = "[removed by intake: plaintext credentials]"


def _looks_sealed(credentials: Any) -> bool:
    if not isinstance(credentials, Mapping) or not set(credentials) <= _SEALED_KEYS:
        return False
    sealed = credentials.get("sealed")
    return isinstance(sealed, Mapping) and set(sealed) <= {"key_id", "ciphertext"}


def _scrub(value: Any) -> Any:
    """Mask values under secret-sounding names at any depth (``password``, ``private_key``,
    ``token`` ...), the same names the redactor treats as secret."""
    if isinstance(value, Mapping):
        return {
            k: _REMOVED if is_sensitive_field(str(k), v) else _scrub(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def scrub_for_dlq(body: bytes) -> bytes:
    """What of a refused helpdesk message may be copied to the dead-letter topic.

    A JSON object keeps everything except credentials that are not evidently sealed (and
    any value under a secret-sounding name), so an operator can still see and replay the
    rest. Anything else - not JSON, not an object, not UTF-8 - cannot be searched for
    secrets, so only its size and SHA-256 are kept.
    """
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        return json.dumps({
            "scrubbed": "not a JSON object; content withheld in case it holds credentials",
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }).encode()
    credentials = document.get("credentials")
    scrubbed = _scrub(document)
    if "credentials" in document and not _looks_sealed(credentials):
        scrubbed["credentials"] = _REMOVED
    # ASCII escapes: a lone surrogate from the input stays representable as JSON text.
    return json.dumps(scrubbed).encode("ascii")
