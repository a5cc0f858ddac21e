"""Auth's signature on a verdict: what it covers, and every way a verdict fails to check."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from auth_factories import AUTH_KEY, NOW, server, ticket

from schemas import AuthorizationVerified, EventDecodeError, Signature, encode, parse_event
from services.auth.signing import VerdictSigner
from services.auth.verdict import Facts, Policy, decide, to_event
from services.runtime.crypto import SignatureError, SigningKey, build_keyring
from services.runtime.verdicts import verify_verdict

SIGNER = VerdictSigner(AUTH_KEY)
TRUSTED = build_keyring([AUTH_KEY.verify_key])
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl host"


def signed_verdict(**ticket_overrides: Any) -> AuthorizationVerified:
    t = ticket(
        parameters={"unit": "nginx", "flags": [1, True, None]},
        error_messages=["ssh: connect to host 203.0.113.10 port 22: timed out"],
        **ticket_overrides,
    )
    record = server(ssh_host_key=SSH_KEY)
    verdict = decide(
        t, Facts(candidates=(record,), prior_interventions=5), now=NOW, policy=Policy()
    )
    event = to_event(t, verdict, event_id=uuid.uuid4(), now=NOW)
    assert isinstance(event, AuthorizationVerified)
    return SIGNER.sign(event)


def test_a_signed_verdict_verifies_after_the_wire():
    verdict = signed_verdict()
    assert verdict.signature is not None
    assert verdict.signature.key_id == AUTH_KEY.key_id
    parsed = parse_event(encode(verdict), AuthorizationVerified)
    assert verify_verdict(parsed, TRUSTED) == parsed


def _leaves(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every scalar, and of every empty list/object, in a JSON document."""
    if isinstance(doc, dict) and doc:
        for key, value in doc.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(doc, list) and doc:
        for i, value in enumerate(doc):
            yield from _leaves(value, (*path, i))
    else:
        yield path


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _alternatives(value: Any) -> Iterator[Any]:
    """Other values of the same kind, most likely to stay schema-valid first."""
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, int):
        yield from (value + 1, value - 1)
    elif isinstance(value, str):
        for parse, bump in (
            (uuid.UUID, lambda _: str(uuid.uuid4())),
            (
                datetime.fromisoformat,
                lambda v: (datetime.fromisoformat(v) - timedelta(seconds=1)).isoformat(),
            ),
        ):
            try:
                parse(value)
            except ValueError:
                continue
            yield bump(value)
        if value.count(".") == 3 and value.replace(".", "").isdigit():
            yield value.rsplit(".", 1)[0] + (".11" if not value.endswith(".11") else ".12")
        # Base64 stays valid if one data character changes into another.
        yield ("B" if value[0] != "B" else "C") + value[1:]
        yield value[:-1] + ("x" if value[-1] != "x" else "y")
        yield value + "x"
        # Other members of the schema's enumerations.
        yield from (
            "diagnostics",
            "boot_repair",
            "linux",
            "windows",
            "vps",
            "dedicated",
            "en",
            "it",
            "email",
            "api",
            "high",
            "low",
            "form",
            "classified",
            "password",
            "private_key",
        )
    elif value is None:
        yield from ("x", SSH_KEY, "diagnostics", 1, str(uuid.uuid4()))
    elif value == []:
        yield ["x"]
    elif value == {}:
        yield {"unit": "sshd"}


