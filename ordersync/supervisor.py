"""Run several ordersync processes as one (``ordersync up``, the demo, the e2e tests).

Children are started with ``python -m ordersync <command>`` in their own process group and the
same environment (so they share the database and Redis). ``stop()`` sends SIGTERM to all,
waits for a warm shutdown (a Celery worker finishes its current task; unacked messages go back
to the queue), then kills what is left. If one child dies, ``wait()`` returns so the caller can
stop the rest instead of running half a system.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

__all__ = ["Child", "ProcessGroup", "stopping", "wait_ready"]


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None


@dataclass
class ProcessGroup:
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    log_dir: Path | None = None  # None: children write to our stdout/stderr
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str]) -> Child:
        argv = [sys.executable, "-m", "ordersync", *args]
        child = Child(name, argv)
        stdout: int | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            child.log_path = self.log_dir / f"{name}.log"
            handle = open(child.log_path, "ab")
            stdout = handle.fileno()
        child.process = subprocess.Popen(
            argv,
            env=dict(self.env),
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,  # our Ctrl-C handler stops them in order
        )
        if stdout is not None:
            handle.close()
        self.children.append(child)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is not None]

    def wait(self, poll_s: float = 0.5) -> Child:
        """Block until a child exits; return it."""
        while True:
            dead = self.dead()
            if dead:
                return dead[0]
            time.sleep(poll_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        live = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in live:
            assert child.process is not None
            try:
                os.killpg(child.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        for child in live:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.process.wait()


def sigterm_interrupts() -> None:
    """SIGTERM raises ``KeyboardInterrupt`` from here on, as Ctrl-C does: ``up`` and the demo
    stop their children the same way whichever of the two a service manager or a user sent."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def stopping() -> Iterator[None]:
    """Around a shutdown (``ProcessGroup.stop`` and what else the caller stops): SIGINT and
    SIGTERM are ignored until it is done (a second Ctrl-C, a service manager repeating its
    SIGTERM). ``up`` and the demo turn those signals into an exception, which raised halfway
    through would leave the rest of the children, or the embedded Redis, running; the stop is
    bounded (``stop``'s timeout, then SIGKILL). Off the main thread (where Python cannot set
    handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.signal(signum, signal.SIG_IGN)
              for signum in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def wait_ready(
    base_url: str, broker: str, group: ProcessGroup, *, workers: int = 1, timeout_s: float = 60
) -> None:
    """Until the web app answers ``/healthz`` and ``workers`` Celery workers answer a ping (so
    they consume). Raises if a child dies first or time runs out."""
    import httpx
    from celery import Celery

    probe = Celery("probe", broker=broker)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            dead = group.dead()
            if dead:
                raise RuntimeError(f"{dead[0].name} exited while starting; see {dead[0].log_path}")
            try:
                web_ok = httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                web_ok = False
            if web_ok and len(probe.control.ping(timeout=0.5)) >= workers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("web app or worker did not come up in time")
            time.sleep(0.2)
    finally:
        probe.close()
