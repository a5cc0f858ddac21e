"""Helpdesk adapters: WHMCS ticket hooks and Zammad webhooks -> a §4.1 request document.

Thin on purpose. Each adapter only *moves* fields into the shape of
:class:`~schemas.request.HelpdeskTicketRequest`; it judges nothing, so the result goes
through the very same validation as ``POST /v1/tickets`` and the helpdesk topic, and a
missing form field is reported under its §4.1 name.

The intervention form. Both helpdesks collect the procedure's fields in custom ticket
fields (WHMCS: the department's custom fields, sent by our hook as ``customfields``; Zammad:
ticket object attributes, sent in the ``ticket`` object). Their names:

``account_id``, ``server_ip`` | ``service_id`` | ``service_name``, ``category``,
``language``, ``channel``, ``error_messages`` (one per line), ``parameters`` (JSON),
``os_username`` with ``os_password`` or ``os_private_key`` - or ``sealed_credentials``
(the JSON ``intervene seal`` prints) -, ``authorization_statement``,
``accepts_backup_responsibility``, ``accepts_service_interruption``,
``accepts_data_loss_disclaimer`` (checkboxes), ``signed_by``, ``signed_at``.

Neither helpdesk numbers revisions: the caller gives each delivery one (see
:class:`services.intake.store.RevisionBook`), keyed by :attr:`Mapped.delivery` - WHMCS has
no delivery id, so it is derived from ``ticketid``/``replyid``; Zammad's
``X-Zammad-Delivery`` is stable across its retries.

Authenticity: Zammad signs the body with HMAC-SHA1 (``X-Hub-Signature: sha1=<hex>``); our
WHMCS hook signs it with HMAC-SHA256 (``X-Intake-Signature: sha256=<hex>``, PHP:
``hash_hmac('sha256', $body, $secret)``). Both are checked in constant time before the body
is even parsed.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from schemas.common import FieldError

Source = Literal["whmcs", "zammad"]


class SignatureMismatch(Exception):
    """A webhook whose signature header is missing or does not match its body."""


class Ignored(Exception):
    """A delivery that is not a customer's request (an agent's note): answered, not taken."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AdapterError(ValueError):
    """A webhook payload without the parts every mapping needs (the ticket itself)."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


@dataclass(frozen=True, kw_only=True)
class Mapped:
    """A helpdesk request document without its revision, and the delivery it came in."""

    document: dict[str, Any]
    ticket_id: str
    delivery: str
    customers: tuple[str, ...] = ()
    stated_account: str | None = None

    def with_revision(self, revision: int) -> dict[str, Any]:
        return {**self.document, "revision": revision}


# --- signatures ------------------------------------------------------------------------


def _verify(body: bytes, header: str | None, secret: bytes, algorithm: str) -> None:
    if not header:
        raise SignatureMismatch("the signature header is missing")
    scheme, _, given = header.strip().partition("=")
    if scheme.lower() != algorithm or not given:
        raise SignatureMismatch(f"the signature header must read {algorithm}=<hex digest>")
    expected = hmac.new(secret, body, algorithm).hexdigest()
    if not hmac.compare_digest(expected, given.strip().lower()):
        raise SignatureMismatch("the signature does not match the body")


def verify_zammad_signature(body: bytes, header: str | None, secret: bytes) -> None:
    """Check Zammad's ``X-Hub-Signature`` (HMAC-SHA1 of the raw body)."""
    _verify(body, header, secret, "sha1")


def verify_whmcs_signature(body: bytes, header: str | None, secret: bytes) -> None:
    """Check our WHMCS hook's ``X-Intake-Signature`` (HMAC-SHA256 of the raw body)."""
    _verify(body, header, secret, "sha256")


