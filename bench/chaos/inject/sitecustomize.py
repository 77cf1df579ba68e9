"""The chaos suite's crash injector, loaded by the workers of a chaos run (and nothing else):
the scenario puts this directory first on ``PYTHONPATH`` and Python imports
``sitecustomize`` at start. It makes a worker's pool process die by ``SIGKILL`` — no
``finally``, no rollback, no ack — at the points where a crash hurts most:

- ``ORDERSYNC_CHAOS_CRASH_RATE`` (a probability): before an outside call is sent, after its
  answer came back (before anything of it is recorded), before a database commit and right
  after one (before what follows it: a publish, the next call);
- ``ORDERSYNC_CHAOS_KILL_MARKER``: any JSON document containing this text kills the process
  that parses it (a webhook no worker survives: the poison scenario's).

``ORDERSYNC_CHAOS_CRASH_BUDGET`` caps the crash-point kills of the run; every kill is a line
in ``ORDERSYNC_CHAOS_LOG`` (what the run counts as its faults). Only worker processes arm it
(``worker`` in the command line): the web app and Beat run untouched.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from typing import Any

_RATE = float(os.environ.get("ORDERSYNC_CHAOS_CRASH_RATE") or 0)
_MARKER = os.environ.get("ORDERSYNC_CHAOS_KILL_MARKER") or ""
_BUDGET = int(os.environ.get("ORDERSYNC_CHAOS_CRASH_BUDGET") or 0)
_LOG = os.environ.get("ORDERSYNC_CHAOS_LOG") or ""


def _spent() -> int:
    try:
        with open(_LOG, "rb") as log:
            return sum(1 for _ in log)
    except OSError:
        return 0


def _die(point: str, *, budgeted: bool = True) -> None:
    """SIGKILL this process at ``point`` (logged first; a crash point within the run's
    budget, a poison document always)."""
    if _LOG:
        if budgeted and _BUDGET and _spent() >= _BUDGET:
            return
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {point}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _roll(point: str) -> None:
    if _RATE and random.random() < _RATE:
        _die(point)


def _arm_calls() -> None:
    import httpx

    send = httpx.Client.send

    def crashing_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
        _roll(f"before {request.method} {request.url.path}")
        response = send(self, request, **kwargs)
        _roll(f"after {request.method} {request.url.path}")
        return response

    httpx.Client.send = crashing_send  # type: ignore[method-assign]


def _arm_commits() -> None:
    from sqlalchemy.engine import Connection

    commit = Connection._commit_impl

    def crashing_commit(self: Connection) -> None:
        _roll("before commit")
        commit(self)
        _roll("after commit")

    Connection._commit_impl = crashing_commit  # type: ignore[method-assign]


def _arm_marker() -> None:
    import json

    loads = json.loads
    marker = _MARKER.encode()

    def killing_loads(s: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Any:
        text = s if isinstance(s, (bytes, bytearray)) else s.encode("utf-8", "replace")
        if marker in text:
            _die("a poison document parsed", budgeted=False)
        return loads(s, *args, **kwargs)

    json.loads = killing_loads


if "worker" in sys.argv:
    if _RATE:
        _arm_calls()
        _arm_commits()
    if _MARKER:
        _arm_marker()
