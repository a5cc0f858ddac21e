"""Seal at the edge: only the executor's key opens; nothing credential-like reaches a DLQ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas import SealedCredentials, parse_helpdesk_request
from services.intake.examples import example_request
from services.intake.sealing import Sealer, scrub_for_dlq, seal_credentials, seal_request
from services.runtime.crypto import (
    PrivateSealingKey,
    SealedSecretError,
    UnknownKeyError,
    open_text,
)
from services.runtime.keys import init_keys, key_set_paths, load_sealing_keyring
from services.runtime.redaction import Redactor

CANARY = "Canary-Seal-7c1e9f"
KEY = PrivateSealingKey.generate()
OTHER = PrivateSealingKey.generate()


def test_sealed_password_opens_only_with_the_executor_key() -> None:
    sealed = seal_credentials("root", password=CANARY, recipient=KEY.public)
    assert (sealed.username, sealed.kind, sealed.sealed.key_id) == ("root", "password",
                                                                    KEY.key_id)
    assert CANARY not in sealed.model_dump_json()
    assert open_text(sealed.sealed, {KEY.key_id: KEY}) == CANARY
    with pytest.raises(UnknownKeyError):
        open_text(sealed.sealed, {OTHER.key_id: OTHER})
    with pytest.raises(SealedSecretError):  # another key under the same id does not open it
        open_text(sealed.sealed, {KEY.key_id: PrivateSealingKey(
            key_id=KEY.key_id, private_key=OTHER.private_key)})


def test_seal_credentials_reads_the_public_key_file(tmp_path: Path) -> None:
    paths = init_keys(tmp_path / "keys")
    sealed = seal_credentials("admin", password=CANARY, key_path=paths.sealing_public)
    keyring = load_sealing_keyring(key_set_paths(tmp_path / "keys").sealing_private)
    assert open_text(sealed.sealed, keyring) == CANARY


def test_private_keys_are_sealed_too() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----"
    sealed = seal_credentials("admin", private_key=key, recipient=KEY.public)
    assert sealed.kind == "private_key"
    assert open_text(sealed.sealed, {KEY.key_id: KEY}) == key


@pytest.mark.parametrize("kwargs", [
    {"password": ""},
    {},
    {"password": CANARY, "private_key": CANARY},
    {"private_key": CANARY},  # not OpenSSH armour
])
def test_bad_credentials_are_refused_without_quoting_the_secret(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="credentials") as caught:
        seal_credentials("root", recipient=KEY.public, **kwargs)
    assert CANARY not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_the_sealer_teaches_the_redactor_before_sealing() -> None:
    redactor = Redactor()
    plain = parse_helpdesk_request(example_request(
        credentials={"username": "root", "password": CANARY})).credentials
    sealed = Sealer(KEY.public, redactor).seal(plain)  # type: ignore[arg-type]
    assert isinstance(sealed, SealedCredentials)
    assert redactor.redact_text(f"login with {CANARY}") == "login with [REDACTED]"


def test_seal_request_seals_plaintext_and_leaves_sealed_alone() -> None:
    document = example_request(credentials={"username": "root", "password": CANARY})
    sealed = seal_request(document, recipient=KEY.public)
    assert CANARY not in json.dumps(sealed)
    assert document["credentials"]["password"] == CANARY, "the input is not modified"
    assert parse_helpdesk_request(sealed).has_plaintext_credentials is False
    assert seal_request(sealed, recipient=KEY.public) == sealed


def test_seal_request_refuses_a_request_without_credentials() -> None:
    with pytest.raises(ValueError, match="credentials"):
        seal_request(example_request(credentials="root:hunter2"), recipient=KEY.public)


# --- dead-letter copies ----------------------------------------------------------------


def test_dlq_copy_of_a_request_drops_plaintext_credentials_and_keeps_the_rest() -> None:
    body = json.dumps(example_request(
        ticket_id="HD-1", credentials={"username": "root", "password": CANARY})).encode()
    copy = json.loads(scrub_for_dlq(body))
    assert CANARY not in json.dumps(copy)
    assert copy["ticket_id"] == "HD-1"
    assert copy["credentials"].startswith("[removed by intake")


def test_dlq_copy_keeps_sealed_credentials_for_replay() -> None:
    sealed = seal_request(example_request(), recipient=KEY.public)
    copy = json.loads(scrub_for_dlq(json.dumps(sealed).encode()))
    assert copy["credentials"] == sealed["credentials"]


def test_dlq_copy_masks_secret_fields_anywhere() -> None:
    body = json.dumps({"ticket_id": 5, "extra": [{"db_password": CANARY}],
                       "token": CANARY}).encode()
    assert CANARY not in scrub_for_dlq(body).decode()


@pytest.mark.parametrize("body", [
    f'{{"credentials": {{"password": "{CANARY}"'.encode(),  # truncated JSON
    f'["{CANARY}"]'.encode(),
    CANARY.encode(),
    b"\xff\xfe" + CANARY.encode(),
    b"",
])
def test_dlq_copy_of_something_unsearchable_keeps_only_size_and_digest(body: bytes) -> None:
    copy = json.loads(scrub_for_dlq(body))
    assert set(copy) == {"scrubbed", "bytes", "sha256"}
    assert CANARY not in json.dumps(copy)


def test_dlq_copy_of_lone_surrogates_is_still_json() -> None:
    body = b'{"ticket_id": "\\ud800", "credentials": {"password": "' + CANARY.encode() + b'"}}'
    copy = json.loads(scrub_for_dlq(body))
    assert copy["ticket_id"] == "\ud800"
    assert CANARY not in json.dumps(copy)
