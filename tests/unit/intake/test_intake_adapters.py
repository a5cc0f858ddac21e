"""Helpdesk adapters: Zammad webhooks and the shipped WHMCS hook become §4.1 requests whose
customer is the helpdesk's login, never a form field; other people's messages ask nothing.

The Zammad payloads below have the shape Zammad's trigger webhook produces, as read in
Zammad's source (github.com/zammad/zammad, the stored versions named by commit):

- ``app/jobs/trigger_webhook_job.rb`` @ bfa96f03ea45e9b204e56a568b1a1c3eef67caf2: the
  default body is ``{ticket: RecordPayload.generate(ticket), article:
  RecordPayload.generate(article)}``; headers ``X-Zammad-Trigger`` (trigger name) and
  ``X-Zammad-Delivery`` (the ActiveJob ``job_id``, unchanged across its ``retry_on``
  retries).
- ``app/jobs/trigger_webhook_job/record_payload.rb`` @
  4ca1e987bc051551b32ced4344e09916b0d16540: no article -> ``{}``.
- ``app/jobs/trigger_webhook_job/record_payload/base.rb`` @
  14b5db370a70b246f8378651ccb16f81cac76fd8: a record's
  ``attributes_with_association_names`` with each of the class's ``ASSOCIATIONS``
  replaced by the associated record's attributes (``{}`` when its ``*_id`` is blank); users
  without ``password``, ``preferences``, ``last_login``, ``login_failed``, ``group_ids``,
  ``groups``, ``authorization_ids``, ``authorizations``.
- ``.../record_payload/ticket.rb`` @ 4ca1e987bc051551b32ced4344e09916b0d16540:
  ``ASSOCIATIONS = owner customer created_by updated_by organization priority group``.
- ``.../record_payload/ticket/article.rb`` @ 24c3bdfd8748874cb5f16c4e618cf78cded47743:
  ``ASSOCIATIONS = created_by updated_by`` plus ``accounted_time`` and attachment URLs.
- ``app/models/application_model/can_associations.rb`` @
  008053f7301a4e2f01e3efb78a82fa8fa8078af7: ``attributes_with_association_names`` adds
  each association's ``login`` or ``name`` under the association's name, so an article has
  ``"sender": "Customer"`` and ``"type": "web"`` next to ``sender_id``/``type_id``.
- ``lib/user_agent.rb`` @ bfa96f03ea45e9b204e56a568b1a1c3eef67caf2: ``X-Hub-Signature:
  sha1=<OpenSSL::HMAC.hexdigest('sha1', token, body)>``, only when a token is set.
- ``app/models/object_manager/attribute.rb`` @ 5df98684da64aed93cc29e4be029d81566520906
  (``check_name``): attribute names are ``[a-z0-9_]+``, never ``*_id``/``*_ids`` nor a
  reserved word - mirrored in :func:`zammad_accepts_name`.

The WHMCS payloads use only the documented hook variables (WHMCS/developer-docs
``hooks-reference/ticket.md``: ``TicketOpen`` ``ticketid, ticketmask, userid, deptid,
deptname, subject, message, priority``; ``TicketUserReply`` ``ticketid, replyid, userid,
deptid, deptname, subject, message, priority, status``) plus what the shipped hook adds
(``hook``, ``ticket``, ``client``, ``customfields``).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import RequestValidationError, parse_helpdesk_request
from services.intake.adapters import (
    FORM_FIELDS,
    AdapterError,
    Ignored,
    Mapped,
    SignatureMismatch,
    from_whmcs,
    from_zammad,
    verify_zammad_signature,
)
from services.intake.validation import check_request

RECEIVED = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
SECRET = b"zammad-webhook-secret"
STATEMENT = "I authorize the provider's support to perform OS-level intervention on this server."
CANARY = "Canary-Adapter-4411"
MAPPED_ACCOUNT = "ACC-1001"  # what the integration's account map gives for the customer
README = Path(__file__).resolve().parents[3] / "deploy" / "helpdesk" / "README.md"

FORM: dict[str, Any] = {
    "intervention_server_ip": "203.0.113.10",
    "intervention_category": "",
    "intervention_language": "it",
    "intervention_os_username": "root",
    "intervention_os_password": CANARY,
    "intervention_authorization": STATEMENT,
    "intervention_accepts_backup": True,
    "intervention_accepts_interruption": True,
    "intervention_accepts_data_loss": True,
    "intervention_error_messages": "Kernel panic - not syncing\n\nVFS: Unable to mount root fs",
    "intervention_account": "ACC-1001",
}


def as_account(mapped: Mapped, revision: int = 1) -> dict[str, Any]:
    """The document as the caller completes it: the account comes from the account map."""
    return {**mapped.with_revision(revision), "account_id": MAPPED_ACCOUNT}


# --- Zammad: the trigger webhook's default payload -------------------------------------


def zammad_user(user_id: int, login: str, first: str, last: str, *, organization_id: int | None,
                roles: list[str]) -> dict[str, Any]:
    # A User's attributes_with_association_names minus the webhook's blacklist.
    return {
        "active": True, "created_at": "2026-01-10T08:00:00.000Z", "created_by_id": 1,
        "department": None, "email": f"{login}", "firstname": first, "id": user_id,
        "image": None, "lastname": last, "login": login, "mobile": "", "note": "",
        "organization_id": organization_id, "organization_ids": [], "out_of_office": False,
        "phone": "", "role_ids": [3 if roles == ["Customer"] else 2], "roles": roles,
        "source": None, "updated_at": "2026-01-10T08:00:00.000Z", "updated_by_id": 1,
        "verified": False, "vip": False, "web": "",
    }


CUSTOMER = zammad_user(7, "mario.rossi@example.com", "Mario", "Rossi", organization_id=3,
                       roles=["Customer"])
AGENT = zammad_user(4, "agent@provider.example", "Anna", "Bianchi", organization_id=None,
                    roles=["Agent"])


def zammad_payload(*, sender: str = "Customer", internal: bool = False, article_type: str = "web",
                   organization: bool = True, **form: Any) -> dict[str, Any]:
    author = CUSTOMER if sender == "Customer" else AGENT
    ticket: dict[str, Any] = {
        "article_count": 1, "close_at": None, "create_article_sender_id": 2,
        "create_article_type_id": 11, "created_at": "2026-11-22T09:58:00.000Z",
        "created_by_id": 7, "customer_id": 7, "escalation_at": None,
        "first_response_at": None, "group_id": 2, "id": 42, "last_contact_at":
        "2026-11-22T09:58:00.000Z", "last_contact_customer_at": "2026-11-22T09:58:00.000Z",
        "note": None, "number": "31042", "organization_id": 3 if organization else None,
        "owner_id": 1, "pending_time": None, "preferences": {}, "priority_id": 2,
        "state_id": 1, "time_unit": None, "title": "Server non si avvia", "type": None,
        "updated_at": "2026-11-22T09:58:00.000Z", "updated_by_id": 7,
        "state": "new", "create_article_type": "web", "create_article_sender": "Customer",
        "article_ids": [99],
        # ASSOCIATIONS, expanded:
        "group": {"active": True, "id": 2, "name": "Technical Issues", "note": None,
                  "email_address_id": 1, "follow_up_possible": "yes"},
        "customer": CUSTOMER,
        "organization": ({"active": True, "domain": "example.com", "id": 3,
                          "name": "Example Srl", "shared": True, "member_ids": [7]}
                         if organization else {}),
        "owner": {"id": 1, "login": "-", "firstname": "-", "lastname": "", "active": False},
        "priority": {"id": 2, "name": "2 normal", "default_create": True, "active": True},
        "created_by": CUSTOMER, "updated_by": CUSTOMER,
        **FORM, **form,
    }
    article = {
        "accounted_time": 0, "attachments": [], "body":
        "<p>Dopo l&#39;aggiornamento il server <b>non si avvia</b>.</p>",
        "cc": None, "content_type": "text/html", "created_at": "2026-11-22T09:58:00.000Z",
        "created_by_id": author["id"], "from": f"{author['firstname']} {author['lastname']}",
        "id": 99, "in_reply_to": None, "internal": internal, "message_id": None,
        "message_id_md5": None, "origin_by_id": None, "preferences": {}, "references": None,
        "reply_to": None, "sender_id": 2 if sender == "Customer" else 1, "subject":
        "Server non si avvia", "ticket_id": 42, "to": "Technical Issues", "type_id": 11,
        "updated_at": "2026-11-22T09:58:00.000Z", "updated_by_id": author["id"],
        "sender": sender, "type": article_type, "time_unit": None,
        "created_by": author, "updated_by": author,
    }
    return {"ticket": ticket, "article": article}


def zammad_delivery(payload: dict[str, Any], *,
                    delivery: str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                    secret: bytes = SECRET) -> tuple[bytes, dict[str, str]]:
    """The body and headers Zammad's UserAgent.post sends for ``payload``."""
    body = json.dumps(payload).encode()
    return body, {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Zammad User Agent",
        "X-Zammad-Trigger": "OS intervention request",
        "X-Zammad-Delivery": delivery,
        "X-Hub-Signature": "sha1=" + hmac.new(secret, body, hashlib.sha1).hexdigest(),
    }