def sign_whmcs(body: bytes, secret: bytes) -> str:
    """The ``X-Intake-Signature`` value for ``body`` (what the PHP hook computes)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# --- the shared form -------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "y", "on", "si", "sì", "checked"})


def _consent(value: Any) -> bool:
    """A checkbox: only an unmistakable yes counts; anything else is "not given"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.strip().casefold() in _TRUE


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _json_field(value: Any) -> Any:
    """A form field holding JSON as text (or already decoded); bad JSON is kept as text so
    validation reports the field, not the adapter."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _form_request(form: Mapping[str, Any]) -> dict[str, Any]:
    """The §4.1 fields the intervention form provides (absent ones left out)."""
    doc: dict[str, Any] = {}
    for name in ("account_id", "category", "language", "channel"):
        if (value := _text(form.get(name))) is not None:
            doc[name] = value
    server = {
        key: value
        for key, name in (("ip", "server_ip"), ("service_id", "service_id"),
                          ("service_name", "service_name"))
        if (value := _text(form.get(name))) is not None
    }
    if server:
        doc["server"] = server
    errors = form.get("error_messages")
    if isinstance(errors, str):
        doc["error_messages"] = [line for line in errors.splitlines() if line.strip()]
    elif isinstance(errors, list):
        doc["error_messages"] = errors
    if (parameters := form.get("parameters")) not in (None, ""):
        doc["parameters"] = _json_field(parameters)
    if (sealed := form.get("sealed_credentials")) not in (None, ""):
        doc["credentials"] = _json_field(sealed)
    elif _text(form.get("os_username")) is not None:
        credentials: dict[str, Any] = {"username": form["os_username"]}
        for key, name in (("password", "os_password"), ("private_key", "os_private_key")):
            if form.get(name) not in (None, ""):
                credentials[key] = form[name]
        doc["credentials"] = credentials
    authorization: dict[str, Any] = {
        name: _consent(form.get(name))
        for name in ("accepts_backup_responsibility", "accepts_service_interruption",
                     "accepts_data_loss_disclaimer")
    }
    for key, name in (("statement", "authorization_statement"), ("signed_by", "signed_by"),
                      ("signed_at", "signed_at")):
        if (value := _text(form.get(name))) is not None:
            authorization[key] = value
    doc["authorization"] = authorization
    return doc


def _describe(subject: Any, message: Any) -> str | None:
    parts = [p.strip() for p in (subject, message) if isinstance(p, str) and p.strip()]
    return "\n\n".join(parts) or None


def _require(payload: Mapping[str, Any], name: str, what: str) -> Any:
    value = payload.get(name)
    if value is None or value == "":
        raise AdapterError([FieldError(field=name, message=f"is required: {what}",
                                       code="missing")])
    return value


def _person(first: Any, last: Any) -> str | None:
    name = " ".join(p.strip() for p in (first, last) if isinstance(p, str) and p.strip())
    return name or None


def _complete(doc: dict[str, Any], *, department: Any, description: str | None,
              signed_by: str | None, signed_at: str) -> dict[str, Any]:
    if isinstance(department, str):
        doc["department"] = department
    if description is not None:
        doc["description"] = description
    authorization = doc["authorization"]
    if signed_by is not None:
        authorization.setdefault("signed_by", signed_by)
    authorization.setdefault("signed_at", signed_at)
    return doc


# --- WHMCS -----------------------------------------------------------------------------


def _whmcs_customfields(value: Any) -> dict[str, Any]:
    # WHMCS's own API lists custom fields as [{"id", "name", "value"}]; a hook may also
    # send a plain name -> value object.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return {
            str(item["name"]): item.get("value")
            for item in value
            if isinstance(item, Mapping) and "name" in item
        }
    return {}


def from_whmcs(payload: Mapping[str, Any], *, received_at: datetime) -> Mapped:
    """A WHMCS ``TicketOpen`` / ``TicketUserReply`` hook payload (its variables, plus the
    ticket's ``customfields`` and optionally ``client`` with first and last name)."""
    hook = payload.get("hook", "TicketUserReply" if "replyid" in payload else "TicketOpen")
    if hook not in ("TicketOpen", "TicketUserReply"):
        raise AdapterError([FieldError(
            field="hook", message="must be TicketOpen or TicketUserReply", code="unknown_hook"
        )])
    ticket_number = _require(payload, "ticketid", "the WHMCS ticket id")
    reply = payload.get("replyid") if hook == "TicketUserReply" else None
    if hook == "TicketUserReply" and reply in (None, ""):
        raise AdapterError([FieldError(field="replyid", message="is required for a reply",
                                       code="missing")])
    form = _whmcs_customfields(payload.get("customfields"))
    doc = _form_request(form)
    ticket_id = _text(payload.get("ticketmask")) or str(ticket_number)
    doc["ticket_id"] = ticket_id
    if "account_id" not in doc and (user := _text(payload.get("userid"))) is not None:
        doc["account_id"] = user
    doc.setdefault("channel", "client_area")
    doc.setdefault("language", "en")
    client = payload.get("client")
    client = client if isinstance(client, Mapping) else {}
    _complete(
        doc,
        department=payload.get("deptname"),
        description=_describe(payload.get("subject"), payload.get("message")),
        signed_by=_person(client.get("firstname"), client.get("lastname")),
        signed_at=received_at.isoformat(),
    )
    delivery = f"ticket:{ticket_number}" if reply is None else f"reply:{reply}"
    return Mapped(document=doc, ticket_id=ticket_id, delivery=delivery)


# --- Zammad ----------------------------------------------------------------------------

_ZAMMAD_CHANNELS = {"web": "client_area", "email": "email", "chat": "live_chat"}
_TAG = re.compile(r"<[^>]*>")


def _plain_body(article: Mapping[str, Any]) -> Any:
    body = article.get("body")
    if isinstance(body, str) and "html" in str(article.get("content_type", "")).lower():
        # Kept as data either way; tags are only dropped so engineers read the words.
        return html.unescape(_TAG.sub(" ", body))
    return body


def from_zammad(payload: Mapping[str, Any], *, delivery: str, received_at: datetime) -> Mapped:
    """A Zammad webhook body ``{ticket, article}``; ``delivery`` is ``X-Zammad-Delivery``."""
    ticket = payload.get("ticket")
    if not isinstance(ticket, Mapping):
        raise AdapterError([FieldError(field="ticket", message="is required: the Zammad ticket",
                                       code="missing")])
    article = payload.get("article")
    article = article if isinstance(article, Mapping) else {}
    number = _require(ticket, "number", "the Zammad ticket number")
    doc = _form_request(ticket)
    ticket_id = str(number)
    doc["ticket_id"] = ticket_id
    if "account_id" not in doc and (customer_id := _text(ticket.get("customer_id"))) is not None:
        doc["account_id"] = customer_id
    if "channel" not in doc:
        kind = article.get("type")
        doc["channel"] = _ZAMMAD_CHANNELS.get(kind if isinstance(kind, str) else "", "api")
    doc.setdefault("language", "en")
    group = ticket.get("group")
    if isinstance(group, Mapping):
        group = group.get("name")
    customer = ticket.get("customer")
    customer = customer if isinstance(customer, Mapping) else {}
    created = _text(article.get("created_at"))
    _complete(
        doc,
        department=group,
        description=_describe(ticket.get("title"), _plain_body(article)),
        signed_by=_person(customer.get("firstname"), customer.get("lastname")),
        signed_at=created or received_at.isoformat(),
    )
    return Mapped(document=doc, ticket_id=ticket_id, delivery=delivery)
