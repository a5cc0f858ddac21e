"""The per-account token bucket behind the HTTP API's 429."""

from __future__ import annotations

from services.intake.ratelimit import RateLimiter


def test_burst_then_refused_with_a_retry_after() -> None:
    limiter = RateLimiter(per_minute=6, burst=3)  # one token every 10 s
    assert [limiter.check("ACC-1", 0.0).allowed for _ in range(3)] == [True] * 3
    refused = limiter.check("ACC-1", 0.0)
    assert not refused.allowed
    assert refused.retry_after_s == 10


def test_tokens_come_back_with_time() -> None:
    limiter = RateLimiter(per_minute=60, burst=1)
    assert limiter.check("ACC-1", 0.0).allowed
    assert not limiter.check("ACC-1", 0.5).allowed
    assert limiter.check("ACC-1", 1.6).allowed


def test_accounts_have_their_own_buckets() -> None:
    limiter = RateLimiter(per_minute=1, burst=1)
    assert limiter.check("ACC-1", 0.0).allowed
    assert not limiter.check("ACC-1", 0.0).allowed
    assert limiter.check("ACC-2", 0.0).allowed


def test_the_bucket_table_is_bounded() -> None:
    limiter = RateLimiter(per_minute=1, burst=1, max_keys=100)
    for i in range(10_000):
        limiter.check(f"made-up-{i}", 0.0)
    assert len(limiter._buckets) == 100


def test_retry_after_is_at_least_one_second() -> None:
    limiter = RateLimiter(per_minute=6000, burst=1)
    limiter.check("ACC-1", 0.0)
    assert limiter.check("ACC-1", 0.0).retry_after_s == 1
