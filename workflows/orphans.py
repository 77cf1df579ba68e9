"""Messages a dead worker took with it: found and put back within a sweep, not an hour later.

With ``acks_late`` a message stays unacknowledged while its task runs; Redis keeps it in the
transport's ``unacked`` hash and hands it out again only after ``visibility_timeout`` (an hour,
longer than any task). A worker whose main process is killed (OOM, SIGKILL, a lost machine)
never acknowledges nor rejects what it held, so that work would wait the whole hour.

``restore_orphans`` asks the live workers which of the old unacked messages' tasks they hold
(running, reserved, or a retry waiting for its countdown) and restores every one delivered more than
``grace_s`` ago that no live worker holds. A live worker that does not answer in time has its
messages run a second time: every task is idempotent, so that costs work, never correctness.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from celery import Celery

__all__ = ["restore_orphans"]

log = structlog.get_logger(__name__)


def _task_id(payload: bytes) -> str | None:
    try:
        message: Any = json.loads(payload)[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _held(app: Celery, task_ids: list[str], timeout_s: float) -> set[str] | None:
    """Which of ``task_ids`` a live worker holds (running, reserved, or waiting for a retry's
    countdown), in one broadcast; None when no worker answered (then nothing is known)."""
    replies = app.control.inspect(timeout=timeout_s).query_task(*task_ids)
    if not replies:
        return None
    return {task_id for known in replies.values() for task_id in known}


def restore_orphans(app: Celery, *, grace_s: float = 10.0, timeout_s: float = 1.0) -> int:
    """Put back the unacked messages delivered more than ``grace_s`` ago that no live worker
    holds; returns how many. Asks the workers only when there is such a message."""
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        client = channel.client
        ceiling = time.time() - grace_s
        candidates: dict[bytes, str] = {}
        for tag in client.zrangebyscore(channel.unacked_index_key, 0, ceiling):
            payload = client.hget(channel.unacked_key, tag)
            task_id = None if payload is None else _task_id(payload)
            if task_id is not None:
                candidates[tag] = task_id
        if not candidates:
            return 0
        held = _held(app, sorted(set(candidates.values())), timeout_s)
        if held is None:
            return 0  # no worker answered: a restart in progress, or a broker blip; next sweep
        restored = 0
        for tag, task_id in candidates.items():
            if task_id not in held:
                channel.qos.restore_by_tag(tag, client)
                restored += 1
                log.warning("sweep.orphan_restored", task_id=task_id)
    return restored
