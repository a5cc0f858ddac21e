"""Sealing credentials and signing verdicts: only the right key opens, any change fails."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.values import SealedSecret, Signature
from services.runtime import redaction
from services.runtime.crypto import (
    MAX_PLAINTEXT_BYTES,
    PrivateSealingKey,
    PublicSealingKey,
    SealedSecretError,
    SignatureError,
    SigningKey,
    UnknownKeyError,
    build_keyring,
    derive_key_id,
    open_sealed,
    open_text,
    seal,
    seal_text,
    sign,
    verify,
)
from services.runtime.redaction import default_redactor

EXECUTOR = PrivateSealingKey.generate()
AUTH = SigningKey.generate()
PASSWORD = "c0rrect-Horse-battery-staple"


@pytest.fixture(autouse=True, scope="module")
def _own_default_redactor() -> Iterator[None]:
    """Sealing/opening teaches the process-wide redactor; keep this module's test secrets
    (hypothesis generates values like four spaces) from masking other tests' output."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redaction, "_DEFAULT", redaction.Redactor(max_secrets=256))
        yield


def _flip_byte(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --- sealing ------------------------------------------------------------------------------


def test_only_the_private_key_opens_a_sealed_secret() -> None:
    sealed = seal_text(PASSWORD, EXECUTOR.public)

    assert sealed.key_id == EXECUTOR.key_id
    assert open_text(sealed, {EXECUTOR.key_id: EXECUTOR}) == PASSWORD


def test_a_different_key_set_under_the_same_id_cannot_open() -> None:
    sealed = seal_text(PASSWORD, EXECUTOR.public)
    impostor = dataclasses.replace(PrivateSealingKey.generate(), key_id=EXECUTOR.key_id)

    with pytest.raises(SealedSecretError) as caught:
        open_sealed(sealed, {EXECUTOR.key_id: impostor})
    assert PASSWORD not in str(caught.value)


def test_unknown_key_id_names_the_key_and_what_the_keyring_holds() -> None:
    sealed = seal_text(PASSWORD, EXECUTOR.public)
    other = PrivateSealingKey.generate()

    with pytest.raises(UnknownKeyError) as caught:
        open_sealed(sealed, {other.key_id: other})
    assert caught.value.key_id == EXECUTOR.key_id
    assert EXECUTOR.key_id in str(caught.value)
    assert other.key_id in str(caught.value)


@pytest.mark.parametrize("index", [0, 31, 32, 47, 48, -1])
def test_tampered_ciphertext_does_not_open(index: int) -> None:
    sealed = seal_text(PASSWORD, EXECUTOR.public)
    tampered = SealedSecret(key_id=sealed.key_id, ciphertext=_flip_byte(sealed.ciphertext, index))

    with pytest.raises(SealedSecretError):
        open_sealed(tampered, {EXECUTOR.key_id: EXECUTOR})


def test_truncated_ciphertext_does_not_open() -> None:
    sealed = seal(b"secret", EXECUTOR.public)
    raw = base64.b64decode(sealed.ciphertext)
    truncated = SealedSecret(key_id=sealed.key_id, ciphertext=base64.b64encode(raw[:40]).decode())

    with pytest.raises(SealedSecretError):
        open_sealed(truncated, {EXECUTOR.key_id: EXECUTOR})


def test_the_sealer_holds_no_private_key_so_cannot_open() -> None:
    public = EXECUTOR.public

    assert {f.name for f in dataclasses.fields(public)} == {"key_id", "public_key"}
    assert public.public_key != EXECUTOR.private_key
    # Using the public half as if it were private yields a different key, which fails.
    as_private = PrivateSealingKey(key_id=public.key_id, private_key=public.public_key)
    with pytest.raises(SealedSecretError):
        open_sealed(seal_text(PASSWORD, public), {public.key_id: as_private})


def test_sealing_twice_gives_different_ciphertexts() -> None:
    # Ephemeral sender keys: equal passwords must not be linkable on the bus.
    assert seal_text(PASSWORD, EXECUTOR.public) != seal_text(PASSWORD, EXECUTOR.public)


def test_rotation_keyring_with_old_and_new_keys_opens_both() -> None:
    old, new = PrivateSealingKey.generate(), PrivateSealingKey.generate()
    ring = build_keyring([old, new])

    assert open_text(seal_text("old-secret", old.public), ring) == "old-secret"
    assert open_text(seal_text("new-secret", new.public), ring) == "new-secret"


def test_keyring_refuses_two_keys_under_one_id() -> None:
    a = PrivateSealingKey.generate()
    b = dataclasses.replace(PrivateSealingKey.generate(), key_id=a.key_id)

    with pytest.raises(ValueError, match=a.key_id):
        build_keyring([a, b])


def test_key_id_is_derived_from_the_public_key_and_fits_the_schema_pattern() -> None:
    assert EXECUTOR.key_id == derive_key_id("exec", EXECUTOR.public.public_key)
    assert EXECUTOR.key_id.startswith("exec-")
    assert AUTH.key_id.startswith("auth-")
    SealedSecret(key_id=EXECUTOR.key_id, ciphertext="AAAA")  # validates against KeyId


def test_key_reprs_never_show_key_material() -> None:
    for key, material in [
        (EXECUTOR, EXECUTOR.private_key),
        (AUTH, AUTH.seed),
        (EXECUTOR.public, EXECUTOR.public.public_key),
    ]:
        assert material.hex() not in repr(key)
        assert base64.b64encode(material).decode() not in repr(key)
        assert repr(material) not in repr(key)


def test_oversized_secret_is_refused_before_sealing() -> None:
    sealed = seal(b"x" * MAX_PLAINTEXT_BYTES, EXECUTOR.public)  # the largest that fits
    assert len(open_sealed(sealed, {EXECUTOR.key_id: EXECUTOR})) == MAX_PLAINTEXT_BYTES

    with pytest.raises(SealedSecretError, match="too large"):
        seal(b"x" * (MAX_PLAINTEXT_BYTES + 1), EXECUTOR.public)


def test_non_utf8_plaintext_is_an_error_that_does_not_quote_it() -> None:
    sealed = seal(b"\xff\xfeSECRETBYTES", EXECUTOR.public)

    with pytest.raises(SealedSecretError) as caught:
        open_text(sealed, {EXECUTOR.key_id: EXECUTOR})
    assert "SECRETBYTES" not in str(caught.value)
    assert "xff" not in str(caught.value)
    assert caught.value.__context__ is None


def test_sealed_and_opened_plaintexts_are_taught_to_the_default_redactor() -> None:
    sealed_only, opened = "sealed-canary-7f3a", "opened-canary-91bc"
    seal_text(sealed_only, EXECUTOR.public)
    other = PrivateSealingKey.generate()
    sealed = seal_text(opened, other.public)

    open_text(sealed, {other.key_id: other})

    redacted = default_redactor().redact_text(f"{sealed_only} {opened}")
    assert redacted == "[REDACTED] [REDACTED]"


def test_malformed_public_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PublicSealingKey(key_id="exec-abc", public_key=b"short")
    with pytest.raises(ValueError, match="key id"):
        PublicSealingKey(key_id="Not A Key Id", public_key=bytes(32))


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=2000))
def test_seal_open_round_trips_any_text(text: str) -> None:
    assert open_text(seal_text(text, EXECUTOR.public), {EXECUTOR.key_id: EXECUTOR}) == text


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000))
def test_seal_open_round_trips_any_bytes(data: bytes) -> None:
    assert open_sealed(seal(data, EXECUTOR.public), {EXECUTOR.key_id: EXECUTOR}) == data


