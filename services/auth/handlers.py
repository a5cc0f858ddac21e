"""Auth's one use case: decide a submitted ticket revision, and remember the decision.

The I/O around the pure decision (:mod:`services.auth.verdict`): look the server and the
history up (recording the decision in the same write), decide, build the event, sign it
when it authorizes work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from services.auth.verdict import Facts, Policy, Verified, decide, to_event

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
    """The verdict event for ``ticket`` (signed when it is an AuthorizationVerified), with
    the decision recorded in auth's history as it is made: one history round trip per
    ticket, two when verified (the inventory comes from the process's cache)."""
    # Independent, issued together: the decision record answers which revision was decided
    # last, and the inventory lookup is usually answered from the cache.
    latest, found = await asyncio.gather(
        deps.history.note_decision(ticket), deps.inventory.find(ticket.server)
    )
    facts = Facts(candidates=tuple(found), latest_revision=latest)
    now = deps.clock()
    verdict = decide(ticket, facts, now=now, policy=deps.policy)
    if isinstance(verdict, Verified):
        # Verified whatever the count (it only marks the verdict for review), so it is an
        # intervention: recorded, and the others on the server counted, in one write.
        prior = await deps.history.note_intervention(
            verdict.server.service_id, ticket, window=deps.policy.review_window
        )
        verdict = decide(ticket, replace(facts, prior_interventions=prior), now=now,
                         policy=deps.policy)
    event = to_event(ticket, verdict, event_id=event_id, now=now)
    return deps.signer.sign(event) if isinstance(event, AuthorizationVerified) else event
