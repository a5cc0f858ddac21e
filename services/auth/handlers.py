"""Auth's one use case: decide a submitted ticket revision, and remember the decision.

The I/O around the pure decision (:mod:`services.auth.verdict`): look the server and the
history up, decide, build the event, sign it when it authorizes work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from schemas.events import (
    AuthorizationRejected,
    AuthorizationVerified,
    ClarificationRequested,
    TicketSubmitted,
)
from services.auth.history import VerdictHistory
from services.auth.inventory import ServerInventory
from services.auth.signing import VerdictSigner
from services.auth.verdict import Facts, Policy, decide, resolve_server, to_event

VerdictEvent = AuthorizationVerified | AuthorizationRejected | ClarificationRequested


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Dependencies:
    inventory: ServerInventory
    history: VerdictHistory
    signer: VerdictSigner
    policy: Policy
    clock: Callable[[], datetime] = utc_now


async def authorize_ticket(
    ticket: TicketSubmitted, deps: Dependencies, *, event_id: UUID
) -> VerdictEvent:
    """The verdict event for ``ticket`` (signed when it is an AuthorizationVerified)."""
    # Independent reads, issued together: each is a store round trip on the hot path.
    latest, found = await asyncio.gather(
        deps.history.latest_revision(ticket.ticket_id), deps.inventory.find(ticket.server)
    )
    candidates = tuple(found)
    # The history count needs the server, so it is resolved here once before deciding;
    # decide() resolves again from the same values (pure, cheap) to stay self-contained.
    target = resolve_server(ticket, candidates).server
    prior = (
        await deps.history.prior_interventions(
            target.service_id, ticket=ticket, window=deps.policy.review_window
        )
        if target is not None
        else 0
    )
    now = deps.clock()
    verdict = decide(
        ticket,
        Facts(candidates=candidates, prior_interventions=prior, latest_revision=latest),
        now=now,
        policy=deps.policy,
    )
    event = to_event(ticket, verdict, event_id=event_id, now=now)
    return deps.signer.sign(event) if isinstance(event, AuthorizationVerified) else event


async def remember_verdict(
    ticket: TicketSubmitted, event: VerdictEvent, deps: Dependencies
) -> None:
    """Record the decision once it is published (a crash in between re-runs the handler,
    which records it then)."""
    if isinstance(event, AuthorizationVerified):
        await deps.history.record_intervention(
            event.server.service_id, ticket, window=deps.policy.review_window
        )
    await deps.history.record_decision(ticket)