# --- signing ------------------------------------------------------------------------------

VERDICT = b'{"ticket_id":"HD-20261122-0001","revision":1,"verdict":"verified"}'
TRUSTED = {AUTH.key_id: AUTH.verify_key}


def test_a_valid_signature_verifies() -> None:
    signature = sign(VERDICT, AUTH)

    assert signature.algorithm == "ed25519"
    assert signature.key_id == AUTH.key_id
    verify(VERDICT, signature, TRUSTED)


@pytest.mark.parametrize("index", [0, 31, 63])
def test_tampered_signature_fails(index: int) -> None:
    signature = sign(VERDICT, AUTH)
    tampered = signature.model_copy(update={"value": _flip_byte(signature.value, index)})

    with pytest.raises(SignatureError) as caught:
        verify(VERDICT, tampered, TRUSTED)
    assert caught.value.reason == "bad_signature"


def test_altered_message_fails() -> None:
    signature = sign(VERDICT, AUTH)

    with pytest.raises(SignatureError) as caught:
        verify(VERDICT.replace(b"verified", b"rejected"), signature, TRUSTED)
    assert caught.value.reason == "bad_signature"


def test_unknown_signer_key_id_fails() -> None:
    forger = SigningKey.generate()

    with pytest.raises(SignatureError) as caught:
        verify(VERDICT, sign(VERDICT, forger), TRUSTED)
    assert caught.value.reason == "unknown_key"
    assert forger.key_id in str(caught.value)


def test_forger_reusing_the_trusted_key_id_fails() -> None:
    forger = dataclasses.replace(SigningKey.generate(), key_id=AUTH.key_id)

    with pytest.raises(SignatureError) as caught:
        verify(VERDICT, sign(VERDICT, forger), TRUSTED)
    assert caught.value.reason == "bad_signature"


def test_wrong_algorithm_fails_even_when_validation_was_bypassed() -> None:
    signature = sign(VERDICT, AUTH)
    hmac_claim = Signature.model_construct(
        algorithm="hmac-sha256",  # type: ignore[arg-type]  # the forgery under test
        key_id=signature.key_id,
        value=signature.value,
    )

    with pytest.raises(SignatureError) as caught:
        verify(VERDICT, hmac_claim, TRUSTED)
    assert caught.value.reason == "wrong_algorithm"


def test_signature_of_wrong_length_is_malformed() -> None:
    short = Signature(key_id=AUTH.key_id, value=base64.b64encode(b"x" * 32).decode())

    with pytest.raises(SignatureError) as caught:
        verify(VERDICT, short, TRUSTED)
    assert caught.value.reason == "malformed"


def test_rotation_trusts_old_and_new_signing_keys() -> None:
    new = SigningKey.generate()
    trusted = build_keyring([AUTH.verify_key, new.verify_key])

    verify(VERDICT, sign(VERDICT, AUTH), trusted)
    verify(VERDICT, sign(VERDICT, new), trusted)
