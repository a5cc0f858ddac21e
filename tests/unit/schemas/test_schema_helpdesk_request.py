"""The helpdesk request (§4.1): structural validation with field-level errors, no secrets."""

from __future__ import annotations

import copy
import json
import traceback
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schema_strategies import canary_passwords, fast, helpdesk_requests, plain_credentials

from schemas import (
    CATEGORIES,
    INCLUDED_CATEGORIES,
    PAID_ONLY_CATEGORIES,
    HelpdeskTicketRequest,
    PlainCredentials,
    RequestValidationError,
    SealedCredentials,
    SealedSecret,
    encode,
    parse_helpdesk_request,
    scope_of,
)

EXAMPLE: dict[str, Any] = {
    "ticket_id": "HD-20261122-0001",
    "revision": 1,
    "account_id": "ACC-1001",
    "department": "technical_issues",
    "channel": "client_area",
    "language": "en",
    "server": {"ip": "203.0.113.10"},
    "category": "diagnostics",
    "description": "Server answers ping but SSH times out since this morning.",
    "error_messages": ["ssh: connect to host 203.0.113.10 port 22: Connection timed out"],
    "credentials": {"username": "admin", "password": "s3cret-CANARY-pw"},
    "authorization": {
        "statement": (
            "I authorize the provider's support to perform OS-level intervention on this server."
        ),
        "accepts_backup_responsibility": True,
        "accepts_service_interruption": True,
        "accepts_data_loss_disclaimer": True,
        "signed_by": "Jane Doe",
        "signed_at": "2026-11-22T09:58:00Z",
    },
}
SEALED = {
    "username": "admin",
    "kind": "password",
    "sealed": {"key_id": "executor-2026", "ciphertext": "c2VhbGVkIGJ5dGVz"},
}


