"""Constrained value types shared by the helpdesk request and every event.

Identifiers, bounded texts and timestamps are defined once here so that intake, auth,
executor and notifier reject exactly the same malformed values.

Identifier rule (ticket, service, account, step and engineer ids): 1-64 characters, ASCII
letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit. Helpdesks and
billing systems number things differently (``HD-20261122-0001``, ``SRV-1001``, WHMCS's plain
integers), so the pattern is deliberately generic; what it guarantees is that an id is safe to
use as a Kafka key, a MongoDB key, a log field and a file name, and never contains whitespace,
``/`` or shell metacharacters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
    WithJsonSchema,
)

STRICT_MODEL = ConfigDict(strict=True, frozen=True, extra="forbid")
"""Every contract model: exact types, immutable, unknown fields rejected.

Strict mode still accepts ISO-8601 strings for datetimes and UUID strings from *JSON*
(``model_validate_json``); from Python objects it wants the real types.
"""

IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RUNBOOK_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
PARAMETER_KEY_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# Key type, base64 body, optional comment: one line of an OpenSSH known_hosts/authorized_keys.
SSH_PUBLIC_KEY_PATTERN = r"^[a-z0-9@.-]{3,64} [A-Za-z0-9+/]{16,8192}={0,3}( [ -~]{0,256})?$"

# pydantic describes IPvAnyAddress with its own format name ("ipvanyaddress"), which no JSON
# Schema validator knows (Ajv in strict mode rejects it): the published schemas say what it
# accepts in the standard formats instead.
IpAddress = Annotated[
    IPvAnyAddress,
    WithJsonSchema({"anyOf": [{"type": "string", "format": "ipv4"},
                              {"type": "string", "format": "ipv6"}]}),
]

TicketId = Annotated[
    str,
    Field(
        pattern=IDENTIFIER_PATTERN,
        description="The helpdesk's ticket number; the same across revisions.",
        examples=["HD-20261122-0001"],
    ),
]
ServiceId = Annotated[
    str,
    Field(
        pattern=IDENTIFIER_PATTERN,
        description="The provider's service id of a server.",
        examples=["SRV-1001"],
    ),
]
AccountId = Annotated[
    str,
    Field(pattern=IDENTIFIER_PATTERN, description="Customer account id.", examples=["ACC-1001"]),
]
StepId = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, description="Id of a manual step.")]
EngineerId = Annotated[
    str, Field(pattern=IDENTIFIER_PATTERN, description="Id of an engineer record.")
]
RunbookName = Annotated[str, Field(pattern=RUNBOOK_PATTERN, examples=["service_restart"])]
SshPublicKey = Annotated[
    str,
    Field(
        pattern=SSH_PUBLIC_KEY_PATTERN,
        description="One OpenSSH public key line: type, base64 key, optional comment.",
    ),
]
Revision = Annotated[
    int,
    Field(
        ge=1,
        le=1_000_000,
        description="Ticket revision: 1 for the first submission, +1 per customer follow-up.",
    ),
]


def _single_line(value: str) -> str:
    # isprintable() is False for newlines, tabs, other control and format characters: a value
    # that passes can be shown in a chat line or log field without forging extra lines.
    if not value.strip():
        raise ValueError("must not be blank")
    if not value.isprintable():
        raise ValueError("must be a single line without control characters")
    return value


ServiceName = Annotated[
    str,
    Field(min_length=1, max_length=255, examples=["web-01"]),
    AfterValidator(_single_line),
]
Label = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_single_line)]
PersonName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_single_line)]
OsUsername = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_single_line)]
ShortText = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_single_line)]

# Free text may span lines; it is data to show or store, never interpolated into commands.
Paragraph = Annotated[str, Field(min_length=1, max_length=2000)]
Statement = Annotated[str, Field(min_length=1, max_length=5000)]
LongText = Annotated[str, Field(min_length=1, max_length=20000)]
Notes = Annotated[str, Field(max_length=5000)]


def _require_utc(value: datetime) -> datetime:
    # A naive time is ambiguous, so it is refused. An explicit offset names one instant, so it
    # is accepted and normalised: every stored and serialised time is UTC ("...Z").
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must include a timezone, e.g. 2026-11-22T09:58:00Z")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]


def tuple_from_list(value: object) -> object:
    """Let Python callers pass lists where the model stores an immutable tuple.

    Strict mode alone would reject a list for a tuple field when building events in code;
    converting before validation keeps item validation strict.
    """
    return tuple(value) if isinstance(value, list) else value


AS_TUPLE = BeforeValidator(tuple_from_list)
"""Put *after* the ``Field`` constraints in ``Annotated`` so JSON Schema says ``maxItems``."""


class FieldError(BaseModel):
    """One problem with one field of a request or event, fit to show to a customer.

    ``field`` is a dotted path (``server.ip``, ``authorization.signed_at``); list items are
    addressed as ``error_messages[3]``; ``$`` is the document as a whole. ``code`` is a stable
    machine-readable kind (pydantic's error type, or a service's own code) so a consumer can
    translate the message.
    """

    model_config = STRICT_MODEL

    field: Annotated[str, Field(min_length=1, max_length=300)]
    message: Annotated[str, Field(min_length=1, max_length=2000)]
    code: Annotated[str, Field(min_length=1, max_length=64)] | None = None


_PREFIXES = ("Value error, ", "Assertion failed, ")


def dotted_path(loc: tuple[int | str, ...]) -> str:
    """``("server", "ip")`` -> ``server.ip``; ``("error_messages", 3)`` -> ``error_messages[3]``;
    an invalid key of a mapping -> ``parameters.Unit[key]``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for an invalid mapping key
            path += part
        else:
            path += f".{part}" if path else part
    # Keys the sender invented (extra fields) are echoed here, so their length is bounded.
    return (path or "$")[:300]


def field_errors(
    exc: ValidationError, *, drop: frozenset[str] = frozenset(), skip_first: bool = False
) -> list[FieldError]:
    """Field-level errors from a pydantic ``ValidationError``, without the offending values.

    Inputs are never copied into the result: an invalid value may be a password. ``drop``
    removes union tag names pydantic inserts into paths; ``skip_first`` removes the leading
    tag of a discriminated union over whole documents.
    """
    out: list[FieldError] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = tuple(err["loc"])
        if skip_first:
            loc = loc[1:]
        loc = tuple(p for p in loc if not (isinstance(p, str) and p in drop))
        message = err["msg"]
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        out.append(
            FieldError(field=dotted_path(loc), message=message[:2000], code=err["type"][:64])
        )
    return out


def summarise(errors: list[FieldError], *, limit: int = 10) -> str:
    """``server.ip: ...; credentials: ...`` for exception messages and DLQ headers."""
    shown = "; ".join(f"{e.field}: {e.message}" for e in errors[:limit])
    more = len(errors) - limit
    return f"{shown}; and {more} more" if more > 0 else shown
