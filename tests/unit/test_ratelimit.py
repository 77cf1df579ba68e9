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
    limiter = MemoryRateLimiter(clock, headroom=1.0, margin_s=0.0)
    limiter.configure("k", Bucket(rate=2.0, burst=3))

    waits = [limiter.acquire("k") for _ in range(5)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.5)
    assert waits[4] == pytest.approx(1.0)  # queued behind the fourth, not on top of it


def test_tokens_refill_with_time_up_to_the_burst() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock, headroom=1.0, margin_s=0.0)
    limiter.configure("k", Bucket(rate=1.0, burst=2))
    limiter.acquire("k")
    limiter.acquire("k")
    clock.now += 100  # long idle: refills to burst, not to 100

    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_pause_holds_every_caller_until_it_ends() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock, headroom=1.0, margin_s=0.0)
    limiter.configure("k", Bucket(rate=10.0, burst=10))

    limiter.pause("k", 5.0)

    assert limiter.acquire("k") == pytest.approx(5.1)
    clock.now += 6.0
    assert limiter.acquire("k") == 0.0


def test_by_default_it_keeps_a_little_under_the_documented_rate() -> None:
    # the server's bucket refills at exactly the documented rate: arriving on its last
    # millisecond gets a 429, so we wait 3% longer plus a small margin
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    limiter.configure("k", Bucket(rate=1.0, burst=1))
    assert limiter.acquire("k") == 0.0

    assert limiter.acquire("k") == pytest.approx(1 / 0.97 + 0.02)


def test_a_window_limit_resumes_with_the_tokens_the_new_window_gives() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock, headroom=1.0, margin_s=0.0)
    limiter.configure("k", Bucket(rate=2.0, burst=2))
    limiter.pause("k", 1.0, resume_tokens=1.0)

    assert limiter.acquire("k") == pytest.approx(1.0)  # at the window's start, not 0.5 s later
    assert limiter.acquire("k") == pytest.approx(1.5)


def test_an_unconfigured_key_is_not_limited() -> None:
    assert MemoryRateLimiter().acquire("other") == 0.0