def request(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(EXAMPLE)
    doc.update(changes)
    return doc


def errors_of(doc: object) -> dict[str, str]:
    raw = doc if isinstance(doc, bytes | str) else json.dumps(doc)
    with pytest.raises(RequestValidationError) as info:
        parse_helpdesk_request(raw)
    return {e.field: e.message for e in info.value.errors}


def test_the_architecture_example_parses():
    req = parse_helpdesk_request(json.dumps(EXAMPLE).encode())
    assert req.ticket_id == "HD-20261122-0001"
    assert str(req.server.ip) == "203.0.113.10"
    assert req.server.kind == "ip"
    assert isinstance(req.credentials, PlainCredentials)
    assert req.has_plaintext_credentials
    assert req.authorization.signed_at == datetime(2026, 11, 22, 9, 58, tzinfo=UTC)


def test_a_mapping_is_validated_exactly_like_its_json():
    assert parse_helpdesk_request(EXAMPLE) == parse_helpdesk_request(json.dumps(EXAMPLE))


def test_sealed_credentials_parse_and_round_trip():
    req = parse_helpdesk_request(request(credentials=SEALED))
    assert isinstance(req.credentials, SealedCredentials)
    assert not req.has_plaintext_credentials
    assert parse_helpdesk_request(encode(req)) == req


@settings(fast, max_examples=25)
@given(req=helpdesk_requests())
def test_sealed_requests_round_trip(req: HelpdeskTicketRequest):
    assert parse_helpdesk_request(encode(req)) == req


def _wrong_type(value: object) -> object:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return "not-a-list"
    if isinstance(value, dict):
        return ["not-an-object"]
    return 12345


@settings(fast, max_examples=30)
@given(req=helpdesk_requests(), data=st.data())
def test_malformed_variants_of_a_request_are_rejected_naming_the_field(
    req: HelpdeskTicketRequest, data: st.DataObject
):
    doc = json.loads(encode(req))
    assert "unexpected_field" in errors_of({**doc, "unexpected_field": 1})

    key = data.draw(st.sampled_from(sorted(doc)), label="field given a wrong type")
    fields = errors_of({**doc, key: _wrong_type(doc[key])})
    assert any(f == key or f.startswith((f"{key}.", f"{key}[")) for f in fields)

    bad_id = data.draw(st.sampled_from(["", "HD 1", "HD/1", "a" * 65, "$(id)"]), label="ticket id")
    assert "ticket_id" in errors_of({**doc, "ticket_id": bad_id})

    naive = {**doc, "authorization": {**doc["authorization"], "signed_at": "2026-11-22T09:58:00"}}
    assert "authorization.signed_at" in errors_of(naive)

    bad_ip = data.draw(st.sampled_from(["999.1.1.1", "::g", "host", ""]), label="ip")
    assert "server.ip" in errors_of({**doc, "server": {"ip": bad_ip}})


def test_business_rules_are_left_to_intake():
    # Intake explains these in the customer's language; the contract only checks shape.
    req = parse_helpdesk_request(
        request(
            department="sales",
            channel="live_chat",
            category=None,
            authorization={
                **EXAMPLE["authorization"],
                "accepts_backup_responsibility": False,
                "accepts_service_interruption": False,
                "accepts_data_loss_disclaimer": False,
            },
        )
    )
    assert (req.department, req.channel, req.category) == ("sales", "live_chat", None)
    assert not req.authorization.accepts_backup_responsibility


def test_optional_fields_may_be_omitted():
    doc = request()
    for key in ("category", "error_messages", "parameters"):
        doc.pop(key, None)
    req = parse_helpdesk_request(doc)
    assert (req.category, req.error_messages, req.parameters) == (None, (), {})


@pytest.mark.parametrize(
    "server",
    [
        {},
        {"ip": None},
        {"ip": "203.0.113.10", "service_id": "SRV-1001"},
        {"service_id": "SRV-1001", "service_name": "web-01"},
    ],
)
def test_server_needs_exactly_one_identifier(server: dict[str, Any]):
    message = errors_of(request(server=server))["server"]
    assert "exactly one of ip, service_id, service_name" in message


@pytest.mark.parametrize(
    ("server", "field"),
    [
        ({"ip": "203.0.113.300"}, "server.ip"),
        ({"ip": "localhost"}, "server.ip"),
        ({"service_id": "SRV 1001"}, "server.service_id"),
        ({"service_id": "../etc"}, "server.service_id"),
        ({"service_name": "web\n01"}, "server.service_name"),
        ({"service_name": "web\x1b[31m"}, "server.service_name"),
        ({"service_name": "   "}, "server.service_name"),
        ({"service_name": "x" * 256}, "server.service_name"),
        ({"hostname": "web-01"}, "server.hostname"),
    ],
)
def test_malformed_server_identifiers_name_their_field(server: dict[str, Any], field: str):
    assert field in errors_of(request(server=server))


def test_ipv6_and_service_ids_and_names_are_accepted():
    servers = [{"ip": "2001:db8::10"}, {"service_id": "SRV-1001"}, {"service_name": "Web 01 (MI)"}]
    for server in servers:
        assert parse_helpdesk_request(request(server=server)).server.value


@pytest.mark.parametrize(
    ("credentials", "field"),
    [
        ({"username": "admin"}, "credentials"),
        ({"username": "admin", "password": "a", "private_key": "b"}, "credentials.private_key"),
        ({"password": "a"}, "credentials.username"),
        ({"username": "admin", "password": ""}, "credentials.password"),
        ({"username": "admin", "password": "x" * 1025}, "credentials.password"),
        ({"username": "admin", "private_key": "not a key"}, "credentials.private_key"),
        ({"username": "admin", "kind": "password"}, "credentials.sealed"),
        ({"username": "admin", "kind": "token", "sealed": SEALED["sealed"]}, "credentials.kind"),
        ("admin:secret", "credentials"),
        (None, "credentials"),
    ],
)
def test_malformed_credentials_name_their_field(credentials: object, field: str):
    assert field in errors_of(request(credentials=credentials))


def test_a_private_key_is_accepted_instead_of_a_password():
    key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    req = parse_helpdesk_request(request(credentials={"username": "root", "private_key": key}))
    assert isinstance(req.credentials, PlainCredentials)
    assert req.credentials.kind == "private_key"
    assert req.credentials.secret_value() == key


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ticket_id": "HD 1"}, "ticket_id"),
        ({"revision": 0}, "revision"),
        ({"revision": "1"}, "revision"),
        ({"account_id": ""}, "account_id"),
        ({"language": "de"}, "language"),
        ({"channel": "phone"}, "channel"),
        ({"category": "crypto_mining"}, "category"),
        ({"description": ""}, "description"),
        ({"description": "x" * 20001}, "description"),
        ({"error_messages": ["x"] * 51}, "error_messages"),
        ({"error_messages": ["ok", "x" * 2001]}, "error_messages[1]"),
        ({"error_messages": "one string"}, "error_messages"),
        ({"parameters": {"Unit": "nginx"}}, "parameters.Unit[key]"),
        ({"parameters": {f"k{i}": i for i in range(33)}}, "parameters"),
        ({"parameters": {"blob": "x" * 9000}}, "parameters"),
        ({"parameters": []}, "parameters"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_malformed_fields_are_reported_with_a_dotted_path(changes: dict[str, Any], field: str):
    assert field in errors_of(request(**changes))


def test_every_problem_is_reported_at_once():
    doc = request(language="de", server={}, revision=0)
    del doc["authorization"]
    assert {"language", "server", "revision", "authorization"} <= set(errors_of(doc))


@pytest.mark.parametrize(
    ("signed_at", "ok"),
    [
        ("2026-11-22T09:58:00Z", True),
        ("2026-11-22T10:58:00+01:00", True),
        ("2026-11-22T09:58:00", False),
        ("22/11/2026", False),
        (1795000000, False),
    ],
)
def test_signed_at_must_be_an_aware_timestamp(signed_at: object, ok: bool):
    doc = request(authorization={**EXAMPLE["authorization"], "signed_at": signed_at})
    if ok:
        signed = parse_helpdesk_request(doc).authorization.signed_at
        assert signed == datetime(2026, 11, 22, 9, 58, tzinfo=UTC)
        assert signed.tzinfo is UTC
    else:
        assert "authorization.signed_at" in errors_of(doc)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "json_invalid"),
        (b"\xff\xfe", "json_invalid"),
        (b"[]", "model_type"),
        (b'"a string"', "model_type"),
    ],
)
def test_a_document_that_is_not_a_json_object_is_reported_at_the_root(raw: bytes, code: str):
    with pytest.raises(RequestValidationError) as info:
        parse_helpdesk_request(raw)
    assert [(e.field, e.code) for e in info.value.errors] == [("$", code)]


