"""Hypothesis strategies producing valid instances of every contract model.

Imported by the schema tests (``conftest.py`` in this folder puts it on ``sys.path``).
"""

from __future__ import annotations

import base64
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from schemas import (
    CATEGORIES,
    EVENT_MODELS,
    Action,
    AuthorizationRejected,
    AuthorizationVerified,
    Backup,
    ClarificationRequested,
    EngineerAcknowledged,
    EventEnvelope,
    FieldError,
    HardwareEscalated,
    HelpdeskTicketRequest,
    InterventionCompleted,
    InterventionQueued,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
    PlainCredentials,
    ResolvedServer,
    SealedCredentials,
    SealedSecret,
    ServerRef,
    Signature,
    SlaBreached,
    SlaWarning,
    TicketRejected,
    TicketSubmitted,
    TicketUpdated,
    WrittenAuthorization,
    scope_of,
)
from schemas.events import Vouch

S = st.SearchStrategy

# Applied per test, not as a global profile, so other suites keep their own settings. Modest
# example counts and no example database: the schema suite must run in seconds, without I/O.
fast = settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _pattern(first: str, rest: str, min_rest: int, max_rest: int) -> S[str]:
    # Built from character sets rather than st.from_regex, which is several times slower;
    # the regexes they must satisfy are checked once below.
    return st.builds(
        str.__add__,
        st.sampled_from(first),
        st.text(st.sampled_from(rest), min_size=min_rest, max_size=max_rest),
    )


_ALNUM = string.ascii_letters + string.digits
_LOWER = string.ascii_lowercase + string.digits
identifiers: S[str] = _pattern(_ALNUM, _ALNUM + "._-", 0, 63) | st.just("a" * 64)
key_ids: S[str] = _pattern(_LOWER, _LOWER + "._-", 2, 63)
runbooks: S[str] = _pattern(string.ascii_lowercase, _LOWER + "_.-", 0, 63)
parameter_keys: S[str] = _pattern(string.ascii_lowercase, _LOWER + "_", 0, 20)
revisions: S[int] = st.integers(min_value=1, max_value=1000)

# Printable single-line text: letters, marks, numbers, punctuation, symbols and plain spaces.
_printable = st.characters(categories=("L", "M", "N", "P", "S"), codec="utf-8") | st.just(" ")


def single_line(max_size: int = 40) -> S[str]:
    return st.text(_printable, min_size=1, max_size=max_size).filter(lambda s: bool(s.strip()))


def free_text(max_size: int = 80) -> S[str]:
    # Any Unicode scalar value, newlines and control characters included: free text is data.
    return st.text(st.characters(codec="utf-8"), min_size=1, max_size=max_size)


def texts(min_size: int = 0, max_size: int = 3) -> S[list[str]]:
    return st.lists(free_text(), min_size=min_size, max_size=max_size)


# Any offset: models normalise aware datetimes to UTC, so equality after a round trip holds.
utc_datetimes: S[datetime] = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]),
)

_b64 = st.binary(min_size=3, max_size=96).map(lambda b: base64.b64encode(b).decode())
sealed_secrets: S[SealedSecret] = st.builds(SealedSecret, key_id=key_ids, ciphertext=_b64)
signatures: S[Signature] = st.builds(
    Signature,
    key_id=key_ids,
    value=st.binary(min_size=64, max_size=64).map(lambda b: base64.b64encode(b).decode()),
)

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: S[Any] = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
parameters: S[dict[str, Any]] = st.dictionaries(parameter_keys, json_values, max_size=4)

server_refs: S[ServerRef] = st.one_of(
    st.builds(ServerRef, ip=st.ip_addresses()),
    st.builds(ServerRef, service_id=identifiers),
    st.builds(ServerRef, service_name=single_line()),
)

sealed_credentials: S[SealedCredentials] = st.builds(
    SealedCredentials,
    username=single_line(),
    kind=st.sampled_from(["password", "private_key"]),
    sealed=sealed_secrets,
)

authorizations: S[WrittenAuthorization] = st.builds(
    WrittenAuthorization,
    statement=free_text(),
    accepts_backup_responsibility=st.booleans(),
    accepts_service_interruption=st.booleans(),
    accepts_data_loss_disclaimer=st.booleans(),
    signed_by=single_line(),
    signed_at=utc_datetimes,
)


