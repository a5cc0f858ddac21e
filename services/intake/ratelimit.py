"""Per-account rate limit of the HTTP API: a token bucket per customer account.

In memory and per process: it protects this process from one account's flood (a
misbehaving helpdesk retry loop, a script); it is not a quota across replicas, which would
need a shared counter on every request. The bucket table is bounded (least recently used
accounts dropped), so made-up account ids cannot grow memory without limit; a dropped
account merely starts again with a full bucket.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0
    """Whole seconds until the next request would be allowed (for ``Retry-After``)."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, *, per_minute: float, burst: int, max_keys: int = 10_000) -> None:
        if per_minute <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("per_minute must be > 0, burst and max_keys >= 1")
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: str, now: float) -> Decision:
        """Take one token from ``key``'s bucket at monotonic time ``now`` if there is one."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=float(self.burst), updated=now)
                self._buckets[key] = bucket
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return Decision(allowed=True)
            wait = (1.0 - bucket.tokens) / self.rate
            return Decision(allowed=False, retry_after_s=max(1, math.ceil(wait)))