def zammad(payload: dict[str, Any], delivery: str = "d-1") -> Mapped:
    return from_zammad(payload, delivery=delivery, received_at=RECEIVED)


# -- signatures


def test_zammad_signature_of_the_body_is_accepted() -> None:
    body, headers = zammad_delivery(zammad_payload())
    verify_zammad_signature(body, headers["X-Hub-Signature"], SECRET)


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


def test_zammad_signature_of_another_body_or_secret_is_refused() -> None:
    body, headers = zammad_delivery(zammad_payload())
    with pytest.raises(SignatureMismatch):
        verify_zammad_signature(body.replace(b"31042", b"31043"), headers["X-Hub-Signature"],
                                SECRET)
    with pytest.raises(SignatureMismatch):
        verify_zammad_signature(body, headers["X-Hub-Signature"], b"another secret")


def test_zammad_customer_web_article_maps_onto_a_valid_request() -> None:
    body, headers = zammad_delivery(zammad_payload())
    mapped = from_zammad(json.loads(body), delivery=headers["X-Zammad-Delivery"],
                         received_at=RECEIVED)
    assert (mapped.ticket_id, mapped.delivery) == ("31042", "article:99")
    assert mapped.customers == ("customer:7", "organization:3")
    assert mapped.stated_account == "ACC-1001"
    assert "account_id" not in mapped.document
    request = parse_helpdesk_request(as_account(mapped, 3))
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


