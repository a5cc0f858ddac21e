"""The checks a support engineer applies to a ticket before anyone touches the server.

Pure: values in, :class:`~schemas.common.FieldError` lists out. The HTTP API, the helpdesk
topic and the webhook adapters all call :func:`check_request`, so a request is judged the
same way whichever door it came through (ARCHITECTURE §4.1, issue 4).

Two layers:

- *structural* problems (missing fields, wrong types, malformed ids) are found by the schema
  (:func:`schemas.request.parse_helpdesk_request`); :func:`explain_structural` rewords them
  so each message says what to fix;
- the *procedure's* rules (Technical Issues department, no live chat, explicit written
  authorization with the three acknowledgements, credentials sealed on the bus, a
  description an engineer can act on) are :func:`check_request`.

No message ever quotes a submitted value: one may be a password, and every message can end
up on the bus, in a log or in front of the customer.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from schemas.common import FieldError
from schemas.request import HelpdeskTicketRequest, SealedCredentials
from schemas.scope import CATEGORIES

Edge = Literal["http", "topic"]
"""Where a request entered: intake's HTTP API (plaintext credentials allowed, sealed at
once) or the helpdesk topic (credentials must already be sealed)."""

TECHNICAL_ISSUES = "technical_issues"
MAX_ERRORS = 100  # TicketRejected.errors holds at most 100 entries

UNIT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:\\-]{0,254}$")
PACKAGE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._:~-]{0,127}$")
MAX_PACKAGES = 50

# Words that make a statement an authorization, in the seed's two languages; compared on
# accent-folded lower-case text ("autorizzo", "authorise", "consent", "do il consenso").
_AUTHORIZING_WORDS = (
    r"(?:authori[sz]\w*|consent\w*|permission|permit\w*|allow\w*|"
    r"autorizz\w*|acconsent\w*|consens\w*|permess\w*)"
)
_AUTHORIZING = re.compile(rf"\b{_AUTHORIZING_WORDS}\b")
# A negation up to three words before the authorizing word turns it into a refusal
# ("I do not authorize", "non autorizzo", "I never gave permission").
_NEGATED = re.compile(
    r"\b(?:not|no|never|don't|dont|cannot|can't|won't|non|mai|nessun\w*)\b"
    rf"(?:\W+\w+){{0,3}}?\W+{_AUTHORIZING_WORDS}\b"
)

_HINTS: dict[str, str] = {
    "$": "send one JSON object with the fields described in the API documentation",
    "ticket_id": (
        "give the helpdesk ticket number, e.g. HD-20261122-0001 (1-64 letters, digits, "
        "'.', '_' or '-', starting with a letter or digit)"
    ),
    "revision": (
        "give the ticket revision as a whole number: 1 for the first submission, one more "
        "for each follow-up on the same ticket"
    ),
    "account_id": "give the customer account id as shown in the Client Area, e.g. ACC-1001",
    "department": "open the ticket in the Technical Issues department",
    "channel": "use one of client_area, email, api",
    "language": "use en or it",
    "server": (
        "identify the server by exactly one of ip, service_id or service_name, as shown in "
        "the Client Area"
    ),
    "server.ip": "give the server's IPv4 or IPv6 address, e.g. 203.0.113.10",
    "server.service_id": "give the service id as shown in the Client Area, e.g. SRV-1001",
    "server.service_name": "give the service name as shown in the Client Area, on one line",
    "category": (
        f"use one of {', '.join(CATEGORIES)}, or leave it empty and describe the problem"
    ),
    "description": (
        "describe the problem: what happens, since when, and what you already tried "
        "(up to 20000 characters)"
    ),
    "error_messages": "list the error messages you see, at most 50, each up to 2000 characters",
    "parameters": (
        'give category parameters as an object with lower-case keys, e.g. {"unit": "nginx"} '
        'or {"packages": ["htop"]}'
    ),
    "credentials": (
        "give the OS username of an administrator account and either its password or its "
        "private key (OpenSSH format)"
    ),
    "credentials.username": "give the OS username of an administrator account, on one line",
    "credentials.password": "give the account's password (1 to 1024 characters)",
    "credentials.private_key": (
        "paste the whole private key in OpenSSH format, from -----BEGIN to -----END lines"
    ),
    "credentials.sealed": "seal the secret with `intervene seal` and send its output unchanged",
    "authorization": (
        "give the written authorization: statement, the three acknowledgements, signed_by "
        "and signed_at"
    ),
    "authorization.statement": (
        "write the authorization, e.g. \"I authorize the provider's support to perform "
        'OS-level intervention on this server."'
    ),
    "authorization.signed_by": "give the full name of the person who authorizes, on one line",
    "authorization.signed_at": (
        "give the time the authorization was signed, with timezone, e.g. 2026-11-22T09:58:00Z"
    ),
}
for _consent in (
    "accepts_backup_responsibility",
    "accepts_service_interruption",
    "accepts_data_loss_disclaimer",
):
    _HINTS[f"authorization.{_consent}"] = "answer true or false"

_REWORDED: dict[str, str] = {
    "missing": "is required",
    "extra_forbidden": "is not a field of a ticket request; remove it",
}


def _hint_for(path: str) -> str | None:
    """The most specific hint for ``path`` (``error_messages[3]`` -> ``error_messages``)."""
    base = re.sub(r"\[[^\]]*\]", "", path)
    while base:
        if base in _HINTS:
            return _HINTS[base]
        if "." not in base:
            return None
        base = base.rsplit(".", 1)[0]
    return None


def explain_structural(errors: Iterable[FieldError]) -> list[FieldError]:
    """Schema errors reworded so each says what to fix (still without any input value)."""
    out: list[FieldError] = []
    for error in errors:
        message = _REWORDED.get(error.code or "", error.message)
        hint = None if error.code == "extra_forbidden" else _hint_for(error.field)
        if hint and hint not in message:
            message = f"{message}; {hint}"
        out.append(error.model_copy(update={"message": message[:2000]}))
    return out


def bounded(errors: list[FieldError]) -> list[FieldError]:
    """At most :data:`MAX_ERRORS` entries, the last one saying how many were left out."""
    if len(errors) <= MAX_ERRORS:
        return errors
    kept = errors[: MAX_ERRORS - 1]
    more = len(errors) - len(kept)
    return [
        *kept,
        FieldError(field="$", message=f"and {more} more problems", code="too_many_errors"),
    ]


# --- the procedure's rules -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Rules:
    """Policy values the checks use; defaults are the procedure's."""

    departments: frozenset[str] = frozenset({TECHNICAL_ISSUES})
    min_description_chars: int = 15
    clock_skew: timedelta = timedelta(minutes=5)
    sealing_key_ids: frozenset[str] = field(default_factory=frozenset)
    """Key ids sealed credentials may name; empty means "not checked" (no key loaded)."""


