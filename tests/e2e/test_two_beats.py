"""Two Beat processes started by mistake send each scheduled task once per interval, not twice:
the schedule and a leader lock live in Redis (RedBeat), the second Beat waits as a standby and
takes over when the first one dies.

Real processes: two ``ordersync beat`` and a redis-server this test owns; no worker, so every
message Beat sent stays in its queue to be counted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from db.migrate import upgrade
from ordersync.supervisor import Child, ProcessGroup
from tests.support.redis_server import RedisServer
from tests.support.stack import wait_until
from workflows.celery_app import BEAT_LOCK_TIMEOUT_S

pytestmark = pytest.mark.slow

SWEEP_EVERY_S = 5.0  # ORDERSYNC_SWEEP_AFTER_S=10: the sweeper is scheduled every 10 / 2 s
INTERVALS = 3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _sweeps(client: redis.Redis) -> int:
    """Sweep messages waiting in the intake queue (nobody consumes them here)."""
    raw: list[bytes] = client.lrange("intake", 0, -1)  # type: ignore[assignment]
    return sum(json.loads(m)["headers"]["task"] == "ordersync.maintenance.sweep" for m in raw)


def _sent(child: Child) -> int:
    assert child.log_path is not None
    text = child.log_path.read_text() if child.log_path.exists() else ""
    return text.count("Sending due task sweep-unprocessed")


def _beats_group(server: RedisServer, tmp_path: Path) -> ProcessGroup:
    """Processes of one deployment: a migrated SQLite database, the test's redis-server."""
    url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    upgrade(url)
    env = {**os.environ, "ORDERSYNC_DATABASE_URL": url, "ORDERSYNC_REDIS_URL": server.url,
           "ORDERSYNC_VAR_DIR": str(tmp_path / "var"), "ORDERSYNC_SWEEP_AFTER_S": "10",
           "ORDERSYNC_LOG_LEVEL": "INFO",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    return ProcessGroup(env=env, log_dir=tmp_path / "logs")


def test_two_beats_send_each_scheduled_task_once_per_interval_and_the_standby_takes_over(
    server: RedisServer, tmp_path: Path
) -> None:
    # given: two Beats of one deployment, started one after the other
    group = _beats_group(server, tmp_path)
    client = redis.Redis.from_url(server.url)
    try:
        beats = [group.start("beat-1", ["beat"]), group.start("beat-2", ["beat"])]

        # when: the first sweep is sent, then INTERVALS more
        wait_until(lambda: _sweeps(client) >= 1, timeout=60, what="a first scheduled sweep")
        first = time.monotonic()
        wait_until(lambda: _sweeps(client) >= 1 + INTERVALS, timeout=60, what="more sweeps")
        elapsed = time.monotonic() - first

        # then: one Beat sent them all, one per interval (two Beats each sending would have
        # made the same number of messages in about half the time)
        assert elapsed >= INTERVALS * SWEEP_EVERY_S * 0.9, f"{INTERVALS} sweeps in {elapsed:.1f}s"
        sent = [_sent(b) for b in beats]
        assert sorted(sent)[0] == 0 and sorted(sent)[1] >= 1 + INTERVALS, sent

        # and when the Beat that sends dies without a word, the standby takes over
        leader, standby = (beats[0], beats[1]) if sent[0] else (beats[1], beats[0])
        assert leader.process is not None
        os.killpg(leader.process.pid, signal.SIGKILL)
        leader.process.wait()
        before = _sent(standby)
        wait_until(lambda: _sent(standby) > before, timeout=BEAT_LOCK_TIMEOUT_S + 30,
                   what="the standby Beat sending")  # fmt: skip
    finally:
        client.close()
        group.stop(timeout_s=20)


def test_a_beat_stopped_with_sigterm_exits_at_once_and_frees_the_lock_for_the_standby(
    server: RedisServer, tmp_path: Path
) -> None:
    # given: two Beats, the leader sending
    group = _beats_group(server, tmp_path)
    try:
        beats = [group.start("beat-1", ["beat"]), group.start("beat-2", ["beat"])]
        wait_until(lambda: sum(map(_sent, beats)) >= 1, timeout=60, what="a first sweep")
        leader, standby = (beats[0], beats[1]) if _sent(beats[0]) else (beats[1], beats[0])
        assert leader.process is not None

        # when: the leader is told to stop, as systemd or `ordersync up` does
        os.killpg(leader.process.pid, signal.SIGTERM)

        # then: it exits cleanly at once, and the standby takes over well before the lock
        # would have expired (a Beat that dies keeps the standby waiting BEAT_LOCK_TIMEOUT_S)
        assert leader.process.wait(timeout=10) == 0
        before = _sent(standby)
        wait_until(lambda: _sent(standby) > before, timeout=BEAT_LOCK_TIMEOUT_S - 10,
                   what="the standby Beat sending")  # fmt: skip
        assert "beat: Releasing lock" in (leader.log_path.read_text() if leader.log_path else "")
    finally:
        group.stop(timeout_s=20)
