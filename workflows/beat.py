"""Beat's scheduler: RedBeat (the schedule and a leader lock in Redis, so that of two Beats one
sends and the other waits), made to live through what Redis does to it.

RedBeat alone dies with ``LockNotOwnedError`` when Redis restarts empty (its lock is gone) and
with a connection error when Redis is away for a moment; a Beat that dies stops the sweeper,
which is what recovers everything else after such an outage. Here:

- Redis unreachable: the tick is skipped and tried again after ``max_interval``;
- our lock gone (Redis restarted empty, or this Beat was frozen past the lock timeout): take
  it again if it is free, and write the static schedule again (an empty Redis lost it too);
  else some other Beat holds it and this one waits as the standby, trying each tick.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
import structlog
from kombu.exceptions import OperationalError
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis

__all__ = ["Scheduler"]

log = structlog.get_logger(__name__)

_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError)


class Scheduler(RedBeatScheduler):  # type: ignore[misc]  # RedBeat ships no type hints
    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self.lock_key and self.lock is None:  # the first acquire failed (no Redis)
                return self._take_lock()
            return float(super().tick(*args, **kwargs))
        except redis.exceptions.LockNotOwnedError:
            log.warning("beat.lock_lost", action="taking it again if it is free")
            return self._take_lock()
        except _UNREACHABLE as exc:
            log.warning("beat.redis_unavailable", error=type(exc).__name__)
            return float(self.max_interval)

    def _take_lock(self) -> float:
        """Take the leader lock without waiting: 0 (tick again now) when taken, else wait as
        the standby for ``max_interval``."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if not lock.acquire(blocking=False):
            self.lock = None  # the standby: the next tick tries again
            return float(self.max_interval)
        self.lock = lock
        self.setup_schedule()  # an empty Redis lost the schedule with the lock
        log.info("beat.lock_taken")
        return 0.0