def department_key(label: str) -> str:
    """``"Technical Issues"``, ``"technical-issues"`` -> ``technical_issues``: helpdesks
    spell department names their own way, so they are compared case- and separator-blind."""
    return re.sub(r"[^0-9a-z]+", "_", label.casefold()).strip("_")


def fold(text: str) -> str:
    """Lower-case, accent-free text (``"è"`` -> ``"e"``) for matching Italian and English."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def is_explicit_authorization(statement: str) -> bool:
    """True when the statement grants permission in so many words and does not negate it."""
    text = fold(statement)
    return bool(_AUTHORIZING.search(text)) and not _NEGATED.search(text)


def plaintext_on_bus() -> FieldError:
    """The refusal of plaintext credentials on the helpdesk topic."""
    return FieldError(
        field="credentials",
        message=(
            "arrived in plaintext on the helpdesk topic and were discarded: seal them to the "
            "executor's public key with `intervene seal` (or "
            "services.intake.sealing.seal_credentials) before publishing; the customer "
            "should change this password, since it left the helpdesk unsealed"
        ),
        code="credentials_not_sealed",
    )


def check_request(
    request: HelpdeskTicketRequest, *, edge: Edge, now: datetime, rules: Rules | None = None
) -> list[FieldError]:
    """Every rule the request breaks, in field order; empty when it may go on to auth."""
    rules = rules or Rules()
    errors: list[FieldError] = []
    if department_key(request.department) not in rules.departments:
        errors.append(FieldError(
            field="department",
            message=(
                "must be Technical Issues: OS interventions are handled only by the Technical "
                "Issues department; open the ticket there"
            ),
            code="wrong_department",
        ))
    if request.channel == "live_chat":
        errors.append(FieldError(
            field="channel",
            message=(
                "live chat is for consultation only: to request an intervention, open a "
                "ticket in the Client Area, department Technical Issues"
            ),
            code="channel_not_allowed",
        ))
    errors += _check_server(request)
    if len(" ".join(request.description.split())) < rules.min_description_chars:
        errors.append(FieldError(
            field="description",
            message=(
                "is too short to act on: describe what happens, since when, and any error "
                f"messages (at least {rules.min_description_chars} characters)"
            ),
            code="description_too_short",
        ))
    errors += check_parameters(request.parameters)
    errors += _check_credentials(request, edge=edge, rules=rules)
    errors += _check_authorization(request, now=now, rules=rules)
    return bounded(errors)


def _check_server(request: HelpdeskTicketRequest) -> list[FieldError]:
    ip = request.server.ip
    if ip is None:
        return []
    # Only addresses that can never be a server are refused here; whether the address is
    # the customer's is auth's question (inventory), and test and demo servers may well
    # sit on private or loopback addresses.
    unusable = ip.is_unspecified or ip.is_multicast or (
        isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255")
    )
    if not unusable:
        return []
    return [FieldError(
        field="server.ip",
        message=(
            "is not the address of a server (unspecified, multicast or broadcast); give your "
            "server's IP address as shown in the Client Area"
        ),
        code="server_ip_unusable",
    )]


def check_parameters(parameters: Mapping[str, Any]) -> list[FieldError]:
    """Shapes of the parameters the runbooks read; they are data, later passed to commands
    only as quoted arguments, but a clear error now beats a failed runbook later."""
    errors: list[FieldError] = []
    unit = parameters.get("unit")
    if unit is not None and not (isinstance(unit, str) and UNIT_PATTERN.fullmatch(unit)):
        errors.append(FieldError(
            field="parameters.unit",
            message="must be a service (systemd unit) name such as nginx or nginx.service",
            code="invalid_unit",
        ))
    packages = parameters.get("packages")
    if packages is not None:
        valid = (
            isinstance(packages, list)
            and 1 <= len(packages) <= MAX_PACKAGES
            and all(isinstance(p, str) and PACKAGE_PATTERN.fullmatch(p) for p in packages)
        )
        if not valid:
            errors.append(FieldError(
                field="parameters.packages",
                message=(
                    f'must be a list of 1 to {MAX_PACKAGES} package names such as ["htop"] '
                    "(letters, digits and + . _ : ~ -)"
                ),
                code="invalid_packages",
            ))
    return errors


def _check_credentials(
    request: HelpdeskTicketRequest, *, edge: Edge, rules: Rules
) -> list[FieldError]:
    credentials = request.credentials
    if not isinstance(credentials, SealedCredentials):
        return [plaintext_on_bus()] if edge == "topic" else []
    key_id = credentials.sealed.key_id
    if rules.sealing_key_ids and key_id not in rules.sealing_key_ids:
        current = ", ".join(sorted(rules.sealing_key_ids))
        return [FieldError(
            field="credentials.sealed.key_id",
            message=(
                f"names sealing key {key_id}, which is not the executor's current key "
                f"({current}), so nobody could open it; seal the credentials again with "
                "`intervene seal`"
            ),
            code="unknown_sealing_key",
        )]
    return []


_CONSENTS: tuple[tuple[str, str], ...] = (
    (
        "accepts_backup_responsibility",
        "must be true: confirm that keeping backups of your data is your responsibility",
    ),
    (
        "accepts_service_interruption",
        "must be true: accept that services may be temporarily interrupted during the "
        "intervention",
    ),
    (
        "accepts_data_loss_disclaimer",
        "must be true: accept that the provider is not liable for data loss",
    ),
)


def _check_authorization(
    request: HelpdeskTicketRequest, *, now: datetime, rules: Rules
) -> list[FieldError]:
    authorization = request.authorization
    errors: list[FieldError] = []
    if not is_explicit_authorization(authorization.statement):
        errors.append(FieldError(
            field="authorization.statement",
            message=(
                "must explicitly authorize the OS-level intervention, e.g. \"I authorize the "
                "provider's support to perform OS-level intervention on this server.\" (in "
                "Italian: \"Autorizzo il supporto del provider a intervenire sul sistema "
                'operativo di questo server.")'
            ),
            code="authorization_not_explicit",
        ))
    for name, message in _CONSENTS:
        if getattr(authorization, name) is not True:
            errors.append(FieldError(
                field=f"authorization.{name}", message=message, code="consent_required"
            ))
    if authorization.signed_at > now + rules.clock_skew:
        errors.append(FieldError(
            field="authorization.signed_at",
            message=(
                "is in the future; give the time the authorization was signed, with timezone, "
                "e.g. 2026-11-22T09:58:00Z"
            ),
            code="signed_in_future",
        ))
    return errors
