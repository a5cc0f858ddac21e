"""Value types shared by every event: identifiers and the sealed/signed wrappers.

A credential after intake is only ever a :class:`SealedSecret`: ciphertext sealed to the
executor's public key plus the id of that key, so keys can rotate. Nothing in this module
can hold plaintext.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

KEY_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{2,63}$"

KeyId = Annotated[str, Field(pattern=KEY_ID_PATTERN, description="Id of a key in a key set")]


def _check_base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be standard base64") from exc
    return value


Base64Text = Annotated[str, Field(min_length=4, max_length=65536), AfterValidator(_check_base64)]


class SealedSecret(BaseModel):
    """A secret sealed (X25519 sealed box) to the public key named by ``key_id``.

    Only the holder of that key's private half (the executor) can open it. The ciphertext
    is safe to publish and store; ``repr``/``str`` still show only the key id and length.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    key_id: KeyId
    ciphertext: Base64Text

    def __repr__(self) -> str:
        size = len(self.ciphertext)
        return f"SealedSecret(key_id={self.key_id!r}, ciphertext=<{size} b64 chars>)"

    __str__ = __repr__


class Signature(BaseModel):
    """A detached Ed25519 signature over an event's canonical bytes."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: KeyId
    value: Base64Text
