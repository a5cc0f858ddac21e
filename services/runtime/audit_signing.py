"""Audit keys: who may write a record of which chain, and the anchors of chain heads.

A service appends with its own Ed25519 audit key (``audit-<service>.key``,
:class:`AuditSigner`): a record carries ``key_id`` and ``signature`` = Ed25519 over
``b"intervention-audit-record:v1:" + hash`` (the hash covers every content field and
``prev_hash``). Each service writes only its own chains (one per ticket and producer,
:mod:`services.runtime.audit`), so the producer of a chain, the service named by a record's
``actor`` (its part before ``:``) and the service of the signing key are one and the same;
the verifier refuses a record where they differ.

An :class:`Anchor` is a chain's head as its producer saw it after an append, published
outside the store (:mod:`services.runtime.audit_anchors`). Pure: no I/O here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from schemas.canonical import canonical_json
from services.runtime.crypto import SigningKey, VerifyKey

__all__ = [
    "AUDIT_SIGNATURE_CONTEXT",
    "Anchor",
    "AuditKeys",
    "AuditSigner",
    "actor_service",
    "check_signature",
    "signed_message",
]

AUDIT_SIGNATURE_CONTEXT = b"intervention-audit-record:v1:"
# key id -> (the service it belongs to, its public key); see keys.load_audit_verify_keys.
AuditKeys = Mapping[str, tuple[str, VerifyKey]]


def actor_service(actor: str) -> str:
    """The service an ``actor`` names: ``executor:<owner>`` -> ``executor``. It is also the
    producer whose chain the record belongs to."""
    return actor.split(":", 1)[0]


@dataclass(frozen=True, kw_only=True)
class AuditSigner:
    """A service's audit key: signs what that service appends, and only as that service."""

    service: str
    key: SigningKey

    def __post_init__(self) -> None:
        # The private key is held as an object, so signing costs no key expansion.
        object.__setattr__(self, "_nacl", nacl.signing.SigningKey(self.key.seed))

    def sign(self, message: bytes) -> str:
        signer: nacl.signing.SigningKey = object.__getattribute__(self, "_nacl")
        return base64.b64encode(signer.sign(message).signature).decode("ascii")


def signed_message(digest: str) -> bytes:
    """What a record's signature covers: the context and the record's hash."""
    return AUDIT_SIGNATURE_CONTEXT + digest.encode("ascii")


def check_signature(message: bytes, key_id: str | None, signature: str | None,
                    keys: AuditKeys) -> str | None:
    """Why ``signature`` by ``key_id`` over ``message`` does not hold (None: it does), and
    otherwise the service of the key (prefixed ``ok:``)."""
    if not key_id or not signature:
        return "unsigned"
    known = keys.get(key_id)
    if known is None:
        return f"signed by unknown key {key_id!r}"
    try:
        raw = base64.b64decode(signature, validate=True)
        nacl.signing.VerifyKey(known[1].public_key).verify(message, raw)
    except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError):
        return "bad signature"
    return "ok:" + known[0]


@dataclass(frozen=True, kw_only=True)
class Anchor:
    """A chain's head as a service saw it after an append, published outside the store.

    ``producer`` names the chain (ticket and producer); None on an anchor written before
    chains were per producer (it then anchors the ticket's single legacy chain), and such an
    anchor keeps its original signed content (``v1``).
    """

    ticket_id: str
    seq: int
    hash: str
    service: str
    anchored_at: str
    producer: str | None = None
    key_id: str | None = None
    signature: str | None = None

    def content(self) -> bytes:
        fields: dict[str, object] = {
            "ticket_id": self.ticket_id, "seq": self.seq, "hash": self.hash,
            "service": self.service, "anchored_at": self.anchored_at}
        if self.producer is None:
            return b"intervention-audit-anchor:v1:" + canonical_json(fields)
        return b"intervention-audit-anchor:v2:" + canonical_json(
            {**fields, "producer": self.producer})
