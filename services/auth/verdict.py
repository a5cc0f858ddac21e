"""The decision: may this ticket revision be executed, and on which server?

Pure code: :func:`decide` takes the ticket, the facts auth looked up (inventory matches,
intervention history) and the time, and returns one of

- :class:`Verified`: the server, and whether the verdict is marked for review;
- :class:`NeedsClarification`: every problem is one the customer can fix by answering one
  question on the ticket (which of *their* servers; the missing credentials);
- :class:`Rejected`: every reason found, machine-readable, with an English explanation.

Every check runs, so a rejection lists all reasons at once and the customer is never asked
a question whose answer would still be refused.

What each check means:

- **Vouched.** The ticket names the registered helpdesk integration that authenticated the
  customer (``vouched_by``; intake checked that the account is that integration's mapping
  of the customer). A ticket nobody vouched for is ``account_not_vouched``: its account is
  only what someone typed.
- **Server.** An IP or service id names one server globally: none, or one the account may
  not act on, is ``server_unknown`` - the same answer, so a customer cannot learn which
  addresses the provider hosts for others (the details for engineers and auth's log say
  which it was). A service name is a customer's own label,
  so it is looked up among the servers the account owns or is an authorized contact of
  (another customer's ``web-01`` is neither a match nor worth mentioning): none is
  ``server_unknown``, several is a clarification listing only the customer's own servers.
  An address recorded on several servers is an inventory fault: a clarification when they
  are all the customer's, else ``server_ambiguous`` (naming no other account's server).
- **Authorization explicit**: the three consents are given and the statement says the
  customer authorizes (``authori[sz]…`` / Italian ``autorizz…``), not preceded by a
  negation. A blank statement or signer is ``authorization_missing``.
- **Authorization bound to this ticket and revision**: the authorization arrives inside
  the revision's own request, and the signed verdict covers both together, so it cannot be
  moved to another ticket or revision. What auth checks on top is time: ``signed_at`` is not
  in the future (``now``) nor after the revision was submitted (``occurred_at``), beyond the
  clock-skew tolerance, and not older than ``authorization_max_age`` before the submission
  (an authorization copied from an old ticket is not this request's).
- **Credentials present**: the sealed payload holds at least one byte. Auth cannot open it
  and does not need to: a sealed box is exactly 48 bytes longer than what was sealed.
- **Revision**: a revision older than one auth already decided is ``revision_stale`` (the
  customer's later revision supersedes it; re-deciding the same revision is fine).
- **Repeated interventions**: with ``review_threshold`` or more other tickets verified for
  this server within ``review_window`` before this one was submitted, the verdict is still
  *verified* but marked for review: the procedure says such work "may be subject to
  additional review", not that it is refused, and the customer did authorize it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from typing import Final
from uuid import UUID

import nacl.bindings

from schemas.events import (
    AuthorizationRejected,
    AuthorizationRejectionReason,
    AuthorizationVerified,
    ClarificationRequested,
    ResolvedServer,
    TicketSubmitted,
)
from services.auth.server_record import ServerRecord

Reason = AuthorizationRejectionReason

# The order reasons are reported in: the most fundamental first.
REASON_ORDER: Final[tuple[Reason, ...]] = (
    "account_not_vouched",
    "revision_stale",
    "channel_not_allowed",
    "wrong_department",
    "server_unknown",
    "server_ambiguous",
    "not_owner",
    "authorization_missing",
    "authorization_not_explicit",
    "authorization_not_bound",
    "credentials_missing",
    "scope_not_included",
)
# Problems the customer fixes by answering on the ticket; any other reason rejects.
CLARIFIABLE: Final[frozenset[Reason]] = frozenset({"server_ambiguous", "credentials_missing"})

_SEAL_OVERHEAD: Final[int] = nacl.bindings.crypto_box_SEALBYTES
_AUTHORIZES = re.compile(r"\b(?:authori[sz]|autorizz)", re.IGNORECASE)
# A negation up to two words before the verb: "do not authorize", "non autorizzo".
_NEGATED = re.compile(
    r"\b(?:not|never|no|don't|do\s+not|non|nego)\s+(?:\w+\s+){0,2}(?:authori[sz]|autorizz)",
    re.IGNORECASE,
)
_LISTED_SERVERS: Final = 10  # a question lists at most this many of the customer's servers


def department_key(department: str) -> str:
    """``Technical Issues`` / ``technical-issues`` / ``technical_issues`` compare equal."""
    return re.sub(r"[\s_-]+", "_", department.strip().casefold())


@dataclass(frozen=True, kw_only=True)
class Policy:
    allowed_departments: frozenset[str] = frozenset({"technical_issues"})
    review_threshold: int = 3
    review_window: timedelta = timedelta(days=30)
    authorization_max_age: timedelta = timedelta(days=30)
    clock_skew: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True)
class Facts:
    """What auth looked up for one ticket revision."""

    candidates: tuple[ServerRecord, ...]
    """Inventory records matching the ticket's server identifier."""
    prior_interventions: int = 0
    """Other tickets verified for the resolved server within the review window."""
    latest_revision: int | None = None
    """The highest revision of this ticket auth has already decided, if any."""


