"""The Telegram adapter: Bot API posts with inline keyboards, callbacks through the real
FastAPI webhook (in-process ASGI) guarded by the secret-token header. Telegram itself cannot
be reached from the tests: a local HTTP server that speaks the Bot API stands in for it."""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

from chat_stand_ins import TelegramStandIn
from notifier_factories import submitted
from notifier_harness import Stack, module_topics, notifier_stack, settings_for
from polling import eventually

from schemas import EngineerAcknowledged
from services.notifier.acks import Engineer

pytestmark = pytest.mark.integration

TOKEN = "123456:stand-in-bot-token"
SECRET = "telegram-webhook-secret-for-tests"
CHAT_ID = "-1001234567890"
_updates = itertools.count(1)


@pytest.fixture(scope="module")
async def telegram() -> AsyncIterator[TelegramStandIn]:
    stand_in = TelegramStandIn(TOKEN)
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
                telegram: TelegramStandIn) -> AsyncIterator[Stack]:
    async with module_topics(kafka_bootstrap, topic_prefix) as prefix:
        settings = settings_for(
            kafka_bootstrap, real_parts.mongodb_uri, prefix,
            f"{database_name}_notifier_telegram", telegram_api_url=telegram.url,
            telegram_bot_token=TOKEN, telegram_chat_id=CHAT_ID, telegram_webhook_secret=SECRET)
        async with notifier_stack(settings) as running:
            for n in (1, 2):
                await running.service.directory.register(Engineer(
                    engineer_id=f"ENG-G{n}", display_name=f"Gram {n}", tier=1,
                    identities={"telegram": str(7000 + n)}))
            yield running


@pytest.fixture
async def webhook(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    assert stack.service.http_app is not None
    transport = httpx.ASGITransport(app=stack.service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:
        yield client


def callback(user: int, data: str, message_id: int) -> dict[str, Any]:
    return {"update_id": next(_updates), "callback_query": {
        "id": f"cq-{next(_updates)}", "from": {"id": user, "is_bot": False, "first_name": "E"},
        "data": data, "message": {"message_id": message_id, "chat": {"id": int(CHAT_ID)}}}}


async def posted(telegram: TelegramStandIn, ticket_id: str) -> dict[str, Any]:
    await eventually(lambda: any(ticket_id in c["text"] for c in telegram.calls("sendMessage")))
    return next(c for c in telegram.calls("sendMessage") if ticket_id in c["text"])


async def test_pages_carry_an_inline_keyboard_and_honour_429_against_local_telegram_api_stand_in(
    stack: Stack, telegram: TelegramStandIn,
) -> None:
    telegram.throttle_next, telegram.retry_after = 1, 1
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    message = await posted(telegram, ticket.ticket_id)
    throttled = telegram.to("429 sendMessage")
    delivered = next(r for r in telegram.requests if r.path == "sendMessage"
                     and ticket.ticket_id in r.body["text"])
    assert len(throttled) == 1
    assert delivered.at - throttled[0].at >= 0.95  # waited retry_after
    assert message["chat_id"] == CHAT_ID
    [[button]] = message["reply_markup"]["inline_keyboard"]
    assert button["text"] == "Acknowledge"
    assert len(button["callback_data"].encode()) <= 64
    assert button["callback_data"] == "a:" + ticket.event_id.hex


async def test_a_keyboard_ack_wins_once_and_edits_the_page_against_local_telegram_api_stand_in(
    stack: Stack, telegram: TelegramStandIn, webhook: httpx.AsyncClient,
) -> None:
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    await posted(telegram, ticket.ticket_id)
    data = "a:" + ticket.event_id.hex
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    first = await webhook.post("/telegram/webhook", json=callback(7001, data, 100),
                               headers=headers)
    assert first.status_code == 200
    [ack] = await stack.bus.wait(ticket.ticket_id, EngineerAcknowledged)
    assert (ack.engineer_id, ack.channel) == ("ENG-G1", "telegram")
    toast = telegram.calls("answerCallbackQuery")[-1]
    assert "it is yours, Gram 1" in toast["text"]
    assert toast["show_alert"] is False

    async def edited() -> bool:
        return any("Acknowledged by Gram 1 via telegram" in c["text"]
                   for c in telegram.calls("editMessageText"))

    await eventually(edited)
    edit = next(c for c in telegram.calls("editMessageText") if "Gram 1" in c["text"])
    assert edit["reply_markup"]["inline_keyboard"] == []  # nothing left to press

    second = await webhook.post("/telegram/webhook", json=callback(7002, data, 100),
                                headers=headers)
    assert second.status_code == 200
    polite = telegram.calls("answerCallbackQuery")[-1]
    assert "already acknowledged by Gram 1" in polite["text"]
    assert polite["show_alert"] is True
    command = await webhook.post("/telegram/webhook", headers=headers, json={
        "update_id": next(_updates), "message": {
            "message_id": 555, "from": {"id": 7002}, "chat": {"id": int(CHAT_ID)},
            "text": f"/ack@intervention_bot {ticket.ticket_id}"}})
    assert command.status_code == 200
    reply = telegram.calls("sendMessage")[-1]
    assert reply["reply_to_message_id"] == 555
    assert "already acknowledged by Gram 1" in reply["text"]
    await stack.bus.settle()
    assert len(stack.bus.of(ticket.ticket_id, EngineerAcknowledged)) == 1


async def test_webhook_calls_without_the_secret_are_refused_against_local_telegram_api_stand_in(
    stack: Stack, telegram: TelegramStandIn, webhook: httpx.AsyncClient,
) -> None:
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    await posted(telegram, ticket.ticket_id)
    update = callback(7001, "a:" + ticket.event_id.hex, 100)
    answered = len(telegram.calls("answerCallbackQuery"))
    for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "guess"},
                    {"X-Telegram-Bot-Api-Secret-Token": SECRET + "x"}):
        answer = await webhook.post("/telegram/webhook", json=update, headers=headers)
        assert answer.status_code == 401
    await stack.bus.settle()
    assert stack.bus.of(ticket.ticket_id, EngineerAcknowledged) == []
    assert len(telegram.calls("answerCallbackQuery")) == answered
    # Forged callback data (not issued by this bot) is ignored even with the secret.
    forged = callback(7001, "a:" + "f" * 31, 100)
    answer = await webhook.post("/telegram/webhook", json=forged,
                                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert answer.status_code == 200
    assert len(telegram.calls("answerCallbackQuery")) == answered


async def test_the_webhook_answers_200_once_the_ack_ran_though_the_toast_failed_against_local_telegram_api_stand_in(  # noqa: E501
    stack: Stack, telegram: TelegramStandIn, webhook: httpx.AsyncClient,
) -> None:
    # A 500 would make Telegram resend the update; the resent press would then be told
    # "already acknowledged" by its own ack.
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    await posted(telegram, ticket.ticket_id)
    tried = len(telegram.calls("answerCallbackQuery"))
    telegram.failing.add("answerCallbackQuery")
    try:
        answer = await webhook.post("/telegram/webhook",
                                    json=callback(7001, "a:" + ticket.event_id.hex, 100),
                                    headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    finally:
        telegram.failing.discard("answerCallbackQuery")
    assert answer.status_code == 200
    [ack] = await stack.bus.wait(ticket.ticket_id, EngineerAcknowledged)
    assert ack.engineer_id == "ENG-G1"
    assert len(telegram.calls("answerCallbackQuery")) > tried  # it was tried, and failed