def test_zammad_account_is_never_taken_from_the_ticket() -> None:
    # Neither the customer's typed account nor Zammad's own user number become the account.
    mapped = zammad(zammad_payload(intervention_account="ACC-9999", account_id="ACC-9999"))
    assert "account_id" not in mapped.document
    assert mapped.stated_account == "ACC-9999"
    assert mapped.customers[0] == "customer:7"
    with pytest.raises(RequestValidationError) as caught:
        parse_helpdesk_request(mapped.with_revision(1))
    assert {e.field for e in caught.value.errors} == {"account_id"}


def test_zammad_ticket_without_organization_names_only_the_customer() -> None:
    mapped = zammad(zammad_payload(organization=False, intervention_account=""))
    assert mapped.customers == ("customer:7",)
    assert mapped.stated_account is None


def test_zammad_retry_and_replay_under_new_delivery_ids_are_one_delivery() -> None:
    payload = zammad_payload()
    first = zammad(payload, delivery="job-1")
    later = copy.deepcopy(payload)
    later["ticket"]["updated_at"] = "2026-11-22T10:05:00.000Z"  # a retry regenerates the body
    assert zammad(later, delivery="job-2").delivery == first.delivery == "article:99"
    payload["article"]["id"] = 100
    assert zammad(payload, delivery="job-3").delivery == "article:100"


# -- whose article


@pytest.mark.parametrize(("sender", "internal", "code"), [
    ("Agent", True, "not_customer"),     # an agent's internal note
    ("Agent", False, "not_customer"),    # an agent's public reply
    ("System", False, "not_customer"),   # an auto reply or trigger notification
    ("Customer", True, "internal_article"),
])
def test_zammad_article_that_is_not_the_customers_request_is_ignored(
        sender: str, internal: bool, code: str) -> None:
    with pytest.raises(Ignored) as caught:
        zammad(zammad_payload(sender=sender, internal=internal))
    assert caught.value.code == code
    assert caught.value.message


def test_zammad_ticket_change_without_an_article_is_ignored() -> None:
    payload = zammad_payload()
    payload["article"] = {}  # RecordPayload.generate(nil)
    with pytest.raises(Ignored) as caught:
        zammad(payload)
    assert caught.value.code == "no_article"


def test_zammad_article_missing_its_sender_or_visibility_is_ignored() -> None:
    for key in ("sender", "internal"):
        payload = zammad_payload()
        del payload["article"][key]
        with pytest.raises(Ignored):
            zammad(payload)


# -- the form


@pytest.mark.parametrize(("article_type", "channel"), [
    ("web", "client_area"), ("chat", "live_chat"),
])
def test_zammad_article_type_gives_the_channel(article_type: str, channel: str) -> None:
    mapped = zammad(zammad_payload(article_type=article_type))
    assert mapped.document["channel"] == channel


@pytest.mark.parametrize("article_type", ["email", "phone", "note", "sms", None])
def test_zammad_article_not_written_while_logged_in_is_ignored(article_type: str | None
                                                                ) -> None:
    # An e-mail's From: can be forged; it must never pick the account of a ticket.
    with pytest.raises(Ignored) as ignored:
        zammad(zammad_payload(article_type=article_type))  # type: ignore[arg-type]
    assert ignored.value.code == "not_logged_in"


