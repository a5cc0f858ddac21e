"""``intervene status TICKET``: one ticket's status and timeline, from the audit log.

The same allow-listed view intake's ``GET /v1/tickets/{ticket_id}`` serves
(:func:`services.intake.timeline.ticket_status`): no credentials, ciphertext, signatures or
command output, whoever runs it. Reads ``MONGODB_URI`` / ``MONGODB_DATABASE``; exit status 0,
or 1 when the audit log knows no such ticket.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from services.cli.commands_lifecycle import ticket_records
from services.intake.timeline import TicketStatus, ticket_status


def render_status(status: TicketStatus) -> list[str]:
    head = f"ticket {status.ticket_id}: {status.status}"
    if status.outcome:
        head += f" ({status.outcome})"
    facts = [f"revision {status.revision}" if status.revision is not None else None,
             f"{status.category} ({status.scope})" if status.category else None,
             f"credentials {status.credentials}" if status.credentials else None]
    lines = [head + "".join(f", {f}" for f in facts if f)]
    first: datetime | None = None
    for entry in status.timeline:
        first = first or entry.at
        offset = (entry.at - first).total_seconds()
        what = entry.event_type or entry.kind
        revision = f"r{entry.revision}" if entry.revision is not None else "  "
        details = ", ".join(f"{k}={_short(v)}" for k, v in entry.details.items())
        lines.append(f"  {entry.at.isoformat(timespec='seconds')} {offset:+8.2f}s  "
                     f"{entry.actor.split(':')[0]:<9} {revision:<3} {what:<24} {details}")
    return lines


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str,
                                                           ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def print_ticket_status(ticket: str) -> int:
    records = asyncio.run(ticket_records(ticket))
    status = ticket_status(ticket, records)
    if status is None:
        print(f"no audit records for ticket {ticket}")
        return 1
    for line in render_status(status):
        print(line)
    return 0
