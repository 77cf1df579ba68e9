"""A ``redis-server`` of a test's own, on a fixed loopback port, that the test stops and starts
again: empty (it keeps nothing on disk, like the machine's and the embedded one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from core.embedded_redis import find_redis_server
from core.net import free_port
from tests.support.stack import wait_until

__all__ = ["RedisServer"]


class RedisServer:
    """A redis-server on a fixed port that can be stopped and started again, empty."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), timeout=15, what="redis-server up")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