def test_altering_any_signed_field_fails_verification():
    """Every leaf of the dumped verdict (envelope, account, server facts, review flag, the
    whole embedded ticket down to the sealed ciphertext), changed to another value that still
    parses, makes the signature fail, as the executor would see it after the wire."""
    verdict = signed_verdict()
    doc = json.loads(encode(verdict))
    refused_by_signature, refused_by_schema = [], []
    for path in _leaves(doc):
        if path[0] == "signature":
            continue
        original = _get(doc, path)
        for alternative in _alternatives(original):
            if alternative == original:
                continue
            altered = copy.deepcopy(doc)
            _set(altered, path, alternative)
            try:
                parsed = parse_event(json.dumps(altered), AuthorizationVerified)
            except EventDecodeError:
                continue
            with pytest.raises(SignatureError) as caught:
                verify_verdict(parsed, TRUSTED)
            assert caught.value.reason == "bad_signature"
            refused_by_signature.append(path)
            break
        else:
            refused_by_schema.append(path)  # no other value of it parses: refused at decode
    assert ("ticket", "credentials", "sealed", "ciphertext") in refused_by_signature
    assert ("ticket", "authorization", "signed_at") in refused_by_signature
    assert ("server", "ip") in refused_by_signature
    assert ("review_required",) in refused_by_signature
    assert ("ticket", "parameters", "flags", 1) in refused_by_signature
    # Only fields bound to another field by the schema cannot change alone (ticket_id,
    # revision and account_id must equal the embedded ticket's; the server reference holds
    # exactly one identifier; event_type and the like are constants); the bound pairs are
    # changed together below.
    assert set(refused_by_schema) <= {
        ("ticket_id",),
        ("revision",),
        ("account_id",),
        ("event_type",),
        ("schema_version",),
        ("producer",),
        ("ticket", "ticket_id"),
        ("ticket", "revision"),
        ("ticket", "account_id"),
        ("ticket", "event_type"),
        ("ticket", "schema_version"),
        ("ticket", "producer"),
        ("ticket", "scope"),
        ("ticket", "server", "service_id"),
        ("ticket", "server", "service_name"),
        # An unsigned embedded ticket's null signature: no scalar stands in for a Signature.
        ("ticket", "signature"),
    }, refused_by_schema
    assert len(refused_by_signature) > 40


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ticket_id", "HD-OTHER-1"),
        ("revision", 7),
        ("account_id", "ACC-2"),
    ],
)
def test_moving_a_verdict_to_another_ticket_revision_or_account_fails(field: str, value: Any):
    doc = json.loads(encode(signed_verdict()))
    doc[field] = doc["ticket"][field] = value
    with pytest.raises(SignatureError) as caught:
        verify_verdict(parse_event(json.dumps(doc), AuthorizationVerified), TRUSTED)
    assert caught.value.reason == "bad_signature"


def test_changing_the_category_with_its_scope_fails():
    doc = json.loads(encode(signed_verdict()))
    doc["ticket"]["category"] = "software_installation"
    with pytest.raises(SignatureError):
        verify_verdict(parse_event(json.dumps(doc), AuthorizationVerified), TRUSTED)


def test_a_forger_unbound_by_validation_fails_too():
    # model_copy skips validation: fields changed in memory, however inconsistent.
    verdict = signed_verdict()
    other = signed_verdict(account_id="ACC-2")
    for name in AuthorizationVerified.model_fields:
        if name == "signature" or getattr(verdict, name) == getattr(other, name):
            continue
        with pytest.raises(SignatureError):
            verify_verdict(verdict.model_copy(update={name: getattr(other, name)}), TRUSTED)


def test_a_verdict_signed_by_an_unknown_key_fails():
    stranger = VerdictSigner(SigningKey.generate())
    verdict = stranger.sign(signed_verdict())
    with pytest.raises(SignatureError) as caught:
        verify_verdict(verdict, TRUSTED)
    assert caught.value.reason == "unknown_key"
    assert verdict.ticket_id in str(caught.value)


def test_another_key_claiming_auths_key_id_fails():
    verdict = VerdictSigner(SigningKey.generate()).sign(signed_verdict())
    assert verdict.signature is not None
    forged = verdict.with_signature(
        verdict.signature.model_copy(update={"key_id": AUTH_KEY.key_id})
    )
    with pytest.raises(SignatureError) as caught:
        verify_verdict(forged, TRUSTED)
    assert caught.value.reason == "bad_signature"


def test_an_unsigned_verdict_fails():
    verdict = signed_verdict().model_copy(update={"signature": None})
    with pytest.raises(SignatureError) as caught:
        verify_verdict(verdict, TRUSTED)
    assert caught.value.reason == "malformed"
    assert "not signed" in str(caught.value)


def test_a_signature_from_another_algorithm_fails():
    verdict = signed_verdict()
    assert verdict.signature is not None
    other = Signature.model_construct(
        algorithm="hmac-sha256", key_id=AUTH_KEY.key_id, value=verdict.signature.value
    )
    with pytest.raises(SignatureError) as caught:
        verify_verdict(verdict.model_copy(update={"signature": other}), TRUSTED)
    assert caught.value.reason == "wrong_algorithm"


def test_verifiers_accept_old_and_new_auth_keys_during_a_rotation():
    new = SigningKey.generate()
    ring = build_keyring([AUTH_KEY.verify_key, new.verify_key])
    verify_verdict(signed_verdict(), ring)
    verify_verdict(VerdictSigner(new).sign(signed_verdict()), ring)


def test_resigning_replaces_the_old_signature():
    verdict = signed_verdict()
    again = SIGNER.sign(verdict)
    verify_verdict(again, TRUSTED)
    assert again.signed_bytes() == verdict.signed_bytes()


def test_renaming_the_server_the_customer_asked_for_fails():
    doc = json.loads(encode(signed_verdict()))
    doc["ticket"]["server"] = {"ip": None, "service_id": "SRV-1", "service_name": None}
    with pytest.raises(SignatureError):
        verify_verdict(parse_event(json.dumps(doc), AuthorizationVerified), TRUSTED)
