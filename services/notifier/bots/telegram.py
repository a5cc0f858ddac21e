"""The Telegram bot: Bot API posts with inline keyboards, answers through a webhook.

Posting: ``sendMessage`` to the on-call chat with an inline keyboard whose ``callback_data``
is ``<code>:<page id hex>`` (34 bytes; Telegram allows 64). Edits: ``editMessageText``.
A ``429`` carries ``parameters.retry_after``, which the delivery retries honour.

Webhook: Telegram sends the secret given to ``setWebhook`` in
``X-Telegram-Bot-Api-Secret-Token``; a request without it or with another value is refused
with 401 (compared in constant time). A button press (``callback_query``) is answered with
``answerCallbackQuery`` (the engineer's toast: acknowledged, or who was first) and the page's
message is edited by the delivery worker like in every chat; ``/ack``, ``/done`` and
``/failed`` text commands are answered in the chat.

Once the action has run (the ack recorded, the report published), the webhook answers 200
even if the answer to the engineer cannot be sent: a 5xx would make Telegram deliver the
update again, and the engineer would see "someone else was first" for their own press.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from schemas.events import ChatChannel
from services.notifier.acks import EngineerDesk
from services.notifier.bots.base import (
    ChatPost,
    DeliveryError,
    HttpSession,
    PermanentDeliveryError,
    RateLimited,
    Sent,
)
from services.notifier.bots.commands import action_payload, parse_action_payload, parse_command
from services.notifier.bots.dispatch import run_action, run_command
from services.notifier.delivery import with_retries

log = logging.getLogger(__name__)

SECRET_HEADER = "x-telegram-bot-api-secret-token"  # noqa: S105 (a header name)
MAX_CALLBACK_DATA = 64
Redact = Callable[[str], str]


def keyboard(post: ChatPost) -> dict[str, Any]:
    buttons = []
    for action in post.actions:
        data = action_payload(action)
        if len(data.encode()) > MAX_CALLBACK_DATA:
            raise ValueError("callback_data exceeds Telegram's 64 bytes")
        buttons.append({"text": action.label, "callback_data": data})
    return {"inline_keyboard": [buttons] if buttons else []}


class TelegramBot:
    def __init__(
        self,
        *,
        api_url: str,
        token: str,
        chat_id: str,
        webhook_secret: str,
        desk: EngineerDesk,
        redact: Redact = lambda text: text,
        timeout_s: float = 10.0,
    ) -> None:
        self._base = f"{api_url.rstrip('/')}/bot{token}"
        self._chat_id = chat_id
        self._secret = webhook_secret
        self._desk = desk
        self._redact = redact
        self._http = HttpSession(timeout_s)

    @property
    def channel(self) -> ChatChannel:
        return "telegram"

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._http.get()

    async def start(self) -> None:
        self._http.get()

    async def stop(self) -> None:
        await self._http.close()

    async def call(self, method: str, payload: dict[str, Any]) -> Any:
        """One Bot API call; the result, or :class:`RateLimited` / delivery errors."""
        try:
            async with self.session.post(f"{self._base}/{method}", json=payload) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {}
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The URL holds the bot token: name the error class only.
            raise DeliveryError(f"telegram unreachable: {type(exc).__name__}") from None
        if status == 429 or data.get("error_code") == 429:
            retry = (data.get("parameters") or {}).get("retry_after", 1)
            raise RateLimited(float(retry), "telegram rate limit")
        if status >= 500:
            raise DeliveryError(f"telegram HTTP {status}")
        if status >= 400 or not data.get("ok"):
            raise PermanentDeliveryError(f"telegram refused {method}: HTTP {status}")
        return data.get("result")

    async def post(self, post: ChatPost) -> Sent:
        result = await self.call("sendMessage", {
            "chat_id": self._chat_id, "text": self._text(post),
            "reply_markup": keyboard(post), "disable_web_page_preview": True})
        return Sent(ref=f"{result['chat']['id']}:{result['message_id']}")

    async def edit(self, sent: Sent, post: ChatPost) -> None:
        chat_id, _, message_id = sent.ref.rpartition(":")
        await self.call("editMessageText", {
            "chat_id": chat_id, "message_id": int(message_id), "text": self._text(post),
            "reply_markup": keyboard(post)})

    def _text(self, post: ChatPost) -> str:
        text = self._redact(post.text)
        mentions = post.mentions_for("telegram")
        if mentions:
            text += "\n" + " ".join(m.display_name for m in mentions)
        return text[:4096]

    def authentic(self, headers: Mapping[str, str]) -> bool:
        given = headers.get(SECRET_HEADER)
        return given is not None and hmac.compare_digest(given.encode(), self._secret.encode())

    async def handle_update(self, headers: Mapping[str, str], update: Any) -> int:
        """Handle one webhook update; returns the HTTP status to answer with."""
        if not self.authentic(headers):
            log.warning("telegram webhook request without the right secret token refused")
            return 401
        if not isinstance(update, dict):
            return 400
        if isinstance(update.get("callback_query"), dict):
            await self._on_callback(update["callback_query"])
        elif isinstance(update.get("message"), dict):
            await self._on_message(update["message"])
        return 200

    async def _on_callback(self, query: dict[str, Any]) -> None:
        try:
            kind, page_id = parse_action_payload(str(query.get("data", "")))
            user = str(query["from"]["id"])
        except (ValueError, KeyError, TypeError):
            return
        answer = await run_action(self._desk, kind, page_id, channel="telegram", identity=user)
        await self._answer("answerCallbackQuery", {
            "callback_query_id": query.get("id"), "text": self._redact(answer.text)[:200],
            "show_alert": not answer.changed})

    async def _on_message(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        command = parse_command(text) if isinstance(text, str) else None
        sender = (message.get("from") or {}).get("id")
        if command is None or sender is None:
            return
        answer = await run_command(self._desk, command, channel="telegram",
                                   identity=str(sender))
        chat_id = (message.get("chat") or {}).get("id", self._chat_id)
        await self._answer("sendMessage", {
            "chat_id": chat_id, "text": self._redact(answer.text),
            "reply_to_message_id": message.get("message_id")})

    async def _answer(self, method: str, payload: dict[str, Any]) -> None:
        """Tell the engineer how their action went. The action itself has run, so a failure
        here is logged, never turned into an error answer that makes Telegram resend."""
        try:
            await with_retries(lambda: self.call(method, payload), attempts=3, backoff_s=0.5)
        except (DeliveryError, PermanentDeliveryError, RateLimited) as exc:
            log.warning("telegram %s failed after the action ran: %s", method, exc)
