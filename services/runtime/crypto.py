"""Sealing (credentials) and signing (auth's verdicts), with key ids so keys can rotate.

* **Sealing** is a libsodium sealed box (X25519 + XSalsa20-Poly1305 with an ephemeral
  sender key). Whoever holds only the public half - intake, the helpdesk's ``intervene
  seal`` - can seal but never open; only the executor's private key opens.
* **Signing** is Ed25519 with detached signatures, so auth's verdict travels as a plain
  event plus a :class:`~schemas.values.Signature` the executor checks.

Every key carries a ``key_id``. Sealed values and signatures name the key they were made
with, and the opening/verifying side looks that id up in a keyring that may hold several
keys: during a rotation the old and new keys sit side by side until nothing sealed or
signed with the old one is still in flight.

Every plaintext sealed or opened here is taught to the process-wide redactor
(:func:`services.runtime.redaction.default_redactor`), so it is masked in this process's
logs, audit records and command output without the calling service having to remember.

Exceptions raised here never contain plaintext or key material, only key ids and a reason,
because they end up in logs, DLQ headers and the audit trail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import nacl.exceptions
import nacl.public
import nacl.signing

from schemas.values import KEY_ID_PATTERN, SealedSecret, Signature
from services.runtime.redaction import default_redactor

__all__ = [
    "MAX_PLAINTEXT_BYTES",
    "SEALING_ALGORITHM",
    "SIGNING_ALGORITHM",
    "CryptoError",
    "PrivateSealingKey",
    "PublicSealingKey",
    "SealedSecretError",
    "SignatureError",
    "SignatureFailure",
    "SigningKey",
    "UnknownKeyError",
    "VerifyKey",
    "build_keyring",
    "derive_key_id",
    "open_sealed",
    "open_text",
    "seal",
    "seal_text",
    "sign",
    "verify",
]

SEALING_ALGORITHM = "x25519-sealedbox"
SIGNING_ALGORITHM = "ed25519"

_KEY_BYTES = 32  # X25519 public/private keys and Ed25519 seeds/verify keys alike
_SIGNATURE_BYTES = 64
_SEAL_OVERHEAD = 48  # ephemeral public key (32) + Poly1305 tag (16)
_MAX_CIPHERTEXT_B64_CHARS = 65536  # SealedSecret.ciphertext's max_length in schemas/values.py
#: Largest plaintext whose sealed form still fits a :class:`SealedSecret`. Checked before
#: sealing so an oversized secret fails here with a clear reason, not as a pydantic error.
MAX_PLAINTEXT_BYTES = _MAX_CIPHERTEXT_B64_CHARS // 4 * 3 - _SEAL_OVERHEAD

_KEY_ID_RE = re.compile(KEY_ID_PATTERN)


class CryptoError(Exception):
    """Base of every error raised here; messages name key ids, never secrets."""


class UnknownKeyError(CryptoError):
    """A sealed secret names a key id the keyring does not hold (e.g. a rotated-out key)."""

    def __init__(self, key_id: str, known: Iterable[str]) -> None:
        self.key_id = key_id
        self.known = tuple(sorted(known))
        held = ", ".join(self.known) or "none"
        super().__init__(
            f"secret is sealed to key {key_id!r}, which this keyring does not hold "
            f"(holds: {held}); load that key's private file or re-seal to a current key"
        )


class SealedSecretError(CryptoError):
    """A sealed secret could not be opened: tampered, truncated, or sealed to another key."""


SignatureFailure = Literal["unknown_key", "wrong_algorithm", "malformed", "bad_signature"]


class SignatureError(CryptoError):
    """A signature does not check. ``reason`` is machine-readable for audit records."""

    def __init__(self, reason: SignatureFailure, message: str) -> None:
        self.reason: SignatureFailure = reason
        super().__init__(message)


def _check_key(key_id: str, raw: bytes, what: str) -> None:
    if not _KEY_ID_RE.fullmatch(key_id):
        raise ValueError(f"{what} key id {key_id!r} does not match {KEY_ID_PATTERN}")
    if len(raw) != _KEY_BYTES:
        raise ValueError(f"{what} key {key_id!r} must be {_KEY_BYTES} bytes, got {len(raw)}")


def derive_key_id(prefix: str, public_key: bytes) -> str:
    """Key id from the public key, so the same key always gets the same id.

    ``prefix`` names the key's role (``exec`` for the executor's sealing key, ``auth``
    for auth's signing key) so an id in an event or error says whose key it is.
    """
    key_id = f"{prefix}-{hashlib.sha256(public_key).hexdigest()[:12]}"
    if not _KEY_ID_RE.fullmatch(key_id):
        raise ValueError(f"key id prefix {prefix!r} gives an invalid key id")
    return key_id


# --- sealing -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PublicSealingKey:
    """The executor's public sealing key: enough to seal, useless for opening."""

    key_id: str
    public_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key(self.key_id, self.public_key, "public sealing")


