"""Auth's signature on a verdict; :func:`services.runtime.verdicts.verify_verdict` checks it.

Ed25519 over :meth:`AuthorizationVerified.signed_bytes` (canonical JSON of every field but
``signature``), with the key id in the :class:`~schemas.values.Signature`. The only key auth
holds is this signing key: it has no way to open the sealed credentials it passes on.
"""

from __future__ import annotations

from pathlib import Path

from schemas.events import AuthorizationVerified
from services.runtime.crypto import SigningKey, VerifyKey, sign
from services.runtime.keys import load_signing_key


class VerdictSigner:
    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> VerdictSigner:
        return cls(load_signing_key(path))

    @property
    def key_id(self) -> str:
        return self._key.key_id

    @property
    def verify_key(self) -> VerifyKey:
        return self._key.verify_key

    def sign(self, verdict: AuthorizationVerified) -> AuthorizationVerified:
        """The verdict with auth's signature over its canonical bytes (any old signature is
        replaced: it is not part of the signed bytes)."""
        return verdict.with_signature(sign(verdict.signed_bytes(), self._key))
