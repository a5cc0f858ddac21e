"""The notifier's HTTP endpoints: Slack interactivity and the Telegram webhook.

Thin: each route hands the raw request to its adapter, which verifies it (Slack's signature,
Telegram's secret token) before anything else is read, then answers. Served by uvicorn
inside the notifier process when Slack or Telegram is enabled.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.notifier.bots.slack import SlackBot
from services.notifier.bots.telegram import TelegramBot


def create_http_app(*, slack: SlackBot | None = None, telegram: TelegramBot | None = None
                    ) -> FastAPI:
    app = FastAPI(title="OS Intervention notifier", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if slack is not None:
        bot = slack

        @app.post("/slack/interactivity")
        async def slack_interactivity(request: Request) -> Response:
            # The raw bytes: the signature covers them exactly as sent.
            body = await request.body()
            status, payload = await bot.handle_interactivity(request.headers, body)
            return JSONResponse(payload, status_code=status) if payload else Response(
                status_code=status)

    if telegram is not None:
        tg = telegram

        @app.post("/telegram/webhook")
        async def telegram_webhook(request: Request) -> Response:
            if not tg.authentic(request.headers):
                return Response(status_code=401)
            try:
                update = json.loads(await request.body())
            except ValueError:
                return Response(status_code=400)
            return Response(status_code=await tg.handle_update(request.headers, update))

    return app
