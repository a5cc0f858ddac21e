"""What every chat adapter is: one Protocol, the post it sends, the errors it raises.

A :class:`ChatPost` is channel-neutral: text, the page it belongs to (what a reaction or an
"Acknowledge" button acknowledges), the actions to offer, the engineers to mention. Each
adapter renders it natively (Matrix text and reactions, Slack blocks and buttons, Telegram
inline keyboards). Engineers' answers come back through the
:class:`~services.notifier.acks.EngineerDesk` the adapter is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from schemas.events import ChatChannel

ActionKind = Literal["ack", "step_done", "step_failed"]


@dataclass(frozen=True, kw_only=True)
class ChatAction:
    kind: ActionKind
    label: str
    page_id: str


@dataclass(frozen=True, kw_only=True)
class Mention:
    channel: ChatChannel
    identity: str
    display_name: str


@dataclass(frozen=True, kw_only=True)
class ChatPost:
    post_id: str
    """Stable id of this post (derived from what caused it): delivery is idempotent on it."""
    ticket_id: str
    text: str
    page_id: str | None = None
    actions: tuple[ChatAction, ...] = ()
    mentions: tuple[Mention, ...] = ()
    edit_of: str | None = None
    """``post_id`` of the earlier post this one replaces (the bot edits its message)."""

    def mentions_for(self, channel: ChatChannel) -> tuple[Mention, ...]:
        return tuple(m for m in self.mentions if m.channel == channel)

    def to_document(self) -> dict[str, Any]:
        return {
            "post_id": self.post_id, "ticket_id": self.ticket_id, "text": self.text,
            "page_id": self.page_id, "edit_of": self.edit_of,
            "actions": [{"kind": a.kind, "label": a.label, "page_id": a.page_id}
                        for a in self.actions],
            "mentions": [{"channel": m.channel, "identity": m.identity,
                          "display_name": m.display_name} for m in self.mentions],
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> ChatPost:
        return cls(
            post_id=doc["post_id"], ticket_id=doc["ticket_id"], text=doc["text"],
            page_id=doc.get("page_id"), edit_of=doc.get("edit_of"),
            actions=tuple(ChatAction(**a) for a in doc.get("actions", ())),
            mentions=tuple(Mention(**m) for m in doc.get("mentions", ())),
        )


@dataclass(frozen=True, kw_only=True)
class Sent:
    """Where a post landed: the platform's message reference (empty when it has none)."""

    ref: str
    extra: dict[str, str] = field(default_factory=dict)


class DeliveryError(Exception):
    """A send that failed and may succeed if retried (network, 5xx)."""


class RateLimited(DeliveryError):
    """The platform asked us to wait ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(f"{message}; retry after {retry_after:g}s")
        self.retry_after = retry_after


class PermanentDeliveryError(Exception):
    """A send the platform refused for good (bad request, forbidden): retrying cannot help."""


class EditUnsupported(PermanentDeliveryError):
    """The platform cannot edit this message (a Slack incoming-webhook post)."""


class ChatBot(Protocol):
    """A chat adapter: posts pages to the on-call channel and edits them."""

    @property
    def channel(self) -> ChatChannel: ...

    async def start(self) -> None:
        """Connect and begin listening for engineers' answers."""

    async def stop(self) -> None: ...

    async def post(self, post: ChatPost) -> Sent:
        """Send ``post``; raise :class:`RateLimited`, :class:`DeliveryError` or
        :class:`PermanentDeliveryError`."""

    async def edit(self, sent: Sent, post: ChatPost) -> None:
        """Replace the message ``sent`` refers to with ``post``."""


class HttpSession:
    """The aiohttp session of a bot that talks to an HTTP API (Slack, Telegram): opened on
    first use, closed by :meth:`close` (and opened again if used after)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
