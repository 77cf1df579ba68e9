"""A Redis lock per order step: token + TTL + extend. An efficiency measure, not correctness.

It keeps two workers from running the same step of the same order at once (50 duplicate
triggers make one provider call, not 50 that the provider then dedupes). Correctness still
rests on the database: unique constraints, row locks, conditional updates and the order's
version. The lock is per *step*, so the chord's invoice and label run side by side.

The token is the Celery task id: a message redelivered after its worker died carries the same
id, so it takes its own lock back at once instead of waiting for the TTL to run out.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from integrations.errors import RetryableError
from ordersync.runtime import redis_url

__all__ = ["LockBusy", "OrderLock", "order_lock", "redis_lock"]

DEFAULT_TTL_S = 120

# take the lock if free or already ours (re-entrant for a redelivered message)
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LockBusy(RetryableError):
    """Another worker holds this order step; the task retries later (the order never fails)."""


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


class OrderLock:
    def __init__(self, client: redis.Redis, key: str, token: str, ttl_s: int) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = ttl_s * 1000

    def acquire(self) -> bool:
        return bool(self.client.eval(_ACQUIRE, 1, self.key, self.token, self.ttl_ms))

    def extend(self) -> bool:
        """Push the expiry out again (long steps); False if the lock was lost."""
        return bool(self.client.eval(_EXTEND, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.token)


@contextmanager
def redis_lock(name: str, token: str, *, ttl_s: int = DEFAULT_TTL_S) -> Iterator[OrderLock]:
    lock = OrderLock(_client(redis_url()), f"ordersync:lock:{name}", token, ttl_s)
    if not lock.acquire():
        raise LockBusy(f"{name} is running elsewhere", retry_after=1.0)
    try:
        yield lock
    finally:
        lock.release()


def order_lock(
    order_id: int, step: str, token: str, *, ttl_s: int = DEFAULT_TTL_S
) -> contextlib.AbstractContextManager[OrderLock]:
    return redis_lock(f"order:{order_id}:{step}", token, ttl_s=ttl_s)