def test_zammad_live_chat_is_refused_by_the_same_rules() -> None:
    request = parse_helpdesk_request(as_account(zammad(zammad_payload(article_type="chat"))))
    assert [e.code for e in check_request(request, edge="http", now=RECEIVED)] == [
        "channel_not_allowed"]


def test_unchecked_consent_boxes_are_not_consent() -> None:
    payload = zammad_payload(intervention_accepts_backup=False,
                             intervention_accepts_interruption=None,
                             intervention_accepts_data_loss="maybe")
    request = parse_helpdesk_request(as_account(zammad(payload)))
    assert [e.code for e in check_request(request, edge="http", now=RECEIVED)] == [
        "consent_required"] * 3


def test_missing_form_fields_are_reported_under_their_request_names() -> None:
    payload = zammad_payload(intervention_server_ip="", intervention_os_username="")
    with pytest.raises(RequestValidationError) as caught:
        parse_helpdesk_request(as_account(zammad(payload)))
    assert {e.field for e in caught.value.errors} == {"server", "credentials"}


@pytest.mark.parametrize(("form", "server"), [
    ({"intervention_service": "SRV-1001"}, {"service_id": "SRV-1001"}),
    ({"intervention_service_name": "shop-web"}, {"service_name": "shop-web"}),
    ({"intervention_server_ip": " 2001:db8::10 "}, {"ip": "2001:db8::10"}),
])
def test_each_server_field_names_the_server_one_way(form: dict[str, str],
                                                    server: dict[str, str]) -> None:
    payload = zammad_payload(**{"intervention_server_ip": "", **form})
    assert zammad(payload).document["server"] == server


def test_zammad_sealed_credentials_field_is_used_as_is() -> None:
    sealed = {"username": "root", "kind": "password",
              "sealed": {"key_id": "exec-0123456789ab", "ciphertext": "c2VhbGVk"}}
    mapped = zammad(zammad_payload(intervention_credentials=json.dumps(sealed)))
    assert mapped.document["credentials"] == sealed


@pytest.mark.parametrize(("change", "field"), [
    (lambda p: p.pop("ticket"), "ticket"),
    (lambda p: p["ticket"].pop("number"), "ticket.number"),
    (lambda p: p["ticket"].update(customer_id=None), "ticket.customer_id"),
    (lambda p: p["article"].pop("id"), "article.id"),
])
def test_zammad_payload_without_its_identities_is_an_adapter_error(change: Any,
                                                                   field: str) -> None:
    payload = zammad_payload()
    change(payload)
    with pytest.raises(AdapterError) as caught:
        zammad(payload)
    assert caught.value.errors[0].field == field


_ZAMMAD_RESERVED = frozenset((
    "destroy", "true", "false", "integer", "select", "drop", "create", "alter", "index", "table",
    "varchar", "blob", "date", "datetime", "timestamp", "url", "icon", "initials", "avatar",
    "permission", "validate", "subscribe", "unsubscribe", "translate", "search", "_type", "_doc",
    "_id", "id",
))


def zammad_accepts_name(name: str) -> bool:
    """ObjectManager::Attribute#check_name's rules (see the module docstring)."""
    return (not re.search(r".+?_(id|ids)$", name, re.IGNORECASE)
            and re.fullmatch(r"[a-z0-9_]+", name) is not None
            and re.search(r"[a-z]", name) is not None
            and name not in _ZAMMAD_RESERVED)


def test_every_form_field_is_a_name_zammad_accepts_and_is_documented() -> None:
    assert not zammad_accepts_name("account_id")  # why the old field could never arrive
    readme = README.read_text()
    for name in FORM_FIELDS:
        assert zammad_accepts_name(name), name
        assert f"`{name}`" in readme, name


# --- WHMCS: what the shipped hook sends ------------------------------------------------


def whmcs_form(**changes: Any) -> list[dict[str, Any]]:
    form = {**FORM, **changes}
    # WHMCS tick boxes read "on"; a name may carry a display name after "|".
    shown = {k: ("on" if v is True else v) for k, v in form.items()}
    return [{"id": n, "name": f"{k}|{k.replace('_', ' ').title()}" if n % 2 else k, "value": v}
            for n, (k, v) in enumerate(shown.items(), start=1)]