@dataclass(frozen=True, kw_only=True)
class Verified:
    server: ServerRecord
    ip: IPv4Address | IPv6Address
    """The address the customer named, else the server's primary one."""
    review_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Rejected:
    reasons: tuple[Reason, ...]
    details: str


@dataclass(frozen=True, kw_only=True)
class NeedsClarification:
    reasons: tuple[Reason, ...]
    question: str
    field: str


Verdict = Verified | Rejected | NeedsClarification


@dataclass(frozen=True, kw_only=True)
class _Finding:
    reason: Reason
    details: str
    question: str | None = None  # set when the customer can fix it by answering
    field: str | None = None


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """The one server a ticket names, or why there is none."""

    server: ServerRecord | None
    problem: _Finding | None


def resolve_server(ticket: TicketSubmitted, candidates: Sequence[ServerRecord]) -> Resolution:
    ref, account = ticket.server, ticket.account_id
    if ref.kind == "service_name":
        mine = [c for c in candidates if c.may_act(account)]
        if len(mine) == 1:
            return Resolution(server=mine[0], problem=None)
        if not mine:
            return Resolution(
                server=None,
                problem=_Finding(
                    reason="server_unknown",
                    details=f"No server named {ref.value!r} is owned by account {account} "
                    "or lists it as an authorized contact.",
                ),
            )
        return Resolution(server=None, problem=_which_of(mine, f"named {ref.value!r}"))
    if not candidates:
        return Resolution(
            server=None,
            problem=_Finding(
                reason="server_unknown",
                details=f"No server with {_kind_text(ref.kind)} {ref.value} is in the inventory.",
            ),
        )
    if len(candidates) == 1:
        server = candidates[0]
        if server.may_act(account):
            return Resolution(server=server, problem=None)
        return Resolution(
            server=None,
            problem=_Finding(
                reason="server_unknown",
                details=f"Account {account} neither owns the server with "
                f"{_kind_text(ref.kind)} {ref.value} nor is an authorized contact of it "
                "(told to the customer as unknown: no inventory oracle).",
            ),
        )
    if all(c.may_act(account) for c in candidates):
        return Resolution(server=None, problem=_which_of(candidates, f"at {ref.value}"))
    # Only an address can match several records (service ids are unique). Acting on it could
    # reach another customer's machine, so no side is picked and no other account is named.
    return Resolution(
        server=None,
        problem=_Finding(
            reason="server_ambiguous",
            details=f"The address {ref.value} is recorded on {len(candidates)} servers in "
            "the inventory, not all of this account's; the inventory must be corrected.",
        ),
    )


