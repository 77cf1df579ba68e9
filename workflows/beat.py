"""Beat's scheduler: RedBeat (the schedule and a leader lock in Redis, so that of two Beats one
sends and the other waits), made to live through what Redis does to it.

RedBeat alone dies with ``LockNotOwnedError`` when Redis restarts empty (its lock is gone) and
with a connection error when Redis is away for a moment; a Beat that dies stops the sweeper,
which is what recovers everything else after such an outage. Here:

- Redis unreachable: the tick is skipped and tried again after ``max_interval``;
- our lock gone (Redis restarted empty, or this Beat was frozen past the lock timeout): take
  it again if it is free, and write the static schedule again (an empty Redis lost it too);
  else some other Beat holds it and this one waits as the standby, trying each tick.

And it stops when told to. Celery's SIGTERM handler closes the scheduler (releasing the lock)
inside the signal handler, under the feet of whatever the loop was doing, and then raises
``SystemExit``; that exception can be lost (raised inside a ``__del__``, or replaced by the
error of the socket the handler just closed, which Beat logs and goes on from). The loop then
went on with a closed scheduler whose lock was gone, took the lock again and ran on: one stop
in fifty, with a tight schedule, never ended. ``run`` (``ordersync beat``) installs a handler
that only marks the stop and raises; the loop's own ``finally`` closes the scheduler. A closed
scheduler never ticks again, whoever closed it (``celery -A workflows beat`` keeps Celery's
handler).
"""

from __future__ import annotations

from types import FrameType
from typing import Any

import redis.exceptions
import structlog
from celery import Celery, platforms
from kombu.exceptions import OperationalError
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis

__all__ = ["Scheduler", "run"]

log = structlog.get_logger(__name__)

_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError)


def run(app: Celery, loglevel: str) -> None:
    """Run Beat in this process until SIGTERM or SIGINT."""

    class Beat(app.Beat):  # type: ignore[misc]  # Celery's class, bound to app
        def install_sync_handler(self, service: Any) -> None:
            install_stop_handler(service)

    Beat(loglevel=loglevel).run()


def install_stop_handler(service: Any) -> None:
    """SIGTERM and SIGINT end ``service``'s loop: the handler does no I/O, it marks the stop
    (the loop ends after its tick even if the ``SystemExit`` is lost) and raises to cut a sleep
    short; the loop's ``finally`` then closes the scheduler and releases the lock."""

    def stop(signum: int, frame: FrameType | None) -> None:
        service._is_shutdown.set()
        raise SystemExit()

    platforms.signals.update(SIGTERM=stop, SIGINT=stop)


class Scheduler(RedBeatScheduler):  # type: ignore[misc]  # RedBeat ships no type hints
    _closed = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self._closed:  # told to stop, and the SystemExit that should have ended us was lost
            raise SystemExit()
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

    def close(self) -> None:
        self._closed = True
        super().close()

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
