"""Helpdesk adapters: WHMCS hooks and Zammad webhooks become §4.1 requests; forged ones don't."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import RequestValidationError, parse_helpdesk_request
from services.intake.adapters import (
    AdapterError,
    SignatureMismatch,
    from_whmcs,
    from_zammad,
    sign_whmcs,
    verify_whmcs_signature,
    verify_zammad_signature,
)
from services.intake.validation import check_request

RECEIVED = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
SECRET = b"zammad-webhook-secret"
STATEMENT = "I authorize the provider's support to perform OS-level intervention on this server."
CANARY = "Canary-Adapter-4411"

FORM: dict[str, Any] = {
    "account_id": "ACC-1001",
    "server_ip": "203.0.113.10",
    "category": "",
    "language": "it",
    "os_username": "root",
    "os_password": CANARY,
    "authorization_statement": STATEMENT,
    "accepts_backup_responsibility": "on",
    "accepts_service_interruption": "1",
    "accepts_data_loss_disclaimer": True,
    "error_messages": "Kernel panic - not syncing\n\nVFS: Unable to mount root fs",
}


def zammad_payload(**ticket: Any) -> dict[str, Any]:
    return {
        "ticket": {
            "id": 42, "number": "31042", "title": "Server non si avvia",
            "group": {"name": "Technical Issues"}, "customer_id": 7,
            "customer": {"firstname": "Mario", "lastname": "Rossi"},
            **FORM, **ticket,
        },
        "article": {
            "id": 99, "type": "web", "content_type": "text/html",
            "body": "<p>Dopo l&#39;aggiornamento il server <b>non si avvia</b>.</p>",
            "created_at": "2026-11-22T09:58:00Z",
        },
    }


def whmcs_payload(**overrides: Any) -> dict[str, Any]:
    return {
        "hook": "TicketOpen", "ticketid": 1234, "ticketmask": "QWE-123456", "userid": 55,
        "deptid": 2, "deptname": "Technical Issues", "subject": "Cannot log in",
        "message": "I forgot the root password of my VPS.", "priority": "High",
        "customfields": [{"id": 1, "name": k, "value": v} for k, v in FORM.items()],
        "client": {"firstname": "Jane", "lastname": "Doe"},
        **overrides,
    }


# --- signatures ------------------------------------------------------------------------


def test_zammad_signature_of_the_body_is_accepted() -> None:
    body = json.dumps(zammad_payload()).encode()
    header = "sha1=" + hmac.new(SECRET, body, hashlib.sha1).hexdigest()
    verify_zammad_signature(body, header, SECRET)


@pytest.mark.parametrize(("header", "why"), [
    (None, "missing"),
    ("", "missing"),
    ("sha1=" + "0" * 40, "does not match"),
    ("sha256=abc", "sha1=<hex digest>"),
    ("sha1=", "sha1=<hex digest>"),
    ("garbage", "sha1=<hex digest>"),
])
def test_bad_zammad_signature_is_refused(header: str | None, why: str) -> None:
    with pytest.raises(SignatureMismatch, match=why):
        verify_zammad_signature(b'{"ticket": {}}', header, SECRET)


def test_zammad_signature_of_another_body_is_refused() -> None:
    signed = b'{"ticket": {"number": "1"}}'
    header = "sha1=" + hmac.new(SECRET, signed, hashlib.sha1).hexdigest()
    with pytest.raises(SignatureMismatch):
        verify_zammad_signature(b'{"ticket": {"number": "2"}}', header, SECRET)
    with pytest.raises(SignatureMismatch):
        verify_zammad_signature(signed, header, b"another secret")


def test_whmcs_signature_round_trip_and_tamper() -> None:
    body = json.dumps(whmcs_payload()).encode()
    verify_whmcs_signature(body, sign_whmcs(body, SECRET), SECRET)
    with pytest.raises(SignatureMismatch):
        verify_whmcs_signature(body + b" ", sign_whmcs(body, SECRET), SECRET)


# --- Zammad ----------------------------------------------------------------------------


def test_zammad_webhook_maps_onto_a_valid_request() -> None:
    mapped = from_zammad(zammad_payload(), delivery="d-1", received_at=RECEIVED)
    assert (mapped.ticket_id, mapped.delivery) == ("31042", "d-1")
    request = parse_helpdesk_request(mapped.with_revision(3))
    assert (request.ticket_id, request.revision, request.account_id) == ("31042", 3, "ACC-1001")
    assert (request.department, request.channel, request.language) == (
        "Technical Issues", "client_area", "it")
    assert str(request.server.ip) == "203.0.113.10"
    assert request.category is None  # empty form field: intake classifies
    assert "non si avvia" in request.description
    assert "<b>" not in request.description
    assert request.error_messages == ("Kernel panic - not syncing",
                                      "VFS: Unable to mount root fs")
    assert request.has_plaintext_credentials  # webhooks are intake's HTTP edge: sealed there
    assert request.authorization.signed_by == "Mario Rossi"
    assert request.authorization.signed_at == datetime(2026, 11, 22, 9, 58, tzinfo=UTC)
    assert check_request(request, edge="http", now=RECEIVED) == []


@pytest.mark.parametrize(("article_type", "channel"), [
    ("web", "client_area"), ("email", "email"), ("chat", "live_chat"), ("phone", "api"),
])
def test_zammad_article_type_gives_the_channel(article_type: str, channel: str) -> None:
    payload = zammad_payload()
    payload["article"]["type"] = article_type
    mapped = from_zammad(payload, delivery="d", received_at=RECEIVED)
    assert mapped.document["channel"] == channel


def test_zammad_live_chat_is_refused_by_the_same_rules() -> None:
    payload = zammad_payload()
    payload["article"]["type"] = "chat"
    request = parse_helpdesk_request(
        from_zammad(payload, delivery="d", received_at=RECEIVED).with_revision(1))
    assert [e.code for e in check_request(request, edge="http", now=RECEIVED)] == [
        "channel_not_allowed"]


def test_unchecked_consent_boxes_are_not_consent() -> None:
    payload = zammad_payload(accepts_backup_responsibility="", accepts_service_interruption="no",
                             accepts_data_loss_disclaimer="maybe")
    request = parse_helpdesk_request(
        from_zammad(payload, delivery="d", received_at=RECEIVED).with_revision(1))
    assert [e.code for e in check_request(request, edge="http", now=RECEIVED)] == [
        "consent_required"] * 3


def test_missing_form_fields_are_reported_under_their_request_names() -> None:
    payload = zammad_payload(server_ip="", os_username="")
    with pytest.raises(RequestValidationError) as caught:
        parse_helpdesk_request(
            from_zammad(payload, delivery="d", received_at=RECEIVED).with_revision(1))
    assert {e.field for e in caught.value.errors} == {"server", "credentials"}


def test_zammad_sealed_credentials_field_is_used_as_is() -> None:
    sealed = {"username": "root", "kind": "password",
              "sealed": {"key_id": "exec-0123456789ab", "ciphertext": "c2VhbGVk"}}
    payload = zammad_payload(sealed_credentials=json.dumps(sealed))
    mapped = from_zammad(payload, delivery="d", received_at=RECEIVED)
    assert mapped.document["credentials"] == sealed


def test_zammad_payload_without_a_ticket_is_an_adapter_error() -> None:
    with pytest.raises(AdapterError) as caught:
        from_zammad({"article": {}}, delivery="d", received_at=RECEIVED)
    assert caught.value.errors[0].field == "ticket"
    with pytest.raises(AdapterError):
        from_zammad({"ticket": {"title": "no number"}}, delivery="d", received_at=RECEIVED)


# --- WHMCS -----------------------------------------------------------------------------


def test_whmcs_ticket_open_maps_onto_a_valid_request() -> None:
    mapped = from_whmcs(whmcs_payload(), received_at=RECEIVED)
    assert (mapped.ticket_id, mapped.delivery) == ("QWE-123456", "ticket:1234")
    request = parse_helpdesk_request(mapped.with_revision(1))
    assert request.account_id == "ACC-1001"
    assert request.description.startswith("Cannot log in\n\nI forgot the root password")
    assert request.authorization.signed_by == "Jane Doe"
    assert request.authorization.signed_at == RECEIVED
    assert check_request(request, edge="http", now=RECEIVED) == []


def test_whmcs_reply_is_a_new_delivery_keyed_by_reply_id() -> None:
    mapped = from_whmcs(whmcs_payload(hook="TicketUserReply", replyid=777, status="Open",
                                      message="Still broken after the reboot."),
                        received_at=RECEIVED)
    assert mapped.delivery == "reply:777"
    assert mapped.ticket_id == "QWE-123456"


def test_whmcs_custom_fields_as_an_object_and_userid_fallback() -> None:
    form = {k: v for k, v in FORM.items() if k != "account_id"}
    mapped = from_whmcs(whmcs_payload(customfields=form, ticketmask=""), received_at=RECEIVED)
    assert mapped.ticket_id == "1234"
    assert mapped.document["account_id"] == "55"


@pytest.mark.parametrize(("payload", "field"), [
    ({"hook": "TicketClose", "ticketid": 1}, "hook"),
    ({"hook": "TicketOpen"}, "ticketid"),
    ({"hook": "TicketUserReply", "ticketid": 1}, "replyid"),
])
def test_whmcs_payload_without_its_ticket_is_an_adapter_error(payload: dict[str, Any],
                                                              field: str) -> None:
    with pytest.raises(AdapterError) as caught:
        from_whmcs(payload, received_at=RECEIVED)
    assert caught.value.errors[0].field == field


def test_adapters_never_put_the_password_anywhere_but_credentials() -> None:
    document = from_whmcs(whmcs_payload(), received_at=RECEIVED).document
    without = {k: v for k, v in document.items() if k != "credentials"}
    assert CANARY not in json.dumps(without)