def _kind_text(kind: str) -> str:
    return {"ip": "IP address", "service_id": "service id"}.get(kind, kind)


def _which_of(servers: Sequence[ServerRecord], how: str) -> _Finding:
    listed = ", ".join(
        f"{s.service_id} ({s.service_name}, {s.ips[0]})" for s in servers[:_LISTED_SERVERS]
    )
    more = len(servers) - _LISTED_SERVERS
    if more > 0:
        listed += f" and {more} more"
    return _Finding(
        reason="server_ambiguous",
        details=f"{len(servers)} of the account's servers are {how}: {listed}.",
        question=f"Several of your servers are {how}: {listed}. Which one should we work "
        "on? Please reply with its service id or its IP address.",
        field="server",
    )


def _authorization_findings(
    ticket: TicketSubmitted, now: datetime, policy: Policy
) -> list[_Finding]:
    auth = ticket.authorization
    findings: list[_Finding] = []
    if not auth.statement.strip() or not auth.signed_by.strip():
        findings.append(
            _Finding(
                reason="authorization_missing",
                details="The written authorization statement or its signer is blank.",
            )
        )
    else:
        missing = [
            name
            for name, given in (
                ("backup responsibility", auth.accepts_backup_responsibility),
                ("service interruption", auth.accepts_service_interruption),
                ("data loss disclaimer", auth.accepts_data_loss_disclaimer),
            )
            if not given
        ]
        if missing:
            findings.append(
                _Finding(
                    reason="authorization_not_explicit",
                    details=f"Not accepted: {', '.join(missing)}.",
                )
            )
        if not _AUTHORIZES.search(auth.statement) or _NEGATED.search(auth.statement):
            findings.append(
                _Finding(
                    reason="authorization_not_explicit",
                    details="The statement does not explicitly authorize the intervention.",
                )
            )
    signed_at, submitted = auth.signed_at, ticket.occurred_at
    if signed_at > now + policy.clock_skew:
        findings.append(
            _Finding(
                reason="authorization_not_bound",
                details="The authorization is dated in the future.",
            )
        )
    elif signed_at > submitted + policy.clock_skew:
        findings.append(
            _Finding(
                reason="authorization_not_bound",
                details="The authorization is dated after this ticket revision was submitted.",
            )
        )
    elif signed_at < submitted - policy.authorization_max_age:
        days = policy.authorization_max_age.total_seconds() / 86400
        findings.append(
            _Finding(
                reason="authorization_not_bound",
                details=f"The authorization was signed more than {days:g} days before this "
                "ticket revision; it belongs to an earlier request.",
            )
        )
    return findings


def sealed_payload_bytes(ticket: TicketSubmitted) -> int:
    """Length of the sealed secret's plaintext, from the ciphertext length alone."""
    try:
        raw = base64.b64decode(ticket.credentials.sealed.ciphertext, validate=True)
    except (binascii.Error, ValueError):
        return 0
    return max(0, len(raw) - _SEAL_OVERHEAD)


