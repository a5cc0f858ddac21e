"""Getting posts to chat: an outbox in MongoDB and one delivery worker per adapter.

Handlers never talk to a chat platform: they *enqueue* a post (one small insert) and carry on
publishing the customer's ticket updates. A worker per adapter drains its share of the
outbox, so a chat platform that is down, slow or rate-limiting us delays only its own posts —
never a ticket update, never another adapter.

Idempotent on the post id (derived from the causing event id): enqueueing is one insert of
an entry per channel keyed ``<post_id>|<channel>``, and sending is done under a fire-once
claim of the same key (:mod:`services.notifier.claims`), so a redelivered event (its post
queued again and dropped by the worker), a second notifier replica or a restarted worker
never double-posts. Retries back off
exponentially and honour the platform's ``retry_after``; after ``attempts`` tries the post
goes back to the outbox for a later round, after ``rounds`` rounds it is given up (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.events import ChatChannel
from services.notifier.bots.base import (
    ChatBot,
    ChatPost,
    DeliveryError,
    EditUnsupported,
    PermanentDeliveryError,
    RateLimited,
    Sent,
)
from services.notifier.claims import Claims
from services.runtime.group_commit import GroupInsert

log = logging.getLogger(__name__)

OUTBOX = "notifier_outbox"
SENT = "notifier_chat_sent"
MESSAGES = "notifier_chat_messages"

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]

MAX_ROUND_DELAY = timedelta(minutes=10)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _key(post_id: str, channel: ChatChannel) -> str:
    return f"{post_id}|{channel}"


async def with_retries(
    action: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff_s: float,
    sleep: Sleep = asyncio.sleep,
    max_wait_s: float = 300.0,
) -> T:
    """Run ``action`` up to ``attempts`` times: after a :class:`RateLimited` wait what the
    platform asked, after another :class:`DeliveryError` back off exponentially. The last
    error propagates; a :class:`PermanentDeliveryError` propagates at once."""
    for attempt in range(1, attempts + 1):
        try:
            return await action()
        except RateLimited as exc:
            if attempt == attempts:
                raise
            await sleep(min(max(exc.retry_after, 0.0), max_wait_s))
        except DeliveryError:
            if attempt == attempts:
                raise
            await sleep(min(backoff_s * 2 ** (attempt - 1), max_wait_s))
    raise AssertionError("unreachable: attempts >= 1")


class Outbox:
    """Posts waiting for delivery, what was sent where, and which message is which page."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], channels: Sequence[ChatChannel],
                 *, clock: Clock = utc_now, lease: timedelta = timedelta(seconds=60)) -> None:
        self._outbox = db[OUTBOX]
        self._enqueued = GroupInsert(self._outbox)  # posts queued at once: one round trip
        self._messages = db[MESSAGES]
        self.sent_claims = Claims(db, SENT, lease=lease)
        self.channels = tuple(channels)
        self._clock = clock
        self._wake = {c: asyncio.Event() for c in self.channels}

    async def enqueue(self, post: ChatPost, *, channels: Sequence[ChatChannel] | None = None
                      ) -> None:
        now = self._clock()
        targets = [c for c in channels or self.channels if c in self._wake]
        if not targets:
            return
        # One insert for every channel, and no look at what was sent (a collection that
        # grows with history): a redelivered event's post, already sent, is queued again
        # and dropped by the worker, whose send claim says "done" (DeliveryWorker.deliver).
        document = post.to_document()
        await self._enqueued.insert_new([
            {"_id": _key(post.post_id, channel), "channel": channel, "post": document,
             "rounds": 0, "enqueued_at": now, "next_attempt_at": now} for channel in targets])
        for channel in targets:
            self._wake[channel].set()

    async def due(self, channel: ChatChannel, now: datetime, *, limit: int = 50
                  ) -> list[dict[str, Any]]:
        # FerretDB scans for this filter; the outbox holds only undelivered posts, so it stays
        # small (a delivered post's entry is deleted).
        cursor = self._outbox.find({"channel": channel, "next_attempt_at": {"$lte": now}})
        return [doc async for doc in cursor.sort("enqueued_at", 1).limit(limit)]

    async def pending_count(self) -> int:
        return await self._outbox.count_documents({})

    async def done(self, key: str) -> None:
        await self._outbox.delete_one({"_id": key})

    async def later(self, key: str, *, rounds: int, at: datetime) -> None:
        await self._outbox.update_one({"_id": key},
                                      {"$set": {"rounds": rounds, "next_attempt_at": at}})

    async def sent(self, post_id: str, channel: ChatChannel) -> Sent | None:
        doc = await self.sent_claims.get(_key(post_id, channel))
        if doc is None or doc.get("state") != "done" or doc.get("ref") is None:
            return None
        return Sent(ref=str(doc["ref"]), extra=dict(doc.get("extra") or {}))

    async def remember_message(self, channel: ChatChannel, sent: Sent, post: ChatPost) -> None:
        """Map the platform's message to its page, for reactions and replies to it."""
        if not sent.ref:
            return
        with contextlib.suppress(DuplicateKeyError):
            await self._messages.insert_one({"_id": f"{channel}:{sent.ref}",
                                             "post_id": post.post_id, "page_id": post.page_id,
                                             "ticket_id": post.ticket_id})

    async def message(self, channel: ChatChannel, ref: str) -> dict[str, Any] | None:
        return await self._messages.find_one({"_id": f"{channel}:{ref}"})

    async def wait(self, channel: ChatChannel, timeout: float) -> None:
        event = self._wake[channel]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()