def test_a_mapping_that_is_not_json_is_reported_at_the_root():
    with pytest.raises(RequestValidationError) as info:
        parse_helpdesk_request(request(revision=object()))
    assert info.value.errors[0].field == "$"


# --- secrets ---------------------------------------------------------------------------


def _everything_printable_about(req: HelpdeskTicketRequest) -> list[str]:
    return [
        repr(req),
        str(req),
        repr(req.credentials),
        str(req.credentials),
        req.model_dump_json(),
        json.dumps(req.model_dump(mode="json")),
        repr(req.model_dump()),
    ]


@fast
@given(creds=plain_credentials)
def test_canary_plaintext_password_never_appears_when_a_request_is_shown(
    creds: PlainCredentials,
):
    canary = creds.secret_value()
    req = parse_helpdesk_request(
        request(credentials={"username": creds.username, "password": canary})
    )
    for text in _everything_printable_about(req):
        assert canary not in text
    assert "**********" in req.model_dump_json()
    assert req.credentials.secret_value() == canary  # type: ignore[union-attr]


@fast
@given(password=canary_passwords)
def test_canary_password_never_appears_in_validation_errors(password: str):
    # Invalid elsewhere, and invalid itself (too long): neither error may echo the value.
    doc = request(
        revision="one",
        credentials={"username": "admin", "password": password * 200, "private_key": None},
    )
    with pytest.raises(RequestValidationError) as info:
        parse_helpdesk_request(doc)
    exc = info.value
    shown = "".join(traceback.format_exception(exc)) + repr(exc.errors)
    assert password not in shown
    assert exc.__cause__ is None
    assert exc.__suppress_context__


