"""From an engineer's chat input to the desk's use case: shared by every adapter."""

from __future__ import annotations

from schemas.events import ChatChannel
from services.notifier.acks import Answer, EngineerDesk
from services.notifier.bots.base import ActionKind
from services.notifier.bots.commands import AckCommand, Command


async def run_command(desk: EngineerDesk, command: Command, *, channel: ChatChannel,
                      identity: str) -> Answer:
    if isinstance(command, AckCommand):
        return await desk.acknowledge_ticket(command.ticket_id, channel=channel,
                                             identity=identity)
    return await desk.report_step(command.ticket_id, command.step_id, status=command.status,
                                  notes=command.notes, channel=channel, identity=identity)


async def run_action(desk: EngineerDesk, kind: ActionKind, page_id: str, *,
                     channel: ChatChannel, identity: str, notes: str = "") -> Answer:
    """A button press or reaction on a page."""
    if kind == "ack":
        return await desk.acknowledge_page(page_id, channel=channel, identity=identity)
    return await desk.report_step_page(
        page_id, status="done" if kind == "step_done" else "failed", notes=notes,
        channel=channel, identity=identity)