@dataclass(frozen=True, kw_only=True)
class PrivateSealingKey:
    """The executor's private sealing key. ``repr`` shows the id only."""

    key_id: str
    private_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key(self.key_id, self.private_key, "private sealing")

    @classmethod
    def generate(cls, *, key_id_prefix: str = "exec") -> PrivateSealingKey:
        secret = nacl.public.PrivateKey.generate()
        public = bytes(secret.public_key)
        return cls(key_id=derive_key_id(key_id_prefix, public), private_key=bytes(secret))

    @property
    def public(self) -> PublicSealingKey:
        public = nacl.public.PrivateKey(self.private_key).public_key
        return PublicSealingKey(key_id=self.key_id, public_key=bytes(public))


def _learn(plaintext: bytes) -> None:
    try:
        text = plaintext.decode("utf-8")
    except UnicodeDecodeError:
        return  # binary secrets cannot surface in text output as such
    default_redactor().add(text)


def seal(plaintext: bytes, recipient: PublicSealingKey) -> SealedSecret:
    """Seal ``plaintext`` so only the holder of ``recipient``'s private half can open it."""
    _learn(plaintext)
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise SealedSecretError(
            f"secret of {len(plaintext)} bytes is too large to seal "
            f"(at most {MAX_PLAINTEXT_BYTES} bytes)"
        )
    box = nacl.public.SealedBox(nacl.public.PublicKey(recipient.public_key))
    ciphertext = bytes(box.encrypt(plaintext))
    return SealedSecret(
        key_id=recipient.key_id, ciphertext=base64.b64encode(ciphertext).decode("ascii")
    )


def open_sealed(sealed: SealedSecret, keyring: Mapping[str, PrivateSealingKey]) -> bytes:
    """Open a sealed secret with the key its ``key_id`` names.

    Raises :class:`UnknownKeyError` when the keyring lacks that key and
    :class:`SealedSecretError` when the ciphertext does not authenticate under it
    (tampered, truncated, or sealed to a different key that reused the id).
    Keep the result in local scope: pass it to the SSH call and let it go.
    """
    key = keyring.get(sealed.key_id)
    if key is None:
        raise UnknownKeyError(sealed.key_id, keyring.keys())
    try:
        ciphertext = base64.b64decode(sealed.ciphertext, validate=True)
    except (binascii.Error, ValueError):
        # SealedSecret validates base64 already; this guards model_construct'ed values.
        raise SealedSecretError(
            f"secret sealed to key {sealed.key_id!r} is not valid base64"
        ) from None
    box = nacl.public.SealedBox(nacl.public.PrivateKey(key.private_key))
    try:
        plaintext = bytes(box.decrypt(ciphertext))
    except nacl.exceptions.CryptoError:
        # libsodium cannot tell tampering from a wrong key, and neither can we.
        raise SealedSecretError(
            f"secret sealed to key {sealed.key_id!r} does not open: tampered, truncated "
            "or sealed to a different key with the same id"
        ) from None
    _learn(plaintext)
    return plaintext


