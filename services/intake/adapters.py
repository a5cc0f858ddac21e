"""Helpdesk adapters: Zammad trigger webhooks and the shipped WHMCS hook -> a §4.1 request.

Thin on purpose. Each adapter only *moves* fields into the shape of
:class:`~schemas.request.HelpdeskTicketRequest`; it judges nothing, so the result goes
through the very same validation as ``POST /v1/tickets`` and the helpdesk topic, and a
missing form field is reported under its §4.1 name.

Who the customer is. A form field is text the customer typed, so it never names the
account. Each adapter reports the helpdesk's *authenticated* customer identities in
:attr:`Mapped.customers` (most specific first) and leaves ``account_id`` out of the
document: the caller fills it from the integration's account map. The account the customer
typed (``intervention_account``) comes back as :attr:`Mapped.stated_account`, only for the
caller to compare with the mapped one (``account_mismatch``).

The intervention form: custom fields with one vocabulary in both helpdesks (Zammad refuses
attribute names ending in ``_id``/``_ids``, so none of them does; see
``deploy/helpdesk/README.md`` for how to create them):

``intervention_server_ip`` | ``intervention_service`` (the service id, e.g. ``SRV-1001``)
| ``intervention_service_name`` - exactly one; ``intervention_category`` (empty: intake
classifies), ``intervention_language``, ``intervention_error_messages`` (one per line),
``intervention_parameters`` (JSON), ``intervention_credentials`` (the sealed JSON
``intervene seal`` prints; recommended, both helpdesks store fields in clear) - or
``intervention_os_username`` with ``intervention_os_password`` or
``intervention_os_private_key`` -, ``intervention_authorization`` (the statement),
``intervention_accepts_backup``, ``intervention_accepts_interruption``,
``intervention_accepts_data_loss`` (checkboxes), ``intervention_signed_by`` (default: the
helpdesk's name of the customer) and ``intervention_account`` (stated account, compared
only).

Neither helpdesk numbers revisions: the caller gives each delivery one (see
:class:`services.intake.store.RevisionBook`), keyed by :attr:`Mapped.delivery`. Zammad:
``article:<article.id>`` - one customer message is one delivery whatever
``X-Zammad-Delivery`` says, so Zammad's retries and a body replayed under a new delivery
id both land on the revision of that article. WHMCS: ``ticket:<ticketid>`` for
``TicketOpen``, ``reply:<replyid>`` for ``TicketUserReply``.

Authenticity: Zammad can only sign the body (HMAC-SHA1, ``X-Hub-Signature: sha1=<hex>``,
checked by :func:`verify_zammad_signature`); the shipped WHMCS hook signs with the
integration scheme of :mod:`services.intake.signing`.
"""

from __future__ import annotations

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

FORM_PREFIX = "intervention_"
STATED_ACCOUNT_FIELD = "intervention_account"
FORM_FIELDS = tuple(FORM_PREFIX + name for name in (
    "server_ip", "service", "service_name", "category", "language", "error_messages",
    "parameters", "credentials", "os_username", "os_password", "os_private_key",
    "authorization", "accepts_backup", "accepts_interruption", "accepts_data_loss",
    "signed_by", "account",
))
"""Every custom field the adapters read, in both helpdesks (documented in
``deploy/helpdesk/README.md``)."""


class SignatureMismatch(Exception):
    """A webhook whose signature header is missing or does not match its body."""


class AdapterError(ValueError):
    """A webhook payload without the parts every mapping needs (the ticket itself)."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class Ignored(Exception):
    """A well-formed delivery that is not a customer's request (an agent's note, a system
    message, a ticket change without an article): answered 202 ``ignored`` and audited."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Mapped:
    """A helpdesk request document without its revision and account, and who sent it.

    ``customers``: the helpdesk's authenticated identities of the customer, most specific
    first (``customer:7``, ``organization:3``; ``client:55``) - the caller maps the first
    one its account map knows to the account. ``stated_account``: what the customer typed
    as their account, if anything - only ever compared with the mapped account.
    """

    document: dict[str, Any]
    ticket_id: str
    delivery: str
    customers: tuple[str, ...]
    stated_account: str | None

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
        return value.strip()
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


def _server(form: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, name in (("ip", "server_ip"), ("service_id", "service"),
                          ("service_name", "service_name"))
        if (value := _text(form.get(FORM_PREFIX + name))) is not None
    }


