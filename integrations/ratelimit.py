"""Token-bucket rate limiting per (account, operation).

Each marketplace documents a rate (requests per second) and a burst per operation; clients seed
a bucket from those numbers and correct it from response headers (``x-amzn-RateLimit-Limit``,
Shopify's ``throttleStatus``). A 429 drains the bucket and pauses it for ``Retry-After``.

Two implementations of one interface:

- ``MemoryRateLimiter``: one process (tests, the sandbox, a single worker).
- ``RedisRateLimiter``: shared by every worker process on every machine, one Lua script per
  acquire so that check-and-take is atomic.

``acquire`` returns how long the caller must wait before sending (0.0 = now) and has already
taken the token for that moment, so concurrent callers queue up instead of stampeding.

Both keep a little under the limit: they refill at ``HEADROOM`` of the documented rate and add
``MARGIN_S`` to every wait. Without it, client and server buckets drain together after the
burst and the client's request lands a few milliseconds before the server's token: a 429, and
a pause that costs far more than the 3% (measured in ``bench/poll_throughput.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["HEADROOM", "MARGIN_S", "Bucket", "MemoryRateLimiter", "RateLimiter", "RedisRateLimiter"]

HEADROOM = 0.97
MARGIN_S = 0.02


@dataclass(frozen=True)
class Bucket:
    rate: float  # tokens added per second
    burst: float  # bucket capacity


class RateLimiter(Protocol):
    def configure(self, key: str, bucket: Bucket) -> None: ...

    def acquire(self, key: str, cost: float = 1.0) -> float: ...

    def pause(self, key: str, seconds: float, resume_tokens: float = 0.0) -> None: ...


class MemoryRateLimiter:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        headroom: float = HEADROOM,
        margin_s: float = MARGIN_S,
    ) -> None:
        self._clock = clock
        self._headroom = headroom
        self._margin_s = margin_s
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        # key → (tokens, at): tokens may go negative = callers already queued for the future
        self._state: dict[str, tuple[float, float]] = {}

    def configure(self, key: str, bucket: Bucket) -> None:
        with self._lock:
            old = self._buckets.get(key)
            self._buckets[key] = bucket
            if old is None:
                self._state[key] = (bucket.burst, self._clock())

    def acquire(self, key: str, cost: float = 1.0) -> float:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return 0.0
            rate = bucket.rate * self._headroom
            now = self._clock()
            tokens, at = self._state.get(key, (bucket.burst, now))
            if now > at:  # refill up to now; ``at`` in the future means paused until then
                tokens, at = min(bucket.burst, tokens + (now - at) * rate), now
            tokens -= cost
            self._state[key] = (tokens, at)
            wait = max(0.0, at - now) + max(0.0, -tokens) / rate
            return wait + self._margin_s if wait > 0 else 0.0

    def pause(self, key: str, seconds: float, resume_tokens: float = 0.0) -> None:
        """Empty the bucket and hold it for ``seconds`` (after a 429 / throttled answer). A
        window-based limit that opens a whole new window passes ``resume_tokens``; after a 429
        with a guessed wait, 0 keeps one more token interval of distance."""
        with self._lock:
            if key not in self._buckets:
                return
            self._state[key] = (resume_tokens, self._clock() + seconds)


_ACQUIRE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then tokens = burst; at = now end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', at)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 3600)
return tostring(math.max(0, at - now) + math.max(0, -tokens) / rate)
"""

_PAUSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'tokens', tonumber(ARGV[2]), 'at', now + tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 3600)
return 1
"""


class RedisRateLimiter:
    """Buckets in Redis (server time, so clocks of worker machines do not matter)."""

    def __init__(
        self,
        redis: Any,
        prefix: str = "ordersync:ratelimit:",
        *,
        headroom: float = HEADROOM,
        margin_s: float = MARGIN_S,
    ) -> None:
        self._headroom = headroom
        self._margin_s = margin_s
        self._redis = redis
        self._prefix = prefix
        self._buckets: dict[str, Bucket] = {}
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._pause = redis.register_script(_PAUSE_LUA)

    def configure(self, key: str, bucket: Bucket) -> None:
        self._buckets[key] = bucket

    def acquire(self, key: str, cost: float = 1.0) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        rate = bucket.rate * self._headroom
        wait = float(self._acquire(keys=[self._prefix + key], args=[rate, bucket.burst, cost]))
        return wait + self._margin_s if wait > 0 else 0.0

    def pause(self, key: str, seconds: float, resume_tokens: float = 0.0) -> None:
        if key in self._buckets:
            self._pause(keys=[self._prefix + key], args=[seconds, resume_tokens])