class DeliveryWorker:
    """Delivers one adapter's posts, in order, with retries; never raises out of :meth:`run`."""

    def __init__(
        self,
        outbox: Outbox,
        bot: ChatBot,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        rounds: int = 20,
        round_delay_s: float = 5.0,
        clock: Clock = utc_now,
        sleep: Sleep = asyncio.sleep,
        owner: str = "",
        poll_s: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.bot = bot
        self.channel: ChatChannel = bot.channel
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._rounds = rounds
        self._round_delay_s = round_delay_s
        self._clock = clock
        self._sleep = sleep
        self._owner = owner
        self._poll_s = poll_s
        self.delivered = 0
        self.given_up = 0

    async def deliver_due(self) -> int:
        """Deliver every post due now; returns how many were delivered."""
        count = 0
        for item in await self.outbox.due(self.channel, self._clock()):
            if await self.deliver(item):
                count += 1
        return count

    async def deliver(self, item: dict[str, Any]) -> bool:
        key = str(item["_id"])
        post = ChatPost.from_document(item["post"])
        now = self._clock()
        claim = await self.outbox.sent_claims.claim(key, now=now, owner=self._owner)
        if claim.outcome == "done":
            await self.outbox.done(key)
            return False
        if claim.outcome == "held":
            return False
        try:
            sent = await self._send(post)
        except PermanentDeliveryError as exc:
            log.error("chat %s refused post %s for good: %s", self.channel, post.post_id, exc)
            await self.outbox.sent_claims.complete(key, ref=None, failed=type(exc).__name__)
            await self.outbox.done(key)
            self.given_up += 1
            return False
        except (DeliveryError, _NotYet) as exc:
            await self.outbox.sent_claims.release(key)
            rounds = int(item.get("rounds", 0)) + 1
            if rounds >= self._rounds:
                log.error("chat %s: giving up post %s after %d rounds: %s", self.channel,
                          post.post_id, rounds, exc)
                await self.outbox.done(key)
                self.given_up += 1
                return False
            delay = timedelta(seconds=self._round_delay_s * 2 ** (rounds - 1))
            await self.outbox.later(key, rounds=rounds, at=now + min(delay, MAX_ROUND_DELAY))
            log.warning("chat %s: post %s failed (round %d), retrying later: %s",
                        self.channel, post.post_id, rounds, type(exc).__name__)
            return False
        await self.outbox.remember_message(self.channel, sent, post)
        await self.outbox.sent_claims.complete(key, ref=sent.ref, extra=sent.extra)
        await self.outbox.done(key)
        self.delivered += 1
        return True

    async def _send(self, post: ChatPost) -> Sent:
        if post.edit_of is None:
            return await with_retries(lambda: self.bot.post(post), attempts=self._attempts,
                                      backoff_s=self._backoff_s, sleep=self._sleep)
        original = await self.outbox.sent(post.edit_of, self.channel)
        if original is None:
            # The message to edit is not out yet (or could not be sent): try again later.
            raise _NotYet(f"original post {post.edit_of} not delivered yet")
        try:
            await with_retries(lambda: self.bot.edit(original, post), attempts=self._attempts,
                               backoff_s=self._backoff_s, sleep=self._sleep)
        except EditUnsupported:
            return Sent(ref="")
        return original

    async def run(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store may blip; the next round retries
                log.exception("chat %s delivery round failed", self.channel)
            await self.outbox.wait(self.channel, self._poll_s)


class _NotYet(Exception):
    """An edit whose original message is not delivered yet."""
