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

from core.runtime import redis_url
from domain.errors import RetryableError

__all__ = [
    "LockBusy", "OrderLock", "count_delivery", "order_lock", "redis_lock",
    "redis_lost_its_data",
]  # fmt: skip

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


#: set once in Redis and never expired: when it is gone, Redis restarted without its data (or
#: was flushed), and every message, chord counter and lock it held went with it
EPOCH_KEY = "ordersync:epoch"


def redis_lost_its_data() -> bool:
    """True the first time it is asked after Redis came up empty (and on a new deployment):
    the caller then treats all unfinished work as lost instead of waiting for it to look stuck."""
    return bool(_scripts(redis_url()).client.set(EPOCH_KEY, "1", nx=True))


#: deliveries of one message whose worker died (``count_delivery``), by task id; kept a day
DELIVERIES_KEY = "ordersync:deliveries:"
DELIVERIES_TTL_S = 86_400


def count_delivery(task_id: str) -> int:
    """One more delivery of the message ``task_id``: how many so far."""
    client = _scripts(redis_url()).client
    key = DELIVERIES_KEY + task_id
    with client.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, DELIVERIES_TTL_S)
        count, _ = pipe.execute()
    return int(count)


class LockBusy(RetryableError):
    """Another worker holds this order step; the task retries later (the order never fails)."""


class _Scripts:
    """One client per Redis URL and the lock scripts registered on it: they run by SHA
    (``EVALSHA``; redis-py loads a script the server does not know yet), not sent each time."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.acquire = self.client.register_script(_ACQUIRE)
        self.extend = self.client.register_script(_EXTEND)
        self.release = self.client.register_script(_RELEASE)


@functools.cache
def _scripts(url: str) -> _Scripts:
    return _Scripts(url)


class OrderLock:
    def __init__(self, scripts: _Scripts, key: str, token: str, ttl_s: int) -> None:
        self.scripts = scripts
        self.key = key
        self.token = token
        self.ttl_ms = ttl_s * 1000

    def acquire(self) -> bool:
        return bool(self.scripts.acquire(keys=[self.key], args=[self.token, self.ttl_ms]))

    def extend(self) -> bool:
        """Push the expiry out again (long steps); False if the lock was lost."""
        return bool(self.scripts.extend(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        self.scripts.release(keys=[self.key], args=[self.token])


@contextmanager
def redis_lock(name: str, token: str, *, ttl_s: int = DEFAULT_TTL_S) -> Iterator[OrderLock]:
    lock = OrderLock(_scripts(redis_url()), f"ordersync:lock:{name}", token, ttl_s)
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
