"""Engineer-facing chat texts (English, the on-call room's language). Pure.

Unlike customer messages these may show internal detail engineers need — a manual step's
instructions, hardware evidence, why an access method was chosen — but never a credential:
no function here is given one (a ticket's credentials are sealed and stay out, as do the
customer's free-text description and authorization, which could hold a pasted password).
The caller still passes every text through the process redactor before it leaves.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.events import HardwareEscalated, ManualStepRequested, TicketSubmitted
from services.notifier.sla import Alert, SlaClock

CLOCK_NAMES = {"initial_response": "initial response", "intervention": "intervention"}
PAGE_NAMES = {"new_ticket": "new ticket", "manual_step": "manual step",
              "hardware": "hardware escalation"}


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _minutes(span: timedelta) -> str:
    return f"{int(span.total_seconds() // 60)} min"


def how_to_ack(ticket_id: str) -> str:
    return f"Acknowledge: react to this message or send `ack {ticket_id}`."


def new_ticket(event: TicketSubmitted) -> str:
    review = ""
    if event.confidence == "low" or event.form_category not in (None, event.category):
        chosen = f"; the customer chose {event.form_category}" if event.form_category else ""
        review = f"\nClassification needs a check ({event.category_source}, " \
                 f"{event.confidence} confidence{chosen})."
    scope = "included" if event.scope == "included" else "NOT included (paid service)"
    return (
        f"🆕 New ticket {event.ticket_id} (revision {event.revision}): {event.category} — "
        f"{scope}\n"
        f"Server: {event.server.kind} {event.server.value} · account {event.account_id} · "
        f"channel {event.channel} · language {event.language}{review}\n"
        + how_to_ack(event.ticket_id)
    )


def manual_step(event: ManualStepRequested) -> str:
    lines = [
        f"🛠 Manual step {event.step_id} on {event.ticket_id} (revision {event.revision}) "
        f"via {event.method}",
        f"Why: {event.reason}",
        "Instructions:",
        *(f"{i}. {text}" for i, text in enumerate(event.instructions, 1)),
    ]
    if event.verification:
        lines += ["Check before reporting:", *(f"- {text}" for text in event.verification)]
    if event.deadline is not None:
        lines.append(f"Deadline: {_when(event.deadline)}")
    lines.append(how_to_ack(event.ticket_id))
    lines.append(f"Report: `done {event.ticket_id} {event.step_id} <notes>` or "
                 f"`failed {event.ticket_id} {event.step_id} <notes>`.")
    return "\n".join(lines)


def hardware(event: HardwareEscalated) -> str:
    device = f" {event.device}" if event.device else ""
    return "\n".join([
        f"🔥 Hardware escalation on {event.ticket_id}: {event.component}{device} "
        f"({event.severity})",
        "Evidence:",
        *(f"- {text}" for text in event.evidence),
        "Follow the hardware-failure procedure.",
        how_to_ack(event.ticket_id),
    ])


def sla_alert(alert: Alert, clock: SlaClock, now: datetime) -> str:
    name = CLOCK_NAMES[clock.name]
    used = f"{_minutes(clock.elapsed(now))} of {_minutes(clock.budget)}"
    if alert.kind == "sla_warning":
        head = f"⚠️ SLA warning on {alert.ticket_id}: {name} clock at " \
               f"{round(clock.elapsed(now) / clock.budget * 100)} %"
    else:
        head = f"🚨 SLA breached on {alert.ticket_id}: {name} clock past its deadline"
    return (f"{head} ({used}; deadline {_when(clock.deadline)}).\n"
            + how_to_ack(alert.ticket_id))


def escalation(alert: Alert, *, tier: int, names: list[str], now: datetime) -> str:
    assert alert.page is not None
    waited = _minutes(now - alert.page.opened_at)
    who = (" " + ", ".join(names)) if names else " (no engineer registered for it)"
    return (f"⏫ Escalation to tier {tier}: {PAGE_NAMES[alert.page.kind]} on "
            f"{alert.ticket_id} unacknowledged for {waited}.{who}\n"
            + how_to_ack(alert.ticket_id))


def closed(original: str, outcome: str) -> str:
    """The page's message once closed: the text kept, the way to ack replaced by who did."""
    kept = [line for line in original.splitlines() if not line.startswith("Acknowledge:")]
    mark = "✅" if outcome.startswith("acknowledged") else "✔️"
    return "\n".join([*kept, f"{mark} {outcome[0].upper()}{outcome[1:]}."])
