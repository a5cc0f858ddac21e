"""What an engineer is asked when the automation stops: pure builders of hand-overs.

Console work (IP-KVM, VNC, data centre) takes its instructions from
:mod:`services.executor.console_steps`; a review, a lost connection and too many
interruptions each say what happened and what the engineer should look at first.
"""

from __future__ import annotations

from schemas.events import AuthorizationVerified
from services.executor.access import AccessDecision
from services.executor.console_steps import console_instructions
from services.executor.runbooks.results import Handover


def review_decision(verdict: AuthorizationVerified) -> AccessDecision:
    """Auth flagged the ticket: an engineer reviews it before any automation."""
    return AccessDecision(
        method="ssh" if verdict.server.os_family == "linux" else "windows_openssh",
        mode="engineer", disposition="hand_over", runbook=f"review.{verdict.ticket.category}",
        reason=f"auth asked for a review before any automation: {verdict.review_reason}")


def retry_decision(verdict: AuthorizationVerified) -> AccessDecision:
    """For a run interrupted too often before it decided anything."""
    return AccessDecision(method="ssh" if verdict.server.os_family == "linux"
                          else "windows_openssh", mode="engineer", disposition="hand_over",
                          runbook=f"engineer.{verdict.ticket.category}",
                          reason="the automated run could not complete")


def retries_handover(interruptions: int) -> Handover:
    return Handover(
        index=-1, step="automation", title="Finish the intervention by hand",
        reason=f"the automated run was interrupted {interruptions} times",
        instructions=("Review the audit trail of this ticket: every command run so far is "
                      "recorded there.",
                      "Finish or undo the intervention by hand and report."))


def reconnect_handover(reason: str) -> Handover:
    return Handover(
        index=-1, step="reconnect", title="Reconnect",
        reason=f"the executor could not reconnect after a restart: {reason}",
        instructions=("Review the audit trail of this ticket for the steps already done.",
                      "Reach the server and finish the runbook by hand."))


def review_handover(verdict: AuthorizationVerified, decision: AccessDecision) -> Handover:
    server = verdict.server
    return Handover(
        index=-1, step=decision.runbook, title="Review before automation",
        reason=decision.reason,
        instructions=(
            f"Auth flagged this ticket for review: {verdict.review_reason}.",
            f"Check the recent interventions on server {server.service_name} "
            f"({server.service_id}) and whether this request should go ahead.",
            "Report this step done to let the intervention proceed, or failed to stop it.",
        ),
        verification=("The customer's request and written authorization match this server.",),
    )


def console_handover(verdict: AuthorizationVerified, decision: AccessDecision) -> Handover:
    server = verdict.server
    category = verdict.ticket.category
    instructions, verification = console_instructions(server, category, decision.method)
    return Handover(index=-1, step=decision.runbook,
                    title=f"{category.replace('_', ' ')} via {decision.method}",
                    reason=decision.reason, instructions=instructions,
                    verification=verification)
