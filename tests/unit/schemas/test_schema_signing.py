"""What auth signs: canonical bytes of AuthorizationVerified, everything but the signature."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from schema_strategies import EVENT_STRATEGIES, fast, signatures

from schemas import AuthorizationVerified, Signature, canonical_json, encode, parse_event

verdicts = EVENT_STRATEGIES[AuthorizationVerified]


def test_canonical_json_sorts_keys_drops_whitespace_and_keeps_utf8():
    assert canonical_json({"b": [1, {"d": None, "c": "è"}], "a": True}) == (
        '{"a":true,"b":[1,{"c":"è","d":null}]}'.encode()
    )


@fast
@given(verdict=verdicts, signature=signatures)
def test_signed_bytes_exclude_the_signature(verdict: AuthorizationVerified, signature: Signature):
    signed = verdict.with_signature(signature)
    assert signed.signature == signature
    assert signed.signed_bytes() == verdict.signed_bytes()
    assert b'"signature"' not in signed.signed_bytes()


@fast
@given(verdict=verdicts)
def test_signed_bytes_survive_the_wire(verdict: AuthorizationVerified):
    # The executor recomputes the bytes from the event it parsed, not from what auth built.
    parsed = parse_event(encode(verdict), AuthorizationVerified)
    assert parsed.signed_bytes() == verdict.signed_bytes()


@fast
@given(verdict=verdicts, seed=st.integers())
def test_signed_bytes_do_not_depend_on_field_order(verdict: AuthorizationVerified, seed: int):
    doc = json.loads(encode(verdict))
    keys = list(doc)
    random.Random(seed).shuffle(keys)
    shuffled = json.dumps({k: doc[k] for k in keys})
    assert parse_event(shuffled, AuthorizationVerified).signed_bytes() == verdict.signed_bytes()


@settings(fast, max_examples=25)
@given(a=verdicts, b=verdicts)
def test_signed_bytes_change_when_any_covered_field_changes(
    a: AuthorizationVerified, b: AuthorizationVerified
):
    # Swap in b's value field by field, top level and inside the embedded ticket; every
    # difference must show in the signed bytes (model_copy skips validation on purpose: a
    # forger is not bound by it).
    for name in AuthorizationVerified.model_fields:
        if name == "signature" or getattr(a, name) == getattr(b, name):
            continue
        altered = a.model_copy(update={name: getattr(b, name)})
        assert altered.signed_bytes() != a.signed_bytes(), name
    for name in type(a.ticket).model_fields:
        if getattr(a.ticket, name) == getattr(b.ticket, name):
            continue
        ticket = a.ticket.model_copy(update={name: getattr(b.ticket, name)})
        altered = a.model_copy(update={"ticket": ticket})
        assert altered.signed_bytes() != a.signed_bytes(), f"ticket.{name}"


@fast
@given(verdict=verdicts)
def test_signed_bytes_cover_sealed_credentials_and_server_facts(verdict: AuthorizationVerified):
    sealed = verdict.ticket.credentials.sealed
    tampered_secret = sealed.model_copy(update={"ciphertext": sealed.ciphertext + "AAAA"})
    tampered_ticket = verdict.ticket.model_copy(
        update={
            "credentials": verdict.ticket.credentials.model_copy(update={"sealed": tampered_secret})
        }
    )
    assert (
        verdict.model_copy(update={"ticket": tampered_ticket}).signed_bytes()
        != verdict.signed_bytes()
    )
    moved = verdict.server.model_copy(update={"ssh_port": verdict.server.ssh_port % 65535 + 1})
    assert verdict.model_copy(update={"server": moved}).signed_bytes() != verdict.signed_bytes()
