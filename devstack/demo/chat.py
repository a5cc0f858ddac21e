"""The on-call room: a Matrix room with the notifier's bot account and one engineer.

The engineer's side of chat is driven through Synapse's client API only (what a Matrix
client sends), so the demo and the end-to-end tests exercise the same surface engineers use:
the notifier's pages arrive as room messages, and ``ack <ticket>`` acknowledges them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from devstack.demo.synapse import Homeserver, MatrixUser


@dataclass(frozen=True, kw_only=True)
class OnCallRoom:
    homeserver: Homeserver
    room_id: str
    bot: MatrixUser
    engineer: MatrixUser
    engineer_id: str
    engineer_name: str

    def notifier_env(self) -> dict[str, str]:
        """The notifier's Matrix settings (services/notifier/settings.py)."""
        return {
            "MATRIX_HOMESERVER_URL": self.homeserver.url,
            "MATRIX_USER_ID": self.bot.user_id,
            "MATRIX_PASSWORD": self.bot.password,
            "MATRIX_ROOM_ID": self.room_id,
        }

    def say(self, text: str) -> str:
        """The engineer posts ``text`` in the room; returns the event id."""
        answer = self.homeserver.request(
            "PUT", f"/_matrix/client/v3/rooms/{_q(self.room_id)}/send/m.room.message/"
                   f"{uuid.uuid4().hex}",
            {"msgtype": "m.text", "body": text}, token=self.engineer.access_token)
        return str(answer["event_id"])

    def messages(self, limit: int = 500) -> list[dict[str, Any]]:
        """The room's timeline, oldest first, as the engineer's client sees it."""
        answer = self.homeserver.request(
            "GET", f"/_matrix/client/v3/rooms/{_q(self.room_id)}/messages?dir=b&limit={limit}",
            token=self.engineer.access_token)
        return list(reversed(answer.get("chunk", [])))

    def hardware_page_posted(self, ticket_id: str) -> bool:
        """The bot has paged the room about this ticket's hardware escalation."""
        return any(f"Hardware escalation on {ticket_id}" in text for text in self.bot_texts())

    def bot_texts(self) -> list[str]:
        return [str(e.get("content", {}).get("body", "")) for e in self.messages()
                if e.get("sender") == self.bot.user_id and e.get("type") == "m.room.message"]


def _q(value: str) -> str:
    import urllib.parse

    return urllib.parse.quote(value, safe="")


def open_on_call_room(homeserver: Homeserver, *, run: str,
                      engineer_name: str = "Alice") -> OnCallRoom:
    """Register the bot and the engineer, and the engineer's room with the bot invited."""
    bot = homeserver.register(f"notifier-{run}")
    engineer = homeserver.register(f"{engineer_name.lower()}-{run}")
    room_id = homeserver.create_room(engineer, invite=[bot], name="on-call")
    return OnCallRoom(homeserver=homeserver, room_id=room_id, bot=bot, engineer=engineer,
                      engineer_id=f"ENG-{run}", engineer_name=engineer_name)
