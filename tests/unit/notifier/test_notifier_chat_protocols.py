"""Chat-side rules that need no platform: commands, button payloads, Slack signatures,
Telegram's secret token and keyboard limits, and delivery retries."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.bots.base import (
    ChatAction,
    ChatPost,
    DeliveryError,
    PermanentDeliveryError,
    RateLimited,
)
from services.notifier.bots.commands import (
    AckCommand,
    StepCommand,
    action_payload,
    parse_action_payload,
    parse_command,
)
from services.notifier.bots.slack import SlackAuthError, slack_signature, verify_slack_request
from services.notifier.bots.telegram import MAX_CALLBACK_DATA, keyboard
from services.notifier.delivery import with_retries

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_700_000_000


def test_text_commands() -> None:
    assert parse_command("ack HD-1") == AckCommand(ticket_id="HD-1")
    assert parse_command("/ack@intervention_bot HD-20261122-0001") == AckCommand(
        ticket_id="HD-20261122-0001")
    assert parse_command("done HD-1 step-3 rebooted from the console, GRUB fixed") == StepCommand(
        ticket_id="HD-1", step_id="step-3", status="done",
        notes="rebooted from the console, GRUB fixed")
    assert parse_command("FAILED HD-1 step-3") == StepCommand(
        ticket_id="HD-1", step_id="step-3", status="failed", notes="")
    for chatter in ("ack", "done HD-1", "please ack HD-1", "acknowledged", "ack HD-1; rm -rf /"):
        assert parse_command(chatter) is None, chatter


@given(st.uuids(), st.sampled_from(["ack", "step_done", "step_failed"]))
def test_button_payloads_fit_telegram_and_round_trip(page: uuid.UUID, kind: str) -> None:
    action = ChatAction(kind=kind, label="x", page_id=str(page))  # type: ignore[arg-type]
    payload = action_payload(action)
    assert len(payload.encode()) <= MAX_CALLBACK_DATA
    assert parse_action_payload(payload) == (kind, str(page))


def test_foreign_payloads_are_refused() -> None:
    for payload in ("", "a:", "x:" + "0" * 32, "a:" + "g" * 32, "a:" + "0" * 31):
        with pytest.raises(ValueError, match="not an action payload"):
            parse_action_payload(payload)


def test_telegram_keyboard_offers_the_page_actions() -> None:
    page = str(uuid.uuid4())
    post = ChatPost(post_id="p", ticket_id="HD-1", text="t", page_id=page, actions=(
        ChatAction(kind="ack", label="Acknowledge", page_id=page),
        ChatAction(kind="step_done", label="Done", page_id=page)))
    buttons = keyboard(post)["inline_keyboard"][0]
    assert [b["text"] for b in buttons] == ["Acknowledge", "Done"]
    assert all(len(b["callback_data"].encode()) <= 64 for b in buttons)


def _signed(body: bytes, *, at: int = NOW, secret: str = SECRET) -> dict[str, str]:
    return {"x-slack-request-timestamp": str(at),
            "x-slack-signature": slack_signature(secret, str(at), body)}


def test_slack_signature_matches_slacks_documented_example() -> None:
    # The example from Slack's "Verifying requests from Slack" guide.
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
            b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
            b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
            b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
            b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    assert slack_signature(SECRET, "1531420618", body) == (
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503")


def test_slack_requests_signed_recently_pass_and_others_are_refused() -> None:
    body = b"payload=%7B%7D"
    verify_slack_request(SECRET, _signed(body), body, now=NOW + 299)
    cases = {
        "unsigned": {},
        "expired": _signed(body, at=NOW - 301),
        "forged": _signed(body, secret="not-the-secret"),
        "bad timestamp": {"x-slack-request-timestamp": "soon", "x-slack-signature": "v0=00"},
    }
    for reason, headers in cases.items():
        with pytest.raises(SlackAuthError, match=reason):
            verify_slack_request(SECRET, headers, body, now=NOW)
    with pytest.raises(SlackAuthError, match="forged"):
        verify_slack_request(SECRET, _signed(body), body + b"&tampered=1", now=NOW)


async def test_retries_honour_retry_after_and_back_off_otherwise() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    outcomes: list[Exception | str] = [RateLimited(7), DeliveryError("5xx"),
                                       DeliveryError("5xx"), "sent"]

    async def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert await with_retries(flaky, attempts=5, backoff_s=0.5, sleep=sleep) == "sent"
    assert waits == [7, 1.0, 2.0]  # the platform's wait, then 0.5 x 2^(n-1)


async def test_retries_give_up_after_attempts_and_never_retry_a_permanent_refusal() -> None:
    calls = 0

    async def sleep(seconds: float) -> None:
        return None

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise DeliveryError("down")

    with pytest.raises(DeliveryError):
        await with_retries(down, attempts=3, backoff_s=0, sleep=sleep)
    assert calls == 3

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise PermanentDeliveryError("403")

    calls = 0
    with pytest.raises(PermanentDeliveryError):
        await with_retries(refused, attempts=3, backoff_s=0, sleep=sleep)
    assert calls == 1


def test_slack_text_escapes_its_three_control_characters() -> None:
    from services.notifier.bots.slack import slack_escape

    assert slack_escape("<!channel> & <https://x|y>") == \
        "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"


@pytest.mark.parametrize(("field", "variable"), [
    ("slack_signing_secret", "SLACK_SIGNING_SECRET"),
    ("telegram_webhook_secret", "TELEGRAM_WEBHOOK_SECRET"),
])
@pytest.mark.parametrize("value", ["", "   ", "short-secret"])
def test_empty_or_short_chat_secrets_stop_the_notifier_naming_the_variable(
        field: str, variable: str, value: str) -> None:
    from services.notifier.settings import NotifierSettings
    from services.runtime.settings import SettingsError

    with pytest.raises(SettingsError, match=variable) as caught:
        NotifierSettings(**{field: value})
    assert value.strip() == "" or value not in str(caught.value)
    assert NotifierSettings(**{field: SECRET}).model_dump()[field] is not None
