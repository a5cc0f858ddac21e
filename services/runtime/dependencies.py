"""Riding out an outage of Kafka or the store: what counts as one, and since when it lasts.

A service never exits and never skips a message because the broker or the store went away
for a while: the consumer runtime waits and retries the message (with capped exponential
backoff) for as long as the outage lasts, instead of counting it towards the handler's
attempts and dead-lettering it; background loops retry on their next round. What an
outage is - an error the dependency's own client calls retriable, or a lost connection - is
decided here once (:func:`outage_of`), so every place agrees.

:class:`Dependencies` remembers, per dependency, whether it is up and since when, with the
last error: ``/healthz`` reports it (which dependency, since when, why), probes and every
failure seen by a handler update it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError
from aiokafka.errors import KafkaTimeoutError as AioKafkaTimeoutError
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
)

log = logging.getLogger(__name__)

Dependency = Literal["kafka", "mongodb"]

_MONGO = (ConnectionFailure, AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError,
          WaitQueueTimeoutError)


def outage_of(exc: BaseException) -> Dependency | None:
    """The dependency whose outage ``exc`` is (looking through its causes), else None.

    A commit refused after a rebalance is *not* an outage: the message is redelivered to
    whoever owns the partition now, so retrying the commit would never succeed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _MONGO):
            return "mongodb"
        if isinstance(current, CommitFailedError):
            return None
        if isinstance(current, KafkaConnectionError | AioKafkaTimeoutError):
            return "kafka"
        if isinstance(current, KafkaError) and getattr(current, "retriable", False):
            return "kafka"
        current = current.__cause__ or current.__context__
    return None


@dataclass(frozen=True, kw_only=True)
class Status:
    ok: bool
    since: datetime
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "since": self.since.isoformat(), "error": self.error}


class Dependencies:
    """Up or down, since when, and why, for each dependency of one process."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._started = clock()
        self._status: dict[str, Status] = {}
        self._logged: dict[str, float] = {}

    def failed(self, name: str, exc: BaseException | str) -> None:
        error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        current = self._status.get(name)
        if current is None or current.ok:
            self._status[name] = Status(ok=False, since=self._clock(), error=error[:300])
            log.warning("%s unavailable: %s; retrying with backoff", name, error[:300])
        else:
            self._status[name] = Status(ok=False, since=current.since, error=error[:300])

    def recovered(self, name: str) -> None:
        current = self._status.get(name)
        if current is not None and current.ok:
            return
        now = self._clock()
        if current is not None:
            log.info("%s available again after %.1fs", name,
                     (now - current.since).total_seconds())
        self._status[name] = Status(ok=True, since=now if current is not None else self._started)

    def status(self, name: str) -> Status:
        return self._status.get(name) or Status(ok=True, since=self._started)

    def down(self) -> dict[str, Status]:
        return {name: s for name, s in self._status.items() if not s.ok}

    def throttled(self, key: str, every_s: float = 30.0) -> bool:
        """True at most once per ``every_s`` per key: for repeating outage log lines."""
        now = time.monotonic()
        if now - self._logged.get(key, -every_s) < every_s:
            return False
        self._logged[key] = now
        return True
