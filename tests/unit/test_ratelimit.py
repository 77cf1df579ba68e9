"""The in-memory token bucket: burst, steady rate, queued callers, pause after a 429."""

from __future__ import annotations

import pytest

from integrations.ratelimit import Bucket, MemoryRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_through_then_callers_queue_at_the_rate() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    limiter.configure("k", Bucket(rate=2.0, burst=3))

    waits = [limiter.acquire("k") for _ in range(5)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.5)
    assert waits[4] == pytest.approx(1.0)  # queued behind the fourth, not on top of it


def test_tokens_refill_with_time_up_to_the_burst() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    limiter.configure("k", Bucket(rate=1.0, burst=2))
    limiter.acquire("k")
    limiter.acquire("k")
    clock.now += 100  # long idle: refills to burst, not to 100

    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_pause_holds_every_caller_until_it_ends() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    limiter.configure("k", Bucket(rate=10.0, burst=10))

    limiter.pause("k", 5.0)

    assert limiter.acquire("k") == pytest.approx(5.1)
    clock.now += 6.0
    assert limiter.acquire("k") == 0.0


def test_an_unconfigured_key_is_not_limited() -> None:
    assert MemoryRateLimiter().acquire("other") == 0.0