def seal_text(text: str, recipient: PublicSealingKey) -> SealedSecret:
    """Seal a text secret (password, OpenSSH private key) as UTF-8."""
    return seal(text.encode("utf-8"), recipient)


def open_text(sealed: SealedSecret, keyring: Mapping[str, PrivateSealingKey]) -> str:
    """Open a secret sealed by :func:`seal_text`."""
    plaintext = open_sealed(sealed, keyring)
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError as exc:
        position = exc.start
    # Raised outside the ``except`` block on purpose: a UnicodeDecodeError carries the
    # whole plaintext (``exc.object``) and its message quotes a plaintext byte, so it
    # must not ride along as ``__context__`` into tracebacks.
    raise SealedSecretError(
        f"secret sealed to key {sealed.key_id!r} is not UTF-8 text (byte {position})"
    )


# --- signing -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VerifyKey:
    """A signer's public Ed25519 key."""

    key_id: str
    public_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key(self.key_id, self.public_key, "verify")


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """A private Ed25519 key (its 32-byte RFC 8032 seed). ``repr`` shows the id only."""

    key_id: str
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key(self.key_id, self.seed, "signing")

    @classmethod
    def generate(cls, *, key_id_prefix: str = "auth") -> SigningKey:
        secret = nacl.signing.SigningKey.generate()
        public = bytes(secret.verify_key)
        return cls(key_id=derive_key_id(key_id_prefix, public), seed=bytes(secret))

    @property
    def verify_key(self) -> VerifyKey:
        public = nacl.signing.SigningKey(self.seed).verify_key
        return VerifyKey(key_id=self.key_id, public_key=bytes(public))


def sign(message: bytes, key: SigningKey) -> Signature:
    """Detached Ed25519 signature over ``message`` (the caller's canonical bytes)."""
    signed = nacl.signing.SigningKey(key.seed).sign(message)
    return Signature(
        algorithm="ed25519",
        key_id=key.key_id,
        value=base64.b64encode(bytes(signed.signature)).decode("ascii"),
    )


def verify(message: bytes, signature: Signature, trusted: Mapping[str, VerifyKey]) -> None:
    """Return if ``signature`` is a valid signature of ``message`` by a trusted key.

    Raises :class:`SignatureError` (see its ``reason``) otherwise. There is no boolean
    variant on purpose: a forgotten ``if`` must not let a forged verdict through.
    """
    # The schema pins the algorithm, but a model_construct'ed value skips validation and
    # an algorithm confusion is exactly what a forger would try.
    if signature.algorithm != SIGNING_ALGORITHM:
        raise SignatureError(
            "wrong_algorithm",
            f"signature algorithm {signature.algorithm!r} is not {SIGNING_ALGORITHM!r}",
        )
    key = trusted.get(signature.key_id)
    if key is None:
        held = ", ".join(sorted(trusted)) or "none"
        raise SignatureError(
            "unknown_key",
            f"signature by key {signature.key_id!r}, which is not trusted (trusted: {held})",
        )
    try:
        raw = base64.b64decode(signature.value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _SIGNATURE_BYTES:
        raise SignatureError(
            "malformed", f"signature by key {signature.key_id!r} is not a 64-byte base64 value"
        )
    try:
        nacl.signing.VerifyKey(key.public_key).verify(message, raw)
    except nacl.exceptions.BadSignatureError:
        raise SignatureError(
            "bad_signature",
            f"signature by key {signature.key_id!r} does not match the message",
        ) from None


# --- keyrings ----------------------------------------------------------------------------

_K = TypeVar("_K", PrivateSealingKey, VerifyKey)


def build_keyring(keys: Iterable[_K]) -> dict[str, _K]:
    """Index keys by id for :func:`open_sealed` / :func:`verify`.

    Two different keys under one id is a configuration error, refused here rather than
    letting the later key silently shadow the earlier one.
    """
    ring: dict[str, _K] = {}
    for key in keys:
        if key.key_id in ring and ring[key.key_id] != key:
            raise ValueError(f"two different keys share the key id {key.key_id!r}")
        ring[key.key_id] = key
    return ring