def test_requests_with_plaintext_credentials_are_never_encoded_for_the_bus():
    with pytest.raises(ValueError, match="plaintext"):
        encode(parse_helpdesk_request(EXAMPLE))


def test_plain_credentials_seal_into_sealed_credentials():
    req = parse_helpdesk_request(EXAMPLE)
    assert isinstance(req.credentials, PlainCredentials)
    seen: list[str] = []

    def sealer(plaintext: str) -> SealedSecret:
        seen.append(plaintext)
        return SealedSecret(key_id="executor-2026", ciphertext="c2VhbGVk")

    sealed = req.credentials.seal(sealer)
    assert seen == ["s3cret-CANARY-pw"]
    assert sealed == SealedCredentials(
        username="admin",
        kind="password",
        sealed=SealedSecret(key_id="executor-2026", ciphertext="c2VhbGVk"),
    )


def test_plain_credentials_need_exactly_one_secret_in_code_too():
    with pytest.raises(ValidationError, match="exactly one of password, private_key"):
        PlainCredentials(username="admin")


# --- scope ------------------------------------------------------------------------------


def test_scope_table_matches_the_procedure():
    assert len(INCLUDED_CATEGORIES) == 8
    assert set(PAID_ONLY_CATEGORIES) == {
        "application_troubleshooting",
        "data_recovery",
        "performance_tuning",
        "malware_removal",
    }
    assert set(CATEGORIES) == set(INCLUDED_CATEGORIES) | set(PAID_ONLY_CATEGORIES)
    assert all(scope_of(c) == "included" for c in INCLUDED_CATEGORIES)
    assert all(scope_of(c) == "not_included" for c in PAID_ONLY_CATEGORIES)


def test_scope_of_an_unknown_category_is_an_error():
    with pytest.raises(ValueError, match="unknown category"):
        scope_of("crypto_mining")  # type: ignore[arg-type]


@fast
@given(st.sampled_from(CATEGORIES))
def test_every_category_is_accepted_by_the_request(category: str):
    assert parse_helpdesk_request(request(category=category)).category == category


def test_an_invalid_request_still_names_its_ticket_revision_and_language_when_valid():
    with pytest.raises(RequestValidationError) as info:
        parse_helpdesk_request(request(language="it", server={}))
    assert (info.value.ticket_id, info.value.revision, info.value.language) == (
        "HD-20261122-0001",
        1,
        "it",
    )


@pytest.mark.parametrize(
    "doc",
    [
        request(ticket_id="HD 1", revision=0, language="de"),
        {"ticket_id": None},
        [],
    ],
)
def test_an_invalid_request_gives_no_reply_context_it_cannot_trust(doc: object):
    with pytest.raises(RequestValidationError) as info:
        parse_helpdesk_request(json.dumps(doc))
    assert (info.value.ticket_id, info.value.revision, info.value.language) == (None, None, None)


def test_deeply_nested_or_nan_body_gives_a_validation_error_not_a_crash() -> None:
    from schemas.request import RequestValidationError, parse_helpdesk_request

    deep = b'{"ticket_id": "HD-1", "revision": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(RequestValidationError):
        parse_helpdesk_request(deep)
    with pytest.raises(RequestValidationError) as caught:
        parse_helpdesk_request(b'{"ticket_id": "HD-1", "revision": NaN}')
    assert caught.value.revision is None