def whmcs_open(**changes: Any) -> dict[str, Any]:
    return {
        "ticketid": 1234, "ticketmask": "QWE-123456", "userid": 55, "deptid": 2,
        "deptname": "Technical Issues", "subject": "Cannot log in",
        "message": "I forgot the root password of my VPS.", "priority": "High",
        "hook": "TicketOpen", "ticket": {"tid": "QWE-123456", "userid": 55},
        "client": {"firstname": "Jane", "lastname": "Doe"},
        "customfields": whmcs_form(), **changes,
    }


def whmcs_reply(**changes: Any) -> dict[str, Any]:
    # TicketUserReply's documented variables carry no ticketmask.
    return {
        "ticketid": 1234, "replyid": 777, "userid": 55, "deptid": 2,
        "deptname": "Technical Issues", "subject": "Cannot log in",
        "message": "Still broken after the reboot.", "priority": "High",
        "status": "Customer-Reply",
        "hook": "TicketUserReply", "ticket": {"tid": "QWE-123456", "userid": 55},
        "client": {"firstname": "Jane", "lastname": "Doe"},
        "customfields": whmcs_form(), **changes,
    }


def whmcs(payload: dict[str, Any]) -> Mapped:
    return from_whmcs(payload, received_at=RECEIVED)


def test_whmcs_ticket_open_maps_onto_a_valid_request() -> None:
    mapped = whmcs(whmcs_open())
    assert (mapped.ticket_id, mapped.delivery) == ("QWE-123456", "ticket:1234")
    assert mapped.customers == ("client:55",)
    assert mapped.stated_account == "ACC-1001"
    assert "account_id" not in mapped.document
    request = parse_helpdesk_request(as_account(mapped))
    assert request.description.startswith("Cannot log in\n\nI forgot the root password")
    assert (request.channel, request.language) == ("client_area", "it")
    assert request.authorization.accepts_backup_responsibility is True
    assert request.authorization.signed_by == "Jane Doe"
    assert request.authorization.signed_at == RECEIVED
    assert check_request(request, edge="http", now=RECEIVED) == []


def test_whmcs_reply_is_filed_under_its_ticket_mask_as_a_new_delivery() -> None:
    opened, replied = whmcs(whmcs_open()), whmcs(whmcs_reply())
    assert replied.ticket_id == opened.ticket_id == "QWE-123456"
    assert (opened.delivery, replied.delivery) == ("ticket:1234", "reply:777")
    assert replied.customers == opened.customers
    assert "Still broken" in replied.document["description"]


def test_whmcs_form_naming_another_account_is_only_a_stated_account() -> None:
    mapped = whmcs(whmcs_reply(customfields=whmcs_form(intervention_account="ACC-2002")))
    assert mapped.stated_account == "ACC-2002"
    assert mapped.customers == ("client:55",)
    assert "account_id" not in mapped.document


@pytest.mark.parametrize(("payload", "field", "code"), [
    (whmcs_open(userid=0, ticket={"tid": "QWE-123456", "userid": 0}), "userid", "not_a_client"),
    (whmcs_reply(userid=56), "userid", "not_ticket_owner"),
    (whmcs_open(ticketmask="QWE-999999"), "ticketmask", "mask_mismatch"),
    (whmcs_reply(ticket={"userid": 55}), "ticket.tid", "missing"),
    ({"hook": "TicketClose", "ticketid": 1}, "hook", "unknown_hook"),
    (whmcs_open(ticketid=None), "ticketid", "missing"),
    (whmcs_reply(replyid=""), "replyid", "missing"),
])
def test_whmcs_body_that_does_not_name_its_client_and_ticket_is_an_adapter_error(
        payload: dict[str, Any], field: str, code: str) -> None:
    with pytest.raises(AdapterError) as caught:
        whmcs(payload)
    assert (caught.value.errors[0].field, caught.value.errors[0].code) == (field, code)


def test_adapters_never_put_the_password_anywhere_but_credentials() -> None:
    for document in (whmcs(whmcs_open()).document, zammad(zammad_payload()).document):
        assert document["credentials"]["password"] == CANARY
        without = {k: v for k, v in document.items() if k != "credentials"}
        assert CANARY not in json.dumps(without)


def test_whmcs_dropdown_value_counts_up_to_its_display_text_and_text_is_kept_whole() -> None:
    fields = whmcs_form(intervention_error_messages="grub> prompt | no kernel")
    fields.append({"id": 99, "name": "Intervention_Category|What is wrong?", "type": "dropdown",
                   "value": "network_recovery|Network unreachable"})
    fields = [f for f in fields if f["name"] != "intervention_category"]
    document = whmcs(whmcs_open(customfields=fields)).document
    assert document["category"] == "network_recovery"
    assert document["error_messages"] == ["grub> prompt | no kernel"]