def envelope(model: type[EventEnvelope], **overrides: S[Any]) -> dict[str, S[Any]]:
    fields: dict[str, S[Any]] = {
        "event_id": st.uuids(),
        "event_type": st.just(model.EVENT_TYPE),
        "schema_version": st.just(model.SCHEMA_VERSION),
        "occurred_at": utc_datetimes,
        "ticket_id": identifiers,
        "revision": revisions,
        "causation_id": st.none() | st.uuids(),
        "producer": st.sampled_from(model.ALLOWED_PRODUCERS),
    }
    fields.update(overrides)
    return fields


def event(model: type[EventEnvelope], **payload: S[Any]) -> S[Any]:
    return st.fixed_dictionaries({**envelope(model), **payload}).map(lambda kw: model(**kw))


def _with_scope(kw: dict[str, Any]) -> dict[str, Any]:
    return {**kw, "scope": scope_of(kw["category"])}


ticket_submitted: S[TicketSubmitted] = st.fixed_dictionaries(
    {
        **envelope(TicketSubmitted),
        "account_id": identifiers,
        "department": single_line(),
        "channel": st.sampled_from(["client_area", "email", "api", "live_chat"]),
        "language": st.sampled_from(["en", "it"]),
        "server": server_refs,
        "category": st.sampled_from(CATEGORIES),
        "category_source": st.sampled_from(["form", "classified"]),
        "confidence": st.sampled_from(["high", "low"]),
        "form_category": st.none() | st.sampled_from(CATEGORIES),
        "description": free_text(),
        "error_messages": texts(),
        "parameters": parameters,
        "credentials": sealed_credentials,
        "authorization": authorizations,
        "vouched_by": st.none() | st.builds(
            Vouch, integration=st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z"),
            customer=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9:._@+-]{0,40}\Z")),
    }
).map(lambda kw: TicketSubmitted(**_with_scope(kw)))

field_errors: S[FieldError] = st.builds(
    FieldError,
    field=single_line(),
    message=free_text(),
    code=st.none() | st.from_regex(r"[a-z_]{1,30}", fullmatch=True),
)

resolved_servers: S[ResolvedServer] = st.builds(
    ResolvedServer,
    service_id=identifiers,
    service_name=single_line(),
    ip=st.ip_addresses(),
    type=st.sampled_from(["dedicated", "vps"]),
    os_family=st.sampled_from(["linux", "windows"]),
    ipkvm=st.booleans(),
    rescue=st.booleans(),
    ssh_port=st.integers(min_value=1, max_value=65535),
    ssh_host_key=st.none()
    | st.binary(min_size=32, max_size=64).map(
        lambda b: "ssh-ed25519 " + base64.b64encode(b).decode() + " root@host"
    ),
    datacenter=single_line(),
)


@st.composite
def authorization_verified(draw: st.DrawFn) -> AuthorizationVerified:
    ticket = draw(ticket_submitted)
    review = draw(st.booleans())
    fields = draw(
        st.fixed_dictionaries(
            envelope(
                AuthorizationVerified,
                ticket_id=st.just(ticket.ticket_id),
                revision=st.just(ticket.revision),
                causation_id=st.just(ticket.event_id),
            )
        )
    )
    return AuthorizationVerified(
        **fields,
        account_id=ticket.account_id,
        ticket=ticket,
        server=draw(resolved_servers),
        review_required=review,
        review_reason=draw(single_line()) if review else draw(st.none() | single_line()),
        signature=draw(st.none() | signatures),
    )


access_methods = st.sampled_from(["ssh", "windows_openssh", "rescue", "ipkvm", "vnc", "datacenter"])
chat_channels = st.sampled_from(["matrix", "slack", "telegram", "webhook"])
actions: S[Action] = st.builds(
    Action,
    step=single_line(),
    command=free_text(),
    exit_status=st.none() | st.integers(min_value=-255, max_value=255),
    duration_ms=st.integers(min_value=0, max_value=10**9),
    result=st.sampled_from(
        ["ok", "changed", "no_change_needed", "failed", "rolled_back", "skipped", "planned"]
    ),
)
backups: S[Backup] = st.builds(Backup, location=free_text(), description=free_text())
sla_fields: dict[str, S[Any]] = {
    "clock": st.sampled_from(["initial_response", "intervention"]),
    "deadline": utc_datetimes,
    "elapsed_seconds": st.integers(min_value=0, max_value=10**7),
}

