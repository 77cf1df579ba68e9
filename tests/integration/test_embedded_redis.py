"""The embedded Redis: started when no URL is set, shared by later processes, stopped by its
owner only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from core.embedded_redis import EmbeddedRedis


def test_the_first_process_starts_it_the_next_reuses_it_and_only_the_owner_stops_it(
    tmp_path: Path,
) -> None:
    owner = EmbeddedRedis(tmp_path)
    url = owner.ensure()
    try:
        assert owner.owner
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.set("k", "v")

        # a second ordersync process finds the running server instead of starting another
        code = (
            "import sys; from pathlib import Path; from core.embedded_redis import "
            "EmbeddedRedis; e = EmbeddedRedis(Path(sys.argv[1])); print(e.ensure(), e.owner)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        ).stdout.split()  # fmt: skip
        assert out == [url, "False"]
        assert client.get("k") == b"v"  # and the non-owner's exit did not stop it
        client.close()
    finally:
        owner.stop()

    assert not (tmp_path / "redis" / "embedded.json").exists()
    stopped = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        stopped.ping()
        raise AssertionError("the owner's stop() left the server running")
    except redis.ConnectionError:
        pass