def _form_request(form: Mapping[str, Any]) -> dict[str, Any]:
    """The §4.1 fields the intervention form provides (absent ones left out)."""
    doc: dict[str, Any] = {}
    for key in ("category", "language"):
        if (value := _text(form.get(FORM_PREFIX + key))) is not None:
            doc[key] = value
    if server := _server(form):
        doc["server"] = server
    errors = form.get(FORM_PREFIX + "error_messages")
    if isinstance(errors, str):
        doc["error_messages"] = [line for line in errors.splitlines() if line.strip()]
    elif isinstance(errors, list):
        doc["error_messages"] = errors
    if (parameters := form.get(FORM_PREFIX + "parameters")) not in (None, ""):
        doc["parameters"] = _json_field(parameters)
    if (sealed := form.get(FORM_PREFIX + "credentials")) not in (None, ""):
        doc["credentials"] = _json_field(sealed)
    elif (username := _text(form.get(FORM_PREFIX + "os_username"))) is not None:
        credentials: dict[str, Any] = {"username": username}
        for key in ("password", "private_key"):
            if (secret := form.get(f"{FORM_PREFIX}os_{key}")) not in (None, ""):
                credentials[key] = secret
        doc["credentials"] = credentials
    authorization: dict[str, Any] = {
        flag: _consent(form.get(FORM_PREFIX + name))
        for flag, name in (("accepts_backup_responsibility", "accepts_backup"),
                           ("accepts_service_interruption", "accepts_interruption"),
                           ("accepts_data_loss_disclaimer", "accepts_data_loss"))
    }
    for key, name in (("statement", "authorization"), ("signed_by", "signed_by")):
        if (value := _text(form.get(FORM_PREFIX + name))) is not None:
            authorization[key] = value
    doc["authorization"] = authorization
    return doc


def _describe(subject: Any, message: Any) -> str | None:
    parts = [p.strip() for p in (subject, message) if isinstance(p, str) and p.strip()]
    return "\n\n".join(parts) or None


def _missing(field: str, what: str, code: str = "missing") -> AdapterError:
    return AdapterError([FieldError(field=field, message=f"is required: {what}", code=code)])


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
    authorization["signed_at"] = signed_at
    return doc


def _identity(value: Any) -> str | None:
    """A helpdesk's numeric record id (an int, or digits as text); 0 is "nobody"."""
    if isinstance(value, bool):
        return None
    text = str(value).strip() if isinstance(value, int | str) else ""
    return text if text.isdigit() and int(text) > 0 else None


# --- WHMCS -----------------------------------------------------------------------------


def _whmcs_form(value: Any) -> dict[str, Any]:
    """The hook's ``customfields``: ``[{"id", "name", "type", "value"}]`` as WHMCS stores
    them.

    As in WHMCS, a field name or a drop-down option may carry a display text after ``|``
    (``intervention_server_ip|Server IP``, ``network_recovery|Network unreachable``); only
    the part before it counts. Names compare case-insensitively.
    """
    if not isinstance(value, list):
        return {}
    form: dict[str, Any] = {}
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            continue
        answer = item.get("value")
        if item.get("type") == "dropdown" and isinstance(answer, str):
            answer = answer.partition("|")[0]
        form[item["name"].partition("|")[0].strip().casefold()] = answer
    return form


def from_whmcs(payload: Mapping[str, Any], *, received_at: datetime) -> Mapped:
    """The body the shipped hook (``deploy/helpdesk/whmcs/os_intervention.php``) sends.

    That is the hook's documented variables as WHMCS passed them, plus ``hook``
    (``TicketOpen`` | ``TicketUserReply``), ``ticket`` (``tid`` and ``userid`` from
    ``GetTicket``: a reply carries no ``ticketmask``), ``client`` (``firstname``,
    ``lastname`` from ``GetClientsDetails``) and ``customfields`` (the ticket's custom
    fields by name). Only a logged-in client's ticket maps: WHMCS's ``userid`` is then the
    authenticated identity (``client:<userid>``); a guest's ticket (``userid`` 0) is an
    :class:`AdapterError`, and so is a reply by anyone but the ticket's client.
    """
    hook = payload.get("hook")
    if hook not in ("TicketOpen", "TicketUserReply"):
        raise AdapterError([FieldError(
            field="hook", message="must be TicketOpen or TicketUserReply", code="unknown_hook"
        )])
    ticket_number = _identity(payload.get("ticketid"))
    if ticket_number is None:
        raise _missing("ticketid", "the WHMCS ticket id")
    reply = None
    if hook == "TicketUserReply" and (reply := _identity(payload.get("replyid"))) is None:
        raise _missing("replyid", "the WHMCS reply id of a TicketUserReply")
    ticket = payload.get("ticket")
    ticket = ticket if isinstance(ticket, Mapping) else {}
    mask = _text(ticket.get("tid"))
    if mask is None:
        raise _missing("ticket.tid", "the ticket's mask (GetTicket's tid), which every "
                       "revision of the ticket is filed under")
    if "ticketmask" in payload and _text(payload.get("ticketmask")) != mask:
        raise AdapterError([FieldError(field="ticketmask", message="differs from GetTicket's "
                                       "tid of the same ticket", code="mask_mismatch")])
    client = _identity(payload.get("userid"))
    if client is None:
        raise AdapterError([FieldError(
            field="userid", message="must be the WHMCS client who wrote: tickets of guests "
            "(no client login) cannot ask for an intervention", code="not_a_client")])
    if _identity(ticket.get("userid")) != client:
        raise AdapterError([FieldError(
            field="userid", message="is not the client the ticket belongs to",
            code="not_ticket_owner")])
    form = _whmcs_form(payload.get("customfields"))
    doc = _form_request(form)
    doc["ticket_id"] = mask
    doc["channel"] = "client_area"
    doc.setdefault("language", "en")
    person = payload.get("client")
    person = person if isinstance(person, Mapping) else {}
    _complete(
        doc,
        department=payload.get("deptname"),
        description=_describe(payload.get("subject"), payload.get("message")),
        signed_by=_person(person.get("firstname"), person.get("lastname")),
        signed_at=received_at.isoformat(),
    )
    return Mapped(
        document=doc, ticket_id=mask,
        delivery=f"ticket:{ticket_number}" if reply is None else f"reply:{reply}",
        customers=(f"client:{client}",),
        stated_account=_text(form.get(STATED_ACCOUNT_FIELD)),
    )