EVENT_STRATEGIES: dict[type[EventEnvelope], S[Any]] = {
    TicketSubmitted: ticket_submitted,
    TicketRejected: event(
        TicketRejected,
        errors=st.lists(field_errors, min_size=1, max_size=3),
        language=st.sampled_from(["en", "it"]),
    ),
    AuthorizationVerified: authorization_verified(),
    AuthorizationRejected: event(
        AuthorizationRejected,
        reasons=st.lists(
            st.sampled_from(["not_owner", "server_unknown", "wrong_department"]),
            min_size=1,
            max_size=3,
        ),
        details=free_text(),
    ),
    ClarificationRequested: event(
        ClarificationRequested,
        question=free_text(),
        field=st.none() | st.just("server.service_name"),
    ),
    InterventionQueued: event(
        InterventionQueued,
        position=st.integers(min_value=1, max_value=1_000),
        expected_start_at=utc_datetimes,
        typical_run_seconds=st.integers(min_value=0, max_value=3600),
        concurrency=st.integers(min_value=1, max_value=64),
    ),
    InterventionStarted: event(
        InterventionStarted,
        access_method=access_methods,
        reason=free_text(),
        runbook=runbooks,
        mode=st.sampled_from(["automated", "engineer"]),
        timeline=st.sampled_from(["standard", "complex", "datacenter"]),
        dry_run=st.booleans(),
    ),
    ManualStepRequested: event(
        ManualStepRequested,
        step_id=identifiers,
        method=access_methods,
        instructions=texts(min_size=1),
        verification=texts(),
        reason=free_text(),
        deadline=st.none() | utc_datetimes,
    ),
    InterventionCompleted: event(
        InterventionCompleted,
        outcome=st.sampled_from(["resolved", "partially_resolved", "unresolved", "refused"]),
        access_method=st.none() | access_methods,
        actions=st.lists(actions, max_size=3),
        backups=st.lists(backups, max_size=2),
        new_credentials_issued=st.booleans(),
        recommendations=texts(),
        reason=st.none() | free_text(),
        dry_run=st.booleans(),
    ),
    HardwareEscalated: event(
        HardwareEscalated,
        component=st.sampled_from(["disk", "memory", "raid", "cpu", "psu", "other"]),
        device=st.none() | single_line(),
        evidence=texts(min_size=1),
        severity=st.sampled_from(["warning", "critical"]),
    ),
    EngineerAcknowledged: event(
        EngineerAcknowledged,
        engineer_id=identifiers,
        display_name=single_line(),
        channel=chat_channels,
        acknowledged_event_id=st.uuids(),
    ),
    ManualStepCompleted: event(
        ManualStepCompleted,
        step_id=identifiers,
        status=st.sampled_from(["done", "failed"]),
        notes=st.just("") | free_text(),
        engineer_id=identifiers,
        display_name=single_line(),
        channel=chat_channels,
    ),
    TicketUpdated: event(
        TicketUpdated,
        kind=st.sampled_from(["acknowledgement", "rejection", "completion", "other"]),
        message=free_text(),
        language=st.sampled_from(["en", "it"]),
    ),
    SlaWarning: event(SlaWarning, **sla_fields),
    SlaBreached: event(SlaBreached, **sla_fields),
}
assert set(EVENT_STRATEGIES) == set(EVENT_MODELS), "every event model needs a strategy"

any_event: S[Any] = st.one_of(*EVENT_STRATEGIES.values())


def helpdesk_requests(credentials: S[Any] = sealed_credentials) -> S[HelpdeskTicketRequest]:
    return st.builds(
        HelpdeskTicketRequest,
        ticket_id=identifiers,
        revision=revisions,
        account_id=identifiers,
        department=single_line(),
        channel=st.sampled_from(["client_area", "email", "api", "live_chat"]),
        language=st.sampled_from(["en", "it"]),
        server=server_refs,
        category=st.none() | st.sampled_from(CATEGORIES),
        description=free_text(),
        error_messages=texts(),
        parameters=parameters,
        credentials=credentials,
        authorization=authorizations,
    )


# Alphanumeric so that a leak would show up verbatim (no JSON or repr escaping to hide it).
canary_passwords: S[str] = st.text(
    st.sampled_from(string.ascii_letters + string.digits), min_size=8, max_size=24
).map(lambda s: f"CANARY{s}")

plain_credentials: S[PlainCredentials] = st.builds(
    PlainCredentials, username=single_line(), password=canary_passwords
)
