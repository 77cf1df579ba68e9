"""Real ordersync processes for end-to-end tests: web server and Celery workers.

``Stack`` runs ``python -m ordersync web`` and ``python -m ordersync worker`` as child processes
against a given database and Redis, exactly as an operator would, and waits until both answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from core.net import free_port
from ordersync.supervisor import ProcessGroup, wait_ready

__all__ = ["Stack", "run_stack", "wait_until"]

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], *, timeout: float = 60.0, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    interval = 0.02
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        interval = min(0.25, interval * 1.5)


@dataclass
class Stack:
    base_url: str
    group: ProcessGroup
    env: dict[str, str]

    def logs(self) -> str:
        out = []
        for child in self.group.children:
            if child.log_path and child.log_path.exists():
                out.append(f"--- {child.name} ---\n{child.log_path.read_text()[-4000:]}")
        return "\n".join(out)


@contextmanager
def run_stack(
    *,
    database_url: str,
    redis_url: str,
    var_dir: Path,
    workers: int = 1,
    concurrency: int = 2,
    beat: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    port = free_port()
    env = {
        **os.environ,
        "ORDERSYNC_DATABASE_URL": database_url,
        "ORDERSYNC_REDIS_URL": redis_url,
        "ORDERSYNC_VAR_DIR": str(var_dir),
        "ORDERSYNC_WEB_PORT": str(port),
        "ORDERSYNC_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        **(extra_env or {}),
    }
    group = ProcessGroup(env=env, log_dir=var_dir / "logs")
    stack = Stack(f"http://127.0.0.1:{port}", group, env)
    try:
        group.start("web", ["web"])
        for i in range(workers):
            group.start(f"worker-{i + 1}", ["worker", "--concurrency", str(concurrency)])
        if beat:  # polls, the nightly sync and the sweeper, as in production
            group.start("beat", ["beat"])

        try:
            wait_ready(stack.base_url, redis_url, group, workers=workers, timeout_s=60)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}\n{stack.logs()}") from None
        yield stack
    finally:
        group.stop(timeout_s=20)
