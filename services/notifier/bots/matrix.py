"""The Matrix bot (the reference adapter), on mautrix's client API.

Posts pages to the on-call room, edits them (``m.replace``) once acknowledged, and listens to
the room: a reaction to a page (any emoji) acknowledges it, ``ack <ticket>`` acknowledges the
ticket's open pages, ``done|failed <ticket> <step> [notes]`` reports a manual step. The
bot answers in the room, as a reply.

Durability: the sync token is stored in MongoDB *after* the batch's events were handled
(mautrix's own Syncer stores it before), so a crash re-reads the batch instead of losing an
engineer's ack; handling twice is harmless because acks are compare-and-set. The first start
skips the room's history. Posts use a transaction id derived from the post id on a fixed
device, so Synapse itself drops a retried send (idempotent on the event that caused it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import logging
from collections.abc import Callable
from typing import Any

from mautrix.client import ClientAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError, MLimitExceeded
from mautrix.types import (
    DeviceID,
    EventID,
    EventType,
    Format,
    MessageType,
    RoomID,
    SyncToken,
    TextMessageEventContent,
    UserID,
)
from pymongo.asynchronous.database import AsyncDatabase

from schemas.events import ChatChannel
from services.notifier.acks import Answer, EngineerDesk
from services.notifier.bots.base import (
    ChatPost,
    DeliveryError,
    PermanentDeliveryError,
    RateLimited,
    Sent,
)
from services.notifier.bots.commands import parse_command
from services.notifier.bots.dispatch import run_command
from services.notifier.delivery import Outbox, with_retries

log = logging.getLogger(__name__)

CHAT_STATE = "notifier_chat_state"
Redact = Callable[[str], str]


def _txn(prefix: str, post_id: str) -> str:
    return prefix + hashlib.sha256(post_id.encode()).hexdigest()[:40]


def _html(text: str) -> str:
    # Code spans for the `ack HD-1` hints; everything else escaped, newlines kept.
    parts = html.escape(text).split("`")
    marked = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    return marked.replace("\n", "<br>")


class MatrixBot:
    def __init__(
        self,
        *,
        homeserver_url: str,
        user_id: str,
        room_id: str,
        desk: EngineerDesk,
        outbox: Outbox,
        db: AsyncDatabase[dict[str, Any]],
        password: str | None = None,
        access_token: str | None = None,
        device_id: str = "intervention-notifier",
        redact: Redact = lambda text: text,
        on_secret: Callable[[str], None] = lambda secret: None,
        sync_timeout_ms: int = 30_000,
    ) -> None:
        if password is None and access_token is None:
            raise ValueError("MatrixBot needs a password or an access token")
        self._url = homeserver_url
        self._user_id = UserID(user_id)
        self._room_id = RoomID(room_id)
        self._password = password
        self._token = access_token
        self._device_id = device_id
        self._desk = desk
        self._outbox = outbox
        self._state = db[CHAT_STATE]
        self._redact = redact
        # Told the access token a password login returns, so logs and errors never show it.
        self._on_secret = on_secret
        self._sync_timeout_ms = sync_timeout_ms
        self._client: ClientAPI | None = None
        self._task: asyncio.Task[None] | None = None
        self.handled = 0  # interactions handled, for tests and metrics

    @property
    def channel(self) -> ChatChannel:
        return "matrix"

    @property
    def client(self) -> ClientAPI:
        if self._client is None:
            raise RuntimeError("MatrixBot is not started")
        return self._client

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        client = ClientAPI(mxid=self._user_id, base_url=self._url, token=self._token or "",
                           device_id=DeviceID(self._device_id), default_retry_count=0)
        self._client = client
        if self._password is not None:
            await client.login(password=self._password, device_id=self._device_id,
                               device_name="OS Intervention notifier")
            if client.api.token:
                self._on_secret(client.api.token)
        await client.join_room_by_id(self._room_id)
        filter_id = await client.create_filter({  # type: ignore[arg-type]
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "room": {
                "rooms": [self._room_id],
                "timeline": {"types": ["m.room.message", "m.reaction"], "limit": 100},
                "state": {"lazy_load_members": True, "types": []},
                "ephemeral": {"not_types": ["*"]},
                "account_data": {"not_types": ["*"]},
            },
        })
        since = await self._load_token()
        if since is None:
            # First start: the room's history was never ours to act on.
            first = await client.sync(timeout=0, filter_id=filter_id)
            since = str(first["next_batch"])
            await self._save_token(since)
        self._task = asyncio.create_task(self._sync_forever(since, filter_id),
                                         name="matrix-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.api.session.close()
            self._client = None

    # -- outgoing ------------------------------------------------------------------------------

    async def post(self, post: ChatPost) -> Sent:
        content = self._content(post)
        event_id = await self._send(content, txn_id=_txn("p", post.post_id))
        return Sent(ref=str(event_id))

    async def edit(self, sent: Sent, post: ChatPost) -> None:
        content = self._content(post)
        content.set_edit(EventID(sent.ref))
        await self._send(content, txn_id=_txn("e", post.post_id))

    async def reply(self, to_event: str, text: str, *, key: str) -> None:
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=self._redact(text))
        content.set_reply(EventID(to_event))
        await with_retries(lambda: self._send(content, txn_id=_txn("r", key)), attempts=3,
                           backoff_s=0.5)

    def _content(self, post: ChatPost) -> TextMessageEventContent:
        text = self._redact(post.text)
        mentions = post.mentions_for("matrix")
        body, formatted = text, _html(text)
        if mentions:
            body += "\n" + " ".join(f"{m.display_name} ({m.identity})" for m in mentions)
            formatted += "<br>" + " ".join(
                f'<a href="https://matrix.to/#/{html.escape(m.identity)}">'
                f"{html.escape(m.display_name)}</a>" for m in mentions)
        content = TextMessageEventContent(msgtype=MessageType.TEXT, body=body,
                                          format=Format.HTML, formatted_body=formatted)
        # Intentional mentions (MSC3952): only the named engineers get notified.
        content["m.mentions"] = {"user_ids": [m.identity for m in mentions]}
        return content

    async def _send(self, content: TextMessageEventContent, *, txn_id: str) -> EventID:
        try:
            return await self.client.send_message_event(self._room_id, EventType.ROOM_MESSAGE,
                                                        content, txn_id=txn_id)
        except MLimitExceeded as exc:
            # mautrix drops Synapse's retry_after_ms; a second is Synapse's usual window.
            raise RateLimited(1.0, "matrix rate limit") from exc
        except MatrixRequestError as exc:
            if exc.http_status >= 500 or exc.http_status in (0, 408):
                raise DeliveryError(f"matrix HTTP {exc.http_status}") from exc
            raise PermanentDeliveryError(f"matrix refused: {exc.errcode}") from exc
        except (MatrixConnectionError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"matrix unreachable: {type(exc).__name__}") from exc

    # -- incoming ------------------------------------------------------------------------------

    async def _sync_forever(self, since: str, filter_id: str) -> None:
        backoff = 1.0
        while True:
            try:
                data = await self.client.sync(since=SyncToken(since), timeout=self._sync_timeout_ms,
                                              filter_id=filter_id)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except (MatrixRequestError, MatrixConnectionError, OSError, TimeoutError) as exc:
                # The homeserver may be restarting: keep trying, more slowly.
                log.warning("matrix sync failed (%s); retrying in %.0fs", type(exc).__name__,
                            backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            backoff = 1.0
            room = data.get("rooms", {}).get("join", {}).get(self._room_id, {})
            for raw in room.get("timeline", {}).get("events", []):
                try:
                    await self._on_event(raw)
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad event must not stop the bot
                    log.exception("matrix event %s could not be handled", raw.get("event_id"))
            since = str(data["next_batch"])
            await self._save_token(since)

    async def _on_event(self, raw: dict[str, Any]) -> None:
        sender = str(raw.get("sender", ""))
        if sender == self._user_id or not sender:
            return
        event_id = str(raw.get("event_id", ""))
        content = raw.get("content") or {}
        relates = content.get("m.relates_to") or {}
        answer: Answer | None = None
        reply_to = event_id
        if raw.get("type") == "m.reaction" and relates.get("rel_type") == "m.annotation":
            target = str(relates.get("event_id", ""))
            message = await self._outbox.message("matrix", target)
            if message is None:
                return  # a reaction to something that is not ours
            reply_to = target
            if message.get("page_id"):
                answer = await self._desk.acknowledge_page(str(message["page_id"]),
                                                           channel="matrix", identity=sender)
            else:
                answer = await self._desk.acknowledge_ticket(str(message["ticket_id"]),
                                                             channel="matrix", identity=sender)
        elif raw.get("type") == "m.room.message" and relates.get("rel_type") != "m.replace":
            body = content.get("body")
            command = parse_command(body) if isinstance(body, str) else None
            if command is None:
                return
            answer = await run_command(self._desk, command, channel="matrix", identity=sender)
        if answer is None:
            return
        self.handled += 1
        await self.reply(reply_to, f"{sender}: {answer.text}", key=f"answer:{event_id}")

    async def _load_token(self) -> str | None:
        doc = await self._state.find_one({"_id": self._state_key})
        return None if doc is None else str(doc["since"])

    async def _save_token(self, since: str) -> None:
        await self._state.replace_one({"_id": self._state_key}, {"since": since}, upsert=True)

    @property
    def _state_key(self) -> str:
        return f"matrix-sync:{self._user_id}:{self._room_id}"