# --- Zammad ----------------------------------------------------------------------------

_ZAMMAD_CHANNELS = {"web": "client_area", "chat": "live_chat"}
_LOGGED_IN_TYPES = frozenset(_ZAMMAD_CHANNELS)
_TAG = re.compile(r"<[^>]*>")


def _plain_body(article: Mapping[str, Any]) -> Any:
    body = article.get("body")
    if isinstance(body, str) and "html" in str(article.get("content_type", "")).lower():
        # Kept as data either way; tags are only dropped so engineers read the words.
        return html.unescape(_TAG.sub(" ", body))
    return body


def _customer_article(article: Any) -> Mapping[str, Any]:
    """The article if it is the customer's own, visible message; else :class:`Ignored`.

    Zammad sends ``"article": {}`` when the trigger fired on a ticket change without an
    article (an agent edited a field, a time-based trigger): nobody asked for anything.
    ``sender`` is the name Zammad resolves ``sender_id`` to; anything but exactly
    ``Customer`` with ``internal`` exactly ``false`` is somebody else speaking.
    """
    if not isinstance(article, Mapping) or not article:
        raise Ignored("no_article", "the delivery carries no article: a ticket change is "
                      "not a customer's request")
    if article.get("sender") != "Customer":
        raise Ignored("not_customer", "the article was not written by the customer (sender "
                      "is not Customer): agents' and system messages ask for nothing")
    if article.get("internal") is not False:
        raise Ignored("internal_article", "the article is internal: an internal note is "
                      "never the customer's request")
    return article


def from_zammad(payload: Mapping[str, Any], *, delivery: str, received_at: datetime) -> Mapped:
    """A Zammad trigger webhook body ``{ticket, article}`` (Zammad's default payload).

    ``delivery`` is ``X-Zammad-Delivery``; it is only quoted in errors, because the
    revision key is the article itself (see the module docstring). The customer is
    ``ticket.customer_id`` (and ``ticket.organization_id`` when set): Zammad's ids of the
    user and organization whose login Zammad checked.
    """
    ticket = payload.get("ticket")
    if not isinstance(ticket, Mapping) or not ticket:
        raise _missing("ticket", "the Zammad ticket (use the webhook's default payload)")
    article = _customer_article(payload.get("article"))
    number = _text(ticket.get("number"))
    if number is None:
        raise _missing("ticket.number", "the Zammad ticket number")
    article_id = _identity(article.get("id"))
    if article_id is None:
        raise _missing("article.id", f"the Zammad article id (delivery {delivery[:64]!r})")
    customer = _identity(ticket.get("customer_id"))
    if customer is None:
        raise _missing("ticket.customer_id", "the Zammad customer the ticket belongs to")
    customers = [f"customer:{customer}"]
    if (organization := _identity(ticket.get("organization_id"))) is not None:
        customers.append(f"organization:{organization}")
    doc = _form_request(ticket)
    ticket_id = number
    doc["ticket_id"] = ticket_id
    kind = article.get("type")
    if kind not in _LOGGED_IN_TYPES:
        # An e-mail's sender is whatever its From: header says, and a phone note is an
        # agent's word: neither is the customer's login, so neither may choose an account.
        raise Ignored("not_logged_in", "only an article the customer wrote while logged in "
                      "to Zammad (type web or chat) requests an intervention; an e-mail's "
                      "sender can be forged - ask the customer to use the customer portal")
    doc["channel"] = _ZAMMAD_CHANNELS[kind]
    doc.setdefault("language", "en")
    group = ticket.get("group")
    if isinstance(group, Mapping):
        group = group.get("name")
    person = ticket.get("customer")
    person = person if isinstance(person, Mapping) else {}
    _complete(
        doc,
        department=group,
        description=_describe(ticket.get("title"), _plain_body(article)),
        signed_by=_person(person.get("firstname"), person.get("lastname")),
        signed_at=_text(article.get("created_at")) or received_at.isoformat(),
    )
    return Mapped(
        document=doc, ticket_id=ticket_id, delivery=f"article:{article_id}",
        customers=tuple(customers),
        stated_account=_text(ticket.get(STATED_ACCOUNT_FIELD)),
    )
