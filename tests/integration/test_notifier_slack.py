"""The Slack adapter: pages through an incoming webhook, buttons through the real FastAPI
interactivity endpoint (in-process ASGI). Slack itself cannot be reached from the tests: a
local HTTP server that speaks its webhook and ``response_url`` API stands in for it."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

from chat_stand_ins import SlackStandIn
from notifier_factories import manual_step, submitted
from notifier_harness import Stack, module_topics, notifier_stack, settings_for
from polling import eventually

from schemas import EngineerAcknowledged, ManualStepCompleted, TicketUpdated
from services.notifier.acks import Engineer
from services.notifier.bots.slack import slack_signature

pytestmark = pytest.mark.integration

SIGNING_SECRET = "slack-signing-secret-for-tests-0123456789"


@pytest.fixture(scope="module")
async def slack() -> AsyncIterator[SlackStandIn]:
    stand_in = SlackStandIn()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
                slack: SlackStandIn) -> AsyncIterator[Stack]:
    async with module_topics(kafka_bootstrap, topic_prefix) as prefix:
        settings = settings_for(
            kafka_bootstrap, real_parts.mongodb_uri, prefix, f"{database_name}_notifier_slack",
            slack_webhook_url=slack.webhook_url, slack_signing_secret=SIGNING_SECRET)
        async with notifier_stack(settings) as running:
            for n, user in ((1, "U0000001"), (2, "U0000002")):
                await running.service.directory.register(Engineer(
                    engineer_id=f"ENG-S{n}", display_name=f"Slacker {n}", tier=1,
                    identities={"slack": user}))
            yield running


@pytest.fixture
async def endpoint(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    assert stack.service.http_app is not None
    transport = httpx.ASGITransport(app=stack.service.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:
        yield client


def press(user: str, action: str, page_id: str, response_url: str) -> bytes:
    payload = {"type": "block_actions", "user": {"id": user, "username": user},
               "actions": [{"action_id": action, "value": page_id, "type": "button"}],
               "response_url": response_url, "container": {"type": "message"}}
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed(body: bytes, *, at: float | None = None, secret: str = SIGNING_SECRET
           ) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {"X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": slack_signature(secret, timestamp, body),
            "Content-Type": "application/x-www-form-urlencoded"}


async def page_posted(slack: SlackStandIn, ticket_id: str) -> dict[str, Any]:
    await eventually(lambda: any(ticket_id in r.body["text"]
                                 for r in slack.to(SlackStandIn.webhook_path)))
    return next(r.body for r in slack.to(SlackStandIn.webhook_path) if ticket_id in r.body["text"])


async def test_pages_go_out_through_the_webhook_honouring_429_against_local_slack_api_stand_in(
    stack: Stack, slack: SlackStandIn,
) -> None:
    slack.throttle_next, slack.retry_after = 1, 1
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    message = await page_posted(slack, ticket.ticket_id)
    throttled = slack.to("429 ")
    delivered = next(r for r in slack.to(SlackStandIn.webhook_path)
                     if ticket.ticket_id in r.body["text"])
    assert len(throttled) == 1
    assert delivered.at - throttled[0].at >= 0.95  # waited what Slack asked
    [button] = message["blocks"][1]["elements"]
    assert (button["action_id"], button["value"]) == ("ack", str(ticket.event_id))
    assert "<@U0000001>" in message["text"]  # tier 1 mentioned


async def test_a_signed_button_press_acks_once_against_local_slack_api_stand_in(
    stack: Stack, slack: SlackStandIn, endpoint: httpx.AsyncClient,
) -> None:
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    await page_posted(slack, ticket.ticket_id)
    page = str(ticket.event_id)
    body = press("U0000001", "ack", page, slack.response_url(1))
    answer = await endpoint.post("/slack/interactivity", content=body, headers=signed(body))
    assert answer.status_code == 200
    [ack] = await stack.bus.wait(ticket.ticket_id, EngineerAcknowledged)
    assert (ack.engineer_id, ack.channel) == ("ENG-S1", "slack")
    await eventually(lambda: bool(slack.to("/actions/1")))
    replaced = slack.to("/actions/1")[0].body
    assert replaced["replace_original"] is True
    assert "Acknowledged by Slacker 1 via slack" in replaced["text"]

    second = press("U0000002", "ack", page, slack.response_url(2))
    retried = await endpoint.post("/slack/interactivity", content=second,
                                  headers={**signed(second), "X-Slack-Retry-Num": "1"})
    assert retried.status_code == 200
    await eventually(lambda: bool(slack.to("/actions/2")))
    polite = slack.to("/actions/2")[0].body
    assert polite["response_type"] == "ephemeral"
    assert polite["replace_original"] is False
    assert "already acknowledged by Slacker 1" in polite["text"]
    await stack.bus.settle()
    assert len(stack.bus.of(ticket.ticket_id, EngineerAcknowledged)) == 1


async def test_a_manual_step_done_button_reports_it_against_local_slack_api_stand_in(
    stack: Stack, slack: SlackStandIn, endpoint: httpx.AsyncClient,
) -> None:
    ticket = submitted(at=datetime.now(UTC))
    step = manual_step(ticket, at=datetime.now(UTC), step_id="dc-1", method="datacenter")
    await stack.bus.publish(ticket)
    await stack.bus.publish(step)
    await stack.bus.wait(ticket.ticket_id, TicketUpdated, 2)  # acknowledgement, engineer step

    async def step_page() -> bool:
        return any("Manual step dc-1" in r.body["text"]
                   for r in slack.to(SlackStandIn.webhook_path))

    await eventually(step_page)
    message = next(r.body for r in slack.to(SlackStandIn.webhook_path)
                   if "Manual step dc-1" in r.body["text"])
    assert [b["action_id"] for b in message["blocks"][1]["elements"]] == [
        "ack", "step_done", "step_failed"]
    body = press("U0000002", "step_done", str(step.event_id), slack.response_url(3))
    assert (await endpoint.post("/slack/interactivity", content=body,
                                headers=signed(body))).status_code == 200
    [report] = await stack.bus.wait(ticket.ticket_id, ManualStepCompleted)
    assert (report.step_id, report.status, report.engineer_id) == ("dc-1", "done", "ENG-S2")


async def test_unsigned_expired_and_forged_presses_are_refused_against_local_slack_api_stand_in(
    stack: Stack, slack: SlackStandIn, endpoint: httpx.AsyncClient,
) -> None:
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    await page_posted(slack, ticket.ticket_id)
    body = press("U0000001", "ack", str(ticket.event_id), slack.response_url(9))
    attempts = {
        "unsigned": {"Content-Type": "application/x-www-form-urlencoded"},
        "expired": signed(body, at=time.time() - 301),
        "forged": signed(body, secret="someone-elses-secret"),
        "replayed onto another body": signed(b"payload=%7B%7D"),
    }
    for name, headers in attempts.items():
        answer = await endpoint.post("/slack/interactivity", content=body, headers=headers)
        assert answer.status_code == 401, name
    await stack.bus.settle()
    assert stack.bus.of(ticket.ticket_id, EngineerAcknowledged) == []
    assert slack.to("/actions/9") == []


async def test_ticket_values_cannot_become_slack_markup_against_local_slack_api_stand_in(
    stack: Stack, slack: SlackStandIn,
) -> None:
    # A service name is the customer's text: "<!channel>" must not page the whole channel,
    # nor "<https://evil.example|bank>" become a disguised link.
    ticket = submitted(at=datetime.now(UTC), text="<!channel>&<https://evil.example|bank>")
    await stack.bus.publish(ticket)
    message = await page_posted(slack, ticket.ticket_id)
    for text in (message["text"], message["blocks"][0]["text"]["text"]):
        assert "<!channel>" not in text
        assert "<https://evil" not in text
        assert "web-&lt;!channel&gt;&amp;&lt;https://evil.example|bank&gt;" in text
    assert "<@U0000001>" in message["text"]  # the bot's own mentions stay markup
