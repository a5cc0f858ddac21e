"""The text commands engineers type in any chat, parsed once for every adapter (pure).

- ``ack <ticket>`` — acknowledge the ticket's open pages;
- ``done <ticket> <step> [notes]`` / ``failed <ticket> <step> [notes]`` — report a manual step.

A leading ``/`` (Telegram's command style) and ``@botname`` suffix are accepted; anything
else is not a command and is ignored, so engineers can talk in the room freely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from schemas.common import IDENTIFIER_PATTERN
from services.notifier.bots.base import ChatAction

_ID = IDENTIFIER_PATTERN.strip("^$")
_COMMAND = re.compile(
    rf"^\s*/?(?P<verb>ack|done|failed)(?:@\w+)?\s+(?P<ticket>{_ID})"
    rf"(?:\s+(?P<step>{_ID}))?(?:\s+(?P<notes>.*))?\s*$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True, kw_only=True)
class AckCommand:
    ticket_id: str


@dataclass(frozen=True, kw_only=True)
class StepCommand:
    ticket_id: str
    step_id: str
    status: Literal["done", "failed"]
    notes: str


Command = AckCommand | StepCommand


def parse_command(text: str) -> Command | None:
    match = _COMMAND.fullmatch(text)
    if match is None:
        return None
    verb = match["verb"].lower()
    if verb == "ack":
        return AckCommand(ticket_id=match["ticket"])
    if match["step"] is None:
        return None
    return StepCommand(ticket_id=match["ticket"], step_id=match["step"],
                       status="done" if verb == "done" else "failed",
                       notes=(match["notes"] or "").strip())


# Button/callback payloads: "<code>:<page id as 32 hex>" — 34 bytes, inside Telegram's 64.
_CODES: dict[str, Literal["ack", "step_done", "step_failed"]] = {
    "a": "ack", "d": "step_done", "f": "step_failed"}
_CODE_OF = {kind: code for code, kind in _CODES.items()}


def action_payload(action: ChatAction) -> str:
    return f"{_CODE_OF[action.kind]}:{action.page_id.replace('-', '')}"


def parse_action_payload(payload: str) -> tuple[Literal["ack", "step_done", "step_failed"], str]:
    """``(kind, page_id)``; raises ValueError for anything this bot did not issue."""
    code, _, hex_id = payload.partition(":")
    if code not in _CODES or not re.fullmatch(r"[0-9a-f]{32}", hex_id):
        raise ValueError("not an action payload")
    page_id = f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"
    return _CODES[code], page_id
