"""A clock that moves only when slept on: rate-limit waits are asserted, never spent."""

from __future__ import annotations

import time as _time

__all__ = ["FakeTime"]


class FakeTime:
    """``clock()`` / ``time()`` read it, ``sleep(s)`` records the wait and moves it on, so one
    instance can stand for the limiter's clock, a simulator's clock and the client's sleep."""

    def __init__(self, start: float | None = None) -> None:
        self.now = _time.monotonic() if start is None else start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
