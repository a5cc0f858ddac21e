"""Every reason intake refuses a request, as a support engineer would state it.

One table per layer: structural problems (found by the schema, reworded to say what to
fix) and the procedure's rules (department, channel, written authorization and its three
acknowledgements, sealed credentials on the bus, a description to act on).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import (
    FieldError,
    HelpdeskTicketRequest,
    RequestValidationError,
    SealedSecret,
    parse_helpdesk_request,
)
from services.intake.examples import example_request
from services.intake.validation import (
    MAX_ERRORS,
    Edge,
    Rules,
    bounded,
    check_request,
    department_key,
    explain_structural,
    is_explicit_authorization,
)

NOW = datetime.now(UTC)
CANARY = "Canary-Hunter2-zx81"
SEALED = {
    "username": "root",
    "kind": "password",
    "sealed": {"key_id": "exec-0123456789ab", "ciphertext": "c2VhbGVkIGJ5IGEgdGVzdA=="},
}
RULES = Rules(sealing_key_ids=frozenset({"exec-0123456789ab"}))


def request(**changes: Any) -> dict[str, Any]:
    """The example with ``changes``; dotted keys reach into objects, None deletes."""
    document = example_request(credentials=copy.deepcopy(SEALED))
    document["credentials"]["username"] = "root"
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = document
        for part in parents:
            target = target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return document


_DELETE = object()


def structural_errors(document: dict[str, Any]) -> list[FieldError]:
    with pytest.raises(RequestValidationError) as caught:
        parse_helpdesk_request(document)
    return explain_structural(caught.value.errors)


def rule_errors(document: dict[str, Any], *, edge: Edge = "topic") -> list[FieldError]:
    return check_request(parse_helpdesk_request(document), edge=edge, now=NOW, rules=RULES)


def test_the_example_request_passes_every_rule() -> None:
    assert rule_errors(request()) == []
    assert rule_errors(request(), edge="http") == []


# --- structural: the schema's errors, reworded to say what to fix ----------------------


@dataclass(frozen=True)
class Structural:
    name: str
    changes: dict[str, Any]
    field: str
    says: str  # a phrase the message must contain


STRUCTURAL = [
    Structural("ticket number missing", {"ticket_id": _DELETE}, "ticket_id",
               "give the helpdesk ticket number"),
    Structural("ticket number with spaces", {"ticket_id": "HD 1"}, "ticket_id",
               "letters, digits"),
    Structural("revision zero", {"revision": 0}, "revision", "1 for the first submission"),
    Structural("revision as text", {"revision": "1"}, "revision", "whole number"),
    Structural("account missing", {"account_id": _DELETE}, "account_id", "ACC-1001"),
    Structural("department missing", {"department": _DELETE}, "department",
               "Technical Issues"),
    Structural("unknown channel", {"channel": "fax"}, "channel", "client_area"),
    Structural("unknown language", {"language": "de"}, "language", "en or it"),
    Structural("no server identifier", {"server": {}}, "server", "exactly one of ip"),
    Structural("two server identifiers", {"server": {"ip": "203.0.113.10",
                                                     "service_id": "SRV-1"}},
               "server", "exactly one of ip"),
    Structural("server ip not an address", {"server": {"ip": "300.1.1.1"}}, "server.ip",
               "IPv4 or IPv6"),
    Structural("service id with a slash", {"server": {"service_id": "SRV/1"}},
               "server.service_id", "SRV-1001"),
    Structural("service name over two lines", {"server": {"service_name": "web\n01"}},
               "server.service_name", "on one line"),
    Structural("unknown category", {"category": "coffee"}, "category", "root_password_reset"),
    Structural("description missing", {"description": _DELETE}, "description",
               "describe the problem"),
    Structural("description too long", {"description": "x" * 20001}, "description",
               "20000"),
    Structural("too many error messages", {"error_messages": ["e"] * 51}, "error_messages",
               "at most 50"),
    Structural("parameters key not lower-case", {"parameters": {"Unit": "nginx"}},
               "parameters.Unit[key]", "lower-case keys"),
    Structural("credentials missing", {"credentials": _DELETE}, "credentials",
               "administrator account"),
    Structural("credentials without username", {"credentials": {"password": CANARY}},
               "credentials.username", "is required"),
    Structural("credentials without a secret", {"credentials": {"username": "root"}},
               "credentials", "exactly one of password, private_key"),
    Structural("private key not OpenSSH", {"credentials": {"username": "root",
                                                           "private_key": CANARY}},
               "credentials.private_key", "OpenSSH"),
    Structural("authorization missing", {"authorization": _DELETE}, "authorization",
               "written authorization"),
    Structural("statement missing", {"authorization.statement": _DELETE},
               "authorization.statement", "I authorize"),
    Structural("consent as text", {"authorization.accepts_backup_responsibility": "yes"},
               "authorization.accepts_backup_responsibility", "true or false"),
    Structural("signed_at without timezone", {"authorization.signed_at": "2026-11-22T09:58"},
               "authorization.signed_at", "with timezone"),
    Structural("signer missing", {"authorization.signed_by": _DELETE},
               "authorization.signed_by", "full name"),
    Structural("unknown field", {"priority": "urgent"}, "priority", "remove it"),
]


@pytest.mark.parametrize("case", STRUCTURAL, ids=lambda c: c.name)
def test_structural_problem_names_the_field_and_what_to_fix(case: Structural) -> None:
    errors = structural_errors(request(**case.changes))
    fields = {e.field: e for e in errors}
    assert case.field in fields, [e.field for e in errors]
    assert case.says in fields[case.field].message
    # No message may quote a submitted value: one could be a password.
    assert all(CANARY not in e.message for e in errors)


def test_a_body_that_is_not_json_is_reported_on_the_document() -> None:
    with pytest.raises(RequestValidationError) as caught:
        parse_helpdesk_request(b"{not json")
    errors = explain_structural(caught.value.errors)
    assert errors[0].field == "$"
    assert "JSON" in errors[0].message


# --- the procedure's rules -------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    changes: dict[str, Any]
    field: str
    code: str
    edge: Edge = "topic"


RULE_CASES = [
    Rule("department is not Technical Issues", {"department": "Sales"}, "department",
         "wrong_department"),
    Rule("billing department", {"department": "Billing & Accounts"}, "department",
         "wrong_department"),
    Rule("live chat is consultation only", {"channel": "live_chat"}, "channel",
         "channel_not_allowed"),
    Rule("description too short to act on", {"description": "help!!"}, "description",
         "description_too_short"),
    Rule("description of blanks", {"description": "   \n\t  "}, "description",
         "description_too_short"),
    Rule("unspecified server address", {"server": {"ip": "0.0.0.0"}}, "server.ip",  # noqa: S104
         "server_ip_unusable"),
    Rule("multicast server address", {"server": {"ip": "ff02::1"}}, "server.ip",
         "server_ip_unusable"),
    Rule("broadcast server address", {"server": {"ip": "255.255.255.255"}}, "server.ip",
         "server_ip_unusable"),
    Rule("unit with shell metacharacters", {"parameters": {"unit": "nginx; reboot"}},
         "parameters.unit", "invalid_unit"),
    Rule("unit that is not text", {"parameters": {"unit": 7}}, "parameters.unit",
         "invalid_unit"),
    Rule("packages not a list", {"parameters": {"packages": "htop"}}, "parameters.packages",
         "invalid_packages"),
    Rule("package with an option injected", {"parameters": {"packages": ["--force-yes"]}},
         "parameters.packages", "invalid_packages"),
    Rule("empty package list", {"parameters": {"packages": []}}, "parameters.packages",
         "invalid_packages"),
    Rule("plaintext password on the bus",
         {"credentials": {"username": "root", "password": CANARY}}, "credentials",
         "credentials_not_sealed"),
    Rule("sealed to a key the executor does not hold",
         {"credentials.sealed": {"key_id": "exec-ffffffffffff",
                                 "ciphertext": "c2VhbGVkIGJ5IGEgdGVzdA=="}},
         "credentials.sealed.key_id", "unknown_sealing_key", "http"),
    Rule("statement does not authorize", {"authorization.statement": "Please fix my server."},
         "authorization.statement", "authorization_not_explicit"),
    Rule("statement refuses", {"authorization.statement": "I do not authorize any changes."},
         "authorization.statement", "authorization_not_explicit"),
    Rule("Italian statement refuses", {"authorization.statement": "Non autorizzo l'intervento."},
         "authorization.statement", "authorization_not_explicit"),
    Rule("backups not acknowledged", {"authorization.accepts_backup_responsibility": False},
         "authorization.accepts_backup_responsibility", "consent_required"),
    Rule("interruption not accepted", {"authorization.accepts_service_interruption": False},
         "authorization.accepts_service_interruption", "consent_required"),
    Rule("data loss disclaimer not accepted",
         {"authorization.accepts_data_loss_disclaimer": False},
         "authorization.accepts_data_loss_disclaimer", "consent_required"),
    Rule("authorization signed in the future",
         {"authorization.signed_at": (NOW + timedelta(hours=2)).isoformat()},
         "authorization.signed_at", "signed_in_future"),
]


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda c: c.name)
def test_rule_refuses_with_field_and_fix(case: Rule) -> None:
    errors = rule_errors(request(**case.changes), edge=case.edge)
    assert [(e.field, e.code) for e in errors] == [(case.field, case.code)]
    message = errors[0].message
    assert len(message) > 30, "a message must say what to fix, not just what is wrong"
    assert CANARY not in message


def test_plaintext_credentials_are_fine_over_http_which_seals_them() -> None:
    document = request(credentials={"username": "root", "password": CANARY})
    assert rule_errors(document, edge="http") == []


def test_plaintext_refusal_says_to_seal_with_intervene_seal() -> None:
    (error,) = rule_errors(request(credentials={"username": "root", "password": CANARY}))
    assert "`intervene seal`" in error.message


def test_every_broken_rule_is_reported_at_once() -> None:
    document = request(department="Sales", channel="live_chat",
                       **{"authorization.accepts_data_loss_disclaimer": False})
    assert [e.code for e in rule_errors(document)] == [
        "wrong_department", "channel_not_allowed", "consent_required"]


def test_without_a_loaded_key_any_key_id_is_accepted() -> None:
    document = request(**{"credentials.sealed": {"key_id": "exec-ffffffffffff",
                                                 "ciphertext": "c2VhbGVk"}})
    parsed = parse_helpdesk_request(document)
    assert check_request(parsed, edge="topic", now=NOW, rules=Rules()) == []


def test_private_key_credentials_pass() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n-----END OPENSSH PRIVATE KEY-----"
    assert rule_errors(request(credentials={"username": "root", "private_key": key}),
                       edge="http") == []


# --- the pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "key"), [
    ("technical_issues", "technical_issues"),
    ("Technical Issues", "technical_issues"),
    ("technical-issues", "technical_issues"),
    ("  TECHNICAL  ISSUES ", "technical_issues"),
    ("Sales", "sales"),
])
def test_department_names_compare_case_and_separator_blind(label: str, key: str) -> None:
    assert department_key(label) == key


@pytest.mark.parametrize(("statement", "explicit"), [
    ("I authorize the provider's support to perform OS-level intervention on this server.",
     True),
    ("I authorise you to log in and fix it.", True),
    ("I give my consent to the intervention.", True),
    ("You have my permission to access the server.", True),
    ("Autorizzo il supporto del provider a intervenire sul sistema operativo.", True),
    ("Do il mio consenso all'intervento sul server.", True),
    ("Acconsento all'intervento.", True),
    ("Please fix my server.", False),
    ("Sistemate il server per favore.", False),
    ("I do not authorize changes.", False),
    ("I never gave permission.", False),
    ("Non autorizzo l'accesso.", False),
    ("Non do il consenso.", False),
])
def test_explicit_authorization_in_english_and_italian(statement: str, explicit: bool) -> None:
    assert is_explicit_authorization(statement) is explicit


def test_error_lists_are_bounded_for_ticket_rejected() -> None:
    many = [FieldError(field=f"f{i}", message="is wrong") for i in range(250)]
    kept = bounded(many)
    assert len(kept) == MAX_ERRORS
    assert kept[-1].code == "too_many_errors"
    assert "151 more" in kept[-1].message


def test_a_sealed_secret_is_never_shown_by_repr() -> None:
    parsed = parse_helpdesk_request(request())
    assert isinstance(parsed, HelpdeskTicketRequest)
    assert "c2VhbGVk" not in repr(parsed.credentials.sealed)  # type: ignore[union-attr]
    assert isinstance(parsed.credentials.sealed, SealedSecret)  # type: ignore[union-attr]
