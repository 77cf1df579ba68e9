"""The Redis step lock: token, TTL, re-entry by the same task id, extend, release by owner only."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

import pytest
import redis

from workflows.locks import LockBusy, redis_lock


@pytest.fixture
def lock_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    from core.settings import get_settings

    monkeypatch.setenv("ORDERSYNC_REDIS_URL", redis_url)
    get_settings.cache_clear()
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
    monkeypatch.undo()
    get_settings.cache_clear()


def test_one_holder_at_a_time_the_same_task_id_re_enters_and_only_the_owner_releases(
    lock_env: redis.Redis,
) -> None:
    key = "ordersync:lock:order:1:capture_payment"
    lock_env.delete(key)
    with redis_lock("order:1:capture_payment", "task-a", ttl_s=30) as held:
        assert lock_env.get(key) == b"task-a" and 0 < lock_env.pttl(key) <= 30_000
        with pytest.raises(LockBusy):
            with redis_lock("order:1:capture_payment", "task-b"):
                pass
        assert lock_env.get(key) == b"task-a"  # the loser released nothing
        # a redelivered message carries the same task id: it takes its own lock back
        assert held.acquire()
        lock_env.pexpire(key, 1_000)
        assert held.extend() and lock_env.pttl(key) > 1_000
    assert lock_env.get(key) is None
    lock_env.set(key, "task-c")  # someone else's lock now: a late release must not free it
    held.release()
    assert lock_env.get(key) == b"task-c"
    lock_env.delete(key)


def test_twenty_concurrent_takers_one_wins(lock_env: redis.Redis) -> None:
    lock_env.delete("ordersync:lock:order:2:buy_label")
    start, inside = threading.Barrier(20), threading.Event()
    release = threading.Event()

    def take(i: int) -> bool:
        start.wait()
        try:
            with redis_lock("order:2:buy_label", f"task-{i}"):
                inside.set()
                release.wait(10)
                return True
        except LockBusy:
            return False

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(take, i) for i in range(20)]
        done = as_completed(futures)
        # while the winner holds the lock, the other 19 are turned away (none waits)
        first = [next(done).result() for _ in range(19)]
        release.set()
        last = next(done).result()
    assert inside.is_set() and first == [False] * 19 and last is True
