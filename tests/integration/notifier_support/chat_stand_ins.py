"""Local HTTP servers that speak just enough of Slack's and Telegram's APIs for the tests.

The real platforms cannot be reached from here, so the adapters are pointed at these: they
record every request and can answer with a rate limit (HTTP 429 with ``Retry-After`` for
Slack, ``parameters.retry_after`` for Telegram) to check the adapters honour it.
"""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Recorded:
    path: str
    body: Any
    at: float


@dataclass
class StandIn:
    """Base: an aiohttp server on a free loopback port, recording requests."""

    requests: list[Recorded] = field(default_factory=list)
    throttle_next: int = 0
    retry_after: int = 1
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = _free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def record(self, path: str, body: Any) -> None:
        self.requests.append(Recorded(path=path, body=body, at=time.monotonic()))

    def to(self, prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    def throttled(self) -> bool:
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return True
        return False


class SlackStandIn(StandIn):
    """Incoming webhooks (``/services/...``) and interactivity ``response_url``s
    (``/actions/...``)."""

    webhook_path = "/services/T0001/B0001/stand-in"

    @property
    def webhook_url(self) -> str:
        return self.url + self.webhook_path

    def response_url(self, n: int) -> str:
        return f"{self.url}/actions/{n}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/{path:.*}", self._webhook)
        app.router.add_post("/actions/{n}", self._response)

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.throttled():
            self.record("429 " + request.path, body)
            return web.Response(status=429, text="rate_limited",
                                headers={"Retry-After": str(self.retry_after)})
        self.record(request.path, body)
        return web.Response(text="ok")

    async def _response(self, request: web.Request) -> web.Response:
        self.record(request.path, await request.json())
        return web.Response(text="ok")


class TelegramStandIn(StandIn):
    """The Bot API methods the adapter uses, for one bot token."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self._ids = itertools.count(100)
        self.failing: set[str] = set()  # Bot API methods answered with HTTP 500

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/bot{token}/{method}", self._method)

    def calls(self, method: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == method]

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401,
                                      "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        body = await request.json()
        if method == "sendMessage" and self.throttled():
            self.record(f"429 {method}", body)
            return web.json_response(
                {"ok": False, "error_code": 429,
                 "description": f"Too Many Requests: retry after {self.retry_after}",
                 "parameters": {"retry_after": self.retry_after}}, status=429)
        self.record(method, body)
        if method in self.failing:
            return web.json_response({"ok": False, "error_code": 500,
                                      "description": "Internal Server Error"}, status=500)
        if method == "sendMessage":
            return web.json_response({"ok": True, "result": {
                "message_id": next(self._ids), "chat": {"id": int(body["chat_id"])},
                "text": body["text"]}})
        if method == "editMessageText":
            return web.json_response({"ok": True, "result": {
                "message_id": body["message_id"], "chat": {"id": int(body["chat_id"])},
                "text": body["text"]}})
        if method == "answerCallbackQuery":
            return web.json_response({"ok": True, "result": True})
        return web.json_response({"ok": False, "error_code": 404,
                                  "description": "Not Found"}, status=404)
