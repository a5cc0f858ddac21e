"""Every verdict path of auth's pure decision, as the procedure states it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from auth_factories import NOW, STATEMENT, authorization, credentials, server, ticket

from schemas import (
    AuthorizationRejected,
    AuthorizationVerified,
    ClarificationRequested,
    TicketSubmitted,
)
from services.auth.inventory import ServerRecord
from services.auth.verdict import (
    Facts,
    NeedsClarification,
    Policy,
    Rejected,
    Verified,
    decide,
    department_key,
    to_event,
)

POLICY = Policy()
MINE = server()
OTHER = server(service_id="SRV-9", account_id="ACC-9", authorized_contacts="", ips="198.51.100.9")
MINE_TOO = server(service_id="SRV-2", ips="203.0.113.20", service_name="Web-01")


@dataclass(frozen=True)
class Case:
    name: str
    ticket: TicketSubmitted
    candidates: tuple[ServerRecord, ...] = (MINE,)
    expect: str = "verified"  # "verified", "clarification" or "rejected"
    reasons: tuple[str, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)


def by_name(name: str = "web-01", **kw: Any) -> TicketSubmitted:
    return ticket(server={"service_name": name}, **kw)


CASES = [
    # --- the server ---------------------------------------------------------------------
    Case("owner names the server by ip", ticket()),
    Case("owner names it by service id", ticket(server={"service_id": "SRV-1"})),
    Case("owner names it by its second address", ticket(server={"ip": "2001:db8::10"})),
    Case("owner names it by service name", by_name()),
    Case("authorized contact may ask", ticket(account_id="ACC-2")),
    Case("a name resolves among the account's own servers only", by_name(), (MINE, OTHER)),
    Case("unknown ip", ticket(), (), "rejected", ("server_unknown",)),
    Case(
        "unknown service id",
        ticket(server={"service_id": "SRV-404"}),
        (),
        "rejected",
        ("server_unknown",),
    ),
    Case(
        "another customer's server name is unknown here",
        by_name(),
        (OTHER,),
        "rejected",
        ("server_unknown",),
    ),
    Case(
        # The same reason as an unknown address: a customer cannot probe the inventory.
        "another account's server is reported unknown, not 'not yours'",
        ticket(account_id="ACC-7"),
        expect="rejected",
        reasons=("server_unknown",),
    ),
    Case(
        "a ticket no integration vouched for is refused",
        ticket(vouched_by=None),
        expect="rejected",
        reasons=("account_not_vouched",),
    ),
    Case(
        "two of the customer's servers share the name",
        by_name(),
        (MINE, MINE_TOO, OTHER),
        "clarification",
        ("server_ambiguous",),
    ),
    Case(
        "an address recorded on two of the customer's servers",
        ticket(),
        (MINE, MINE_TOO),
        "clarification",
        ("server_ambiguous",),
    ),
    Case(
        "an address recorded on servers of two accounts",
        ticket(),
        (MINE, OTHER),
        "rejected",
        ("server_ambiguous",),
    ),
    # --- the written authorization ------------------------------------------------------
    Case(
        "blank statement",
        ticket(authorization=authorization(statement="  \n ")),
        expect="rejected",
        reasons=("authorization_missing",),
    ),
    *(
        Case(
            f"{flag} not accepted",
            ticket(authorization=authorization(**{flag: False})),
            expect="rejected",
            reasons=("authorization_not_explicit",),
        )
        for flag in (
            "accepts_backup_responsibility",
            "accepts_service_interruption",
            "accepts_data_loss_disclaimer",
        )
    ),
    Case(
        "statement authorizes nothing",
        ticket(authorization=authorization(statement="Please fix my server quickly.")),
        expect="rejected",
        reasons=("authorization_not_explicit",),
    ),
    Case(
        "statement negates the authorization",
        ticket(authorization=authorization(statement="I do not authorize any change.")),
        expect="rejected",
        reasons=("authorization_not_explicit",),
    ),
    Case(
        "Italian statement",
        ticket(
            authorization=authorization(
                statement="Autorizzo il supporto a intervenire sul sistema operativo."
            )
        ),
    ),
    Case(
        "British spelling",
        ticket(authorization=authorization(statement="I authorise the provider to intervene.")),
    ),
    Case(
        "signed in the future",
        ticket(authorization=authorization(signed_at=NOW + timedelta(minutes=10))),
        expect="rejected",
        reasons=("authorization_not_bound",),
    ),
    Case(
        "signed after the revision was submitted",
        ticket(
            occurred_at=NOW - timedelta(hours=2),
            authorization=authorization(signed_at=NOW - timedelta(hours=1)),
        ),
        expect="rejected",
        reasons=("authorization_not_bound",),
    ),
    Case(
        "signed long before the revision (copied from an old request)",
        ticket(authorization=authorization(signed_at=NOW - timedelta(days=31))),
        expect="rejected",
        reasons=("authorization_not_bound",),
    ),
    Case(
        "a few minutes of clock skew is tolerated",
        ticket(authorization=authorization(signed_at=NOW + timedelta(minutes=4))),
    ),
    Case(
        "an authorization from an earlier revision of this month still binds",
        ticket(revision=2, authorization=authorization(signed_at=NOW - timedelta(days=29))),
    ),
    # --- department, channel, credentials, scope, revision ------------------------------
    Case(
        "wrong department",
        ticket(department="billing"),
        expect="rejected",
        reasons=("wrong_department",),
    ),
    Case("department spelled differently", ticket(department="Technical Issues")),
    Case(
        "live chat is consultation only",
        ticket(channel="live_chat"),
        expect="rejected",
        reasons=("channel_not_allowed",),
    ),
    Case(
        "empty sealed credentials",
        ticket(credentials=credentials(b"")),
        expect="clarification",
        reasons=("credentials_missing",),
    ),
    Case(
        "paid-only category",
        ticket(category="data_recovery"),
        expect="rejected",
        reasons=("scope_not_included",),
    ),
    Case(
        "older revision than one already decided",
        ticket(revision=1),
        expect="rejected",
        reasons=("revision_stale",),
        facts={"latest_revision": 2},
    ),
    Case(
        "the same revision decided again (redelivery)",
        ticket(revision=2),
        facts={"latest_revision": 2},
    ),
    # --- combinations -------------------------------------------------------------------
    Case(
        "a fixable and an unfixable problem: rejected with both",
        ticket(account_id="ACC-7", credentials=credentials(b"")),
        expect="rejected",
        reasons=("server_unknown", "credentials_missing"),
    ),
    Case(
        "two fixable problems: one clarification",
        by_name(credentials=credentials(b"")),
        (MINE, MINE_TOO),
        "clarification",
        ("server_ambiguous", "credentials_missing"),
    ),
    Case(
        "every reason at once, in a fixed order",
        ticket(
            revision=1,
            account_id="ACC-7",
            vouched_by=None,
            channel="live_chat",
            department="sales",
            category="malware_removal",
            credentials=credentials(b""),
            authorization=authorization(
                accepts_service_interruption=False, signed_at=NOW + timedelta(days=1)
            ),
        ),
        expect="rejected",
        reasons=(
            "account_not_vouched",
            "revision_stale",
            "channel_not_allowed",
            "wrong_department",
            "server_unknown",
            "authorization_not_explicit",
            "authorization_not_bound",
            "credentials_missing",
            "scope_not_included",
        ),
        facts={"latest_revision": 3},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_verdict_paths(case: Case):
    verdict = decide(
        case.ticket, Facts(candidates=case.candidates, **case.facts), now=NOW, policy=POLICY
    )
    kind = {Verified: "verified", Rejected: "rejected", NeedsClarification: "clarification"}
    assert kind[type(verdict)] == case.expect, verdict
    if not isinstance(verdict, Verified):
        assert verdict.reasons == case.reasons


def test_verified_names_the_address_the_customer_gave_else_the_primary_one():
    by_ip = decide(
        ticket(server={"ip": "2001:db8::10"}), Facts(candidates=(MINE,)), now=NOW, policy=POLICY
    )
    by_id = decide(
        ticket(server={"service_id": "SRV-1"}), Facts(candidates=(MINE,)), now=NOW, policy=POLICY
    )
    assert isinstance(by_ip, Verified)
    assert isinstance(by_id, Verified)
    assert str(by_ip.ip) == "2001:db8::10"
    assert str(by_id.ip) == "203.0.113.10"


def test_ambiguous_name_asks_which_of_the_customers_own_servers_and_names_no_other():
    verdict = decide(by_name(), Facts(candidates=(MINE, MINE_TOO, OTHER)), now=NOW, policy=POLICY)
    assert isinstance(verdict, NeedsClarification)
    assert verdict.field == "server"
    assert "SRV-1" in verdict.question
    assert "SRV-2" in verdict.question
    assert "203.0.113.20" in verdict.question
    assert "service id or its IP address" in verdict.question
    assert "SRV-9" not in verdict.question
    assert "ACC-9" not in verdict.question


@pytest.mark.parametrize("candidates", [(OTHER,), (MINE, OTHER)])
def test_refusals_never_reveal_another_customers_servers(candidates: tuple[ServerRecord, ...]):
    for t in (by_name(), ticket()):
        verdict = decide(t, Facts(candidates=candidates), now=NOW, policy=POLICY)
        event = to_event(t, verdict, event_id=t.event_id, now=NOW)
        text = event.model_dump_json()
        assert "SRV-9" not in text
        assert "ACC-9" not in text
        assert "198.51.100.9" not in text


def test_missing_credentials_question_says_what_to_send():
    verdict = decide(
        ticket(credentials=credentials(b"")), Facts(candidates=(MINE,)), now=NOW, policy=POLICY
    )
    assert isinstance(verdict, NeedsClarification)
    assert verdict.field == "credentials"
    assert "password or private key" in verdict.question
    assert "'admin'" in verdict.question


def test_paid_only_scope_explains_why_for_the_notifier():
    verdict = decide(
        ticket(category="performance_tuning"), Facts(candidates=(MINE,)), now=NOW, policy=POLICY
    )
    assert isinstance(verdict, Rejected)
    assert verdict.reasons == ("scope_not_included",)
    assert "Performance tuning is not part of the OS Intervention service" in verdict.details
    assert "paid service" in verdict.details


@pytest.mark.parametrize(("prior", "review"), [(0, False), (2, False), (3, True), (10, True)])
def test_repeated_interventions_above_threshold_are_verified_but_marked_for_review(
    prior: int, review: bool
):
    t = ticket()
    verdict = decide(
        t,
        Facts(candidates=(MINE,), prior_interventions=prior),
        now=NOW,
        policy=Policy(review_threshold=3),
    )
    assert isinstance(verdict, Verified)
    assert (verdict.review_reason is not None) is review
    event = to_event(t, verdict, event_id=t.event_id, now=NOW)
    assert isinstance(event, AuthorizationVerified)
    assert event.review_required is review
    if review:
        assert event.review_reason is not None
        assert f"{prior} other tickets" in event.review_reason
        assert "additional review" in event.review_reason


def test_a_rejected_ticket_is_not_marked_for_review_however_busy_the_server():
    verdict = decide(
        ticket(account_id="ACC-7"),
        Facts(candidates=(MINE,), prior_interventions=99),
        now=NOW,
        policy=POLICY,
    )
    assert isinstance(verdict, Rejected)


def test_events_carry_the_verdict_on_the_same_ticket_and_revision():
    t = ticket(revision=4, authorization=authorization(statement=STATEMENT))
    verified = to_event(
        t,
        decide(t, Facts(candidates=(MINE,)), now=NOW, policy=POLICY),
        event_id=t.event_id,
        now=NOW,
    )
    assert isinstance(verified, AuthorizationVerified)
    assert (verified.ticket_id, verified.revision, verified.causation_id) == (
        t.ticket_id,
        4,
        t.event_id,
    )
    assert verified.ticket == t
    assert verified.server.service_id == "SRV-1"
    assert verified.server.ssh_port == 22
    assert verified.server.type == "dedicated"
    assert verified.signature is None  # signing is a separate step

    bad = ticket(department="sales")
    rejected = to_event(
        bad,
        decide(bad, Facts(candidates=(MINE,)), now=NOW, policy=POLICY),
        event_id=bad.event_id,
        now=NOW,
    )
    assert isinstance(rejected, AuthorizationRejected)
    assert rejected.reasons == ("wrong_department",)
    assert "'sales'" in rejected.details

    ask = by_name()
    clarification = to_event(
        ask,
        decide(ask, Facts(candidates=(MINE, MINE_TOO)), now=NOW, policy=POLICY),
        event_id=ask.event_id,
        now=NOW,
    )
    assert isinstance(clarification, ClarificationRequested)
    assert clarification.producer == "auth"
    assert clarification.field == "server"


@pytest.mark.parametrize(
    "label", ["technical_issues", "Technical Issues", "technical-issues", " TECHNICAL  ISSUES "]
)
def test_department_labels_compare_blind_to_case_and_separators(label: str):
    assert department_key(label) == "technical_issues"