def _findings(
    ticket: TicketSubmitted, facts: Facts, resolution: Resolution, now: datetime, policy: Policy
) -> list[_Finding]:
    findings: list[_Finding] = []
    if ticket.vouched_by is None:
        findings.append(
            _Finding(
                reason="account_not_vouched",
                details="No registered helpdesk integration vouched for the customer's "
                "account; only tickets accepted by intake from an authenticated integration "
                "are acted on.",
            )
        )
    if facts.latest_revision is not None and ticket.revision < facts.latest_revision:
        findings.append(
            _Finding(
                reason="revision_stale",
                details=f"Revision {ticket.revision} is older than revision "
                f"{facts.latest_revision}, already decided.",
            )
        )
    if ticket.channel == "live_chat":
        findings.append(
            _Finding(
                reason="channel_not_allowed",
                details="Live chat is for consultation only; an intervention must be "
                "requested through the client area, e-mail or the API.",
            )
        )
    if department_key(ticket.department) not in policy.allowed_departments:
        findings.append(
            _Finding(
                reason="wrong_department",
                details=f"Department {ticket.department!r} does not handle OS interventions.",
            )
        )
    if resolution.problem is not None:
        findings.append(resolution.problem)
    findings.extend(_authorization_findings(ticket, now, policy))
    if sealed_payload_bytes(ticket) == 0:
        kind = "password" if ticket.credentials.kind == "password" else "private key"
        findings.append(
            _Finding(
                reason="credentials_missing",
                details=f"The sealed {kind} for {ticket.credentials.username!r} is empty.",
                question=f"The {kind} for the user {ticket.credentials.username!r} arrived "
                "empty. Please send the OS username with its password or private key, "
                "through the client area form so it is encrypted.",
                field="credentials",
            )
        )
    if ticket.scope == "not_included":
        findings.append(
            _Finding(
                reason="scope_not_included",
                details=f"{ticket.category.replace('_', ' ').capitalize()} is not part of "
                "the OS Intervention service: it is a paid service, so nothing will be run "
                "automatically and a support engineer will follow up with an offer.",
            )
        )
    return findings


def decide(ticket: TicketSubmitted, facts: Facts, *, now: datetime, policy: Policy) -> Verdict:
    resolution = resolve_server(ticket, facts.candidates)
    findings = _findings(ticket, facts, resolution, now, policy)
    if not findings:
        server = resolution.server
        assert server is not None  # no finding means the server resolved
        return Verified(
            server=server,
            ip=ticket.server.ip if ticket.server.ip is not None else server.ips[0],
            review_reason=_review_reason(server, facts.prior_interventions, policy),
        )
    reasons = tuple(r for r in REASON_ORDER if any(f.reason == r for f in findings))
    if all(f.question is not None for f in findings):
        return NeedsClarification(
            reasons=reasons,
            question=" ".join(f.question for f in findings if f.question),
            field=",".join(dict.fromkeys(f.field for f in findings if f.field)),
        )
    return Rejected(reasons=reasons, details=" ".join(f.details for f in findings))


def _review_reason(server: ServerRecord, prior: int, policy: Policy) -> str | None:
    if prior < policy.review_threshold:
        return None
    days = policy.review_window.total_seconds() / 86400
    return (
        f"Repeated interventions: {prior} other tickets verified for {server.service_id} "
        f"in the {days:g} days before this one (review from {policy.review_threshold}); "
        "repeated interventions for preventable issues may be subject to additional review."
    )[:500]


def to_event(
    ticket: TicketSubmitted, verdict: Verdict, *, event_id: UUID, now: datetime
) -> AuthorizationVerified | AuthorizationRejected | ClarificationRequested:
    """The event that announces ``verdict`` (unsigned, for a Verified one)."""
    if isinstance(verdict, Verified):
        s = verdict.server
        return AuthorizationVerified.caused_by(
            ticket,
            event_id=event_id,
            occurred_at=now,
            account_id=ticket.account_id,
            ticket=ticket,
            server=ResolvedServer(
                service_id=s.service_id,
                service_name=s.service_name,
                ip=verdict.ip,
                type=s.type,
                os_family=s.os_family,
                ipkvm=s.ipkvm,
                rescue=s.rescue,
                ssh_port=s.ssh_port,
                ssh_host_key=s.ssh_host_key,
                datacenter=s.datacenter,
            ),
            review_required=verdict.review_reason is not None,
            review_reason=verdict.review_reason,
        )
    if isinstance(verdict, Rejected):
        return AuthorizationRejected.caused_by(
            ticket,
            event_id=event_id,
            occurred_at=now,
            reasons=verdict.reasons,
            details=verdict.details[:2000],
        )
    return ClarificationRequested.caused_by(
        ticket,
        producer="auth",
        event_id=event_id,
        occurred_at=now,
        question=verdict.question[:2000],
        field=verdict.field,
    )
