"""The Slack bot: pages through an incoming webhook, answers through the interactivity endpoint.

Posting: an incoming webhook takes ``{"text", "blocks"}``; each page carries buttons
(Acknowledge; Done / Failed for a manual step) whose ``value`` is the page id. Incoming
webhooks return no message id and cannot be edited later, so the page's message is updated
by answering the button press itself (``response_url`` with ``replace_original``), and an
ack given in another chat leaves the Slack copy as it was (:class:`EditUnsupported`).

Interactivity: Slack signs every request: ``X-Slack-Signature =
v0=HMAC_SHA256(signing_secret, "v0:" + X-Slack-Request-Timestamp + ":" + raw body)``. A
missing, forged or more than five minutes old signature is refused with 401 before the body
is even parsed (a captured request cannot be replayed later). The endpoint answers at once
and sends the engineer's answer to ``response_url`` in the background (Slack wants an HTTP
answer within 3 s; its retries, ``X-Slack-Retry-Num``, are harmless: acks are
compare-and-set).

Text: every text posted is Slack mrkdwn, in which ``<...>`` is markup (``<!channel>``,
``<@U123>``, ``<https://evil|your bank>``). Texts carry values from tickets and servers (a
service name, hardware evidence, an engineer's notes), so each is escaped with
:func:`slack_escape` (``&``, ``<``, ``>``, as Slack documents) after redaction; only the
mentions this bot adds itself are markup.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import aiohttp

from schemas.events import ChatChannel
from services.notifier.acks import EngineerDesk
from services.notifier.bots.base import (
    ChatPost,
    DeliveryError,
    EditUnsupported,
    HttpSession,
    PermanentDeliveryError,
    RateLimited,
    Sent,
)
from services.notifier.bots.dispatch import run_action
from services.notifier.delivery import with_retries
from services.notifier.templates import chat

log = logging.getLogger(__name__)

TOLERANCE_S = 300
Redact = Callable[[str], str]
ACTION_IDS = ("ack", "step_done", "step_failed")


class SlackAuthError(Exception):
    """Why a request to the interactivity endpoint was refused (no detail goes back)."""


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_slack_request(secret: str, headers: Mapping[str, str], body: bytes, *,
                         now: float, tolerance_s: int = TOLERANCE_S) -> None:
    """Raise :class:`SlackAuthError` unless Slack signed ``body`` within ``tolerance_s``."""
    timestamp = headers.get("x-slack-request-timestamp")
    signature = headers.get("x-slack-signature")
    if not timestamp or not signature:
        raise SlackAuthError("unsigned")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SlackAuthError("bad timestamp") from None
    if abs(now - sent_at) > tolerance_s:
        raise SlackAuthError("expired")
    if not hmac.compare_digest(slack_signature(secret, timestamp, body), signature):
        raise SlackAuthError("forged")


def slack_escape(text: str) -> str:
    """``text`` as literal mrkdwn: the three control characters Slack wants escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _blocks(post: ChatPost, text: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}]
    if post.actions:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "action_id": a.kind, "value": a.page_id,
             "text": {"type": "plain_text", "text": a.label},
             **({"style": "primary"} if a.kind == "ack" else {})}
            for a in post.actions]})
    return blocks


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return float(headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0


async def _post_json(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> str:
    try:
        async with session.post(url, json=payload) as resp:
            body = await resp.text()
            if resp.status == 429:
                raise RateLimited(_retry_after(resp.headers), "slack rate limit")
            if resp.status >= 500:
                raise DeliveryError(f"slack HTTP {resp.status}")
            if resp.status >= 400:
                raise PermanentDeliveryError(f"slack refused: HTTP {resp.status}")
            return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryError(f"slack unreachable: {type(exc).__name__}") from exc


class SlackBot:
    def __init__(
        self,
        *,
        webhook_url: str,
        signing_secret: str,
        desk: EngineerDesk,
        redact: Redact = lambda text: text,
        clock_s: Callable[[], float] = time.time,
        timeout_s: float = 10.0,
    ) -> None:
        self._webhook_url = webhook_url
        self._secret = signing_secret
        self._desk = desk
        self._redact = redact
        self._clock_s = clock_s
        self._http = HttpSession(timeout_s)
        self._background: set[asyncio.Task[None]] = set()

    @property
    def channel(self) -> ChatChannel:
        return "slack"

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._http.get()

    async def start(self) -> None:
        self._http.get()

    async def stop(self) -> None:
        for task in list(self._background):
            await task
        await self._http.close()

    async def post(self, post: ChatPost) -> Sent:
        text = slack_escape(self._redact(post.text))
        mentions = post.mentions_for("slack")
        if mentions:
            text += "\n" + " ".join(f"<@{m.identity}>" for m in mentions)
        await _post_json(self.session, self._webhook_url,
                         {"text": text, "blocks": _blocks(post, text)})
        return Sent(ref="")

    async def edit(self, sent: Sent, post: ChatPost) -> None:
        raise EditUnsupported("slack incoming-webhook messages cannot be edited")

    async def handle_interactivity(self, headers: Mapping[str, str], body: bytes
                                   ) -> tuple[int, dict[str, Any]]:
        """Verify, act, and schedule the answer; returns the HTTP status and body."""
        try:
            verify_slack_request(self._secret, headers, body, now=self._clock_s())
        except SlackAuthError as exc:
            log.warning("slack interactivity request refused: %s", exc)
            return 401, {"error": "invalid signature"}
        try:
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            action = payload["actions"][0]
            kind, page_id = action["action_id"], str(action["value"])
            user_id = str(payload["user"]["id"])
            response_url = str(payload["response_url"])
        except (KeyError, IndexError, ValueError, TypeError):
            return 400, {"error": "not a block_actions payload"}
        if kind not in ACTION_IDS:
            return 400, {"error": "unknown action"}
        answer = await run_action(self._desk, kind, page_id, channel="slack", identity=user_id)
        if answer.changed and kind == "ack":
            page = await self._desk.pages.get(page_id)
            closure = await self._desk.closure(page_id)
            text = (chat.closed(page.text, closure.describe())
                    if page is not None and closure is not None else answer.text)
            shown = slack_escape(self._redact(text))
            reply: dict[str, Any] = {"replace_original": True, "text": shown,
                                     "blocks": _blocks(ChatPost(post_id="", ticket_id="",
                                                                text=text), shown)}
        else:
            reply = {"response_type": "ephemeral", "replace_original": False,
                     "text": slack_escape(self._redact(answer.text))}
        task = asyncio.create_task(self._respond(response_url, reply))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return 200, {}

    async def _respond(self, response_url: str, reply: dict[str, Any]) -> None:
        try:
            await with_retries(lambda: _post_json(self.session, response_url, reply),
                               attempts=3, backoff_s=0.5)
        except (DeliveryError, PermanentDeliveryError) as exc:
            log.warning("slack response_url answer failed: %s", exc)
