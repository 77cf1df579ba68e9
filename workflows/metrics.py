"""Prometheus series of the workers, and what the queues hold.

Every Celery process counts its task runs (``ordersync_task_runs_total{task, outcome}``:
success, failure, retry, ignored = parked or skipped), failures, retries and durations, and
what its stock flushes did (``ordersync_stock_pushes_total{channel, outcome}``: applied,
refused, drifted; ``…_stock_push_calls_total{channel, kind}``: call, feed;
``…_stock_drift_found_total{channel, found_by}``: push, nightly). A
worker's pool processes are forked, so ``ordersync worker --metrics-port`` turns on
prometheus_client's multiprocess mode (a directory of its own, set before the pool starts)
and serves the sum of its processes on that port.

Every published task carries the time it was published (a message header), so the web app's
``/metrics`` can say how old the oldest message waiting in each queue is.
"""

from __future__ import annotations

import json
import time
from typing import Any

from celery import signals
from prometheus_client import Counter, Histogram

from orders.stock_push import FlushResult

__all__ = ["PUBLISHED_AT", "count_check", "count_flush", "queue_depths"]

#: the message header with the publish time (seconds since the epoch)
PUBLISHED_AT = "ordersync_published_at"

RUNS = Counter("ordersync_task_runs", "Task runs by how they ended", ["task", "outcome"])
FAILURES = Counter("ordersync_task_failures", "Task runs that failed for good", ["task"])
RETRIES = Counter("ordersync_task_retries", "Task runs that asked to be retried", ["task"])
DURATION = Histogram(
    "ordersync_task_duration_seconds",
    "How long a task run took",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

# stock out to the channels (orders/stock_push.py), counted by the task that flushed
STOCK_PUSHES = Counter(
    "ordersync_stock_pushes",
    "Listing quantities sent to a channel, by what became of them",
    ["channel", "outcome"],
)
STOCK_PUSH_CALLS = Counter(
    "ordersync_stock_push_calls", "Bulk stock calls made to a channel (a feed is one)",
    ["channel", "kind"],
)  # fmt: skip
STOCK_DRIFT = Counter(
    "ordersync_stock_drift_found",
    "Listings found showing another quantity than we last pushed (edited on the channel)",
    ["channel", "found_by"],
)

_started: dict[str, float] = {}


def count_flush(channel: str, flushed: FlushResult) -> None:
    """A flush's pushes: applied, refused, drifted (found by the push's compare-and-set)."""
    for outcome, n in (("applied", flushed.pushed), ("refused", flushed.refused),
                       ("drifted", flushed.drifted)):  # fmt: skip
        if n:
            STOCK_PUSHES.labels(channel, outcome).inc(n)
    if flushed.calls - flushed.feeds:
        STOCK_PUSH_CALLS.labels(channel, "call").inc(flushed.calls - flushed.feeds)
    if flushed.feeds:
        STOCK_PUSH_CALLS.labels(channel, "feed").inc(flushed.feeds)
    if flushed.drifted:
        STOCK_DRIFT.labels(channel, "push").inc(flushed.drifted)


def count_check(channel: str, drifted: int) -> None:
    """The nightly check's drift."""
    if drifted:
        STOCK_DRIFT.labels(channel, "nightly").inc(drifted)


@signals.before_task_publish.connect
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers.setdefault(PUBLISHED_AT, time.time())


@signals.task_prerun.connect
def _start(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _finish(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    name = getattr(task, "name", "unknown")
    started = _started.pop(task_id or "", None)
    if started is not None:
        DURATION.labels(name).observe(time.perf_counter() - started)
    RUNS.labels(name, (state or "unknown").lower()).inc()


@signals.task_failure.connect
def _failed(sender: Any = None, **_: Any) -> None:
    FAILURES.labels(getattr(sender, "name", "unknown")).inc()


@signals.task_retry.connect
def _retried(sender: Any = None, **_: Any) -> None:
    RETRIES.labels(getattr(sender, "name", "unknown")).inc()


def queue_depths(
    client: Any, queues: list[str], *, now: float | None = None
) -> dict[str, tuple[int, float | None]]:
    """Per queue: messages waiting in Redis, and the age in seconds of the oldest (None when
    empty, or when its publisher did not stamp it). Kombu pushes on the left and workers take
    from the right, so the oldest message is the last of the list."""
    now = time.time() if now is None else now
    out: dict[str, tuple[int, float | None]] = {}
    for queue in queues:
        depth = int(client.llen(queue))
        age = None
        if depth:
            oldest = client.lindex(queue, -1)
            try:
                stamp = json.loads(oldest)["headers"][PUBLISHED_AT]
                age = max(0.0, now - float(stamp))
            except (TypeError, ValueError, KeyError):
                age = None
        out[queue] = (depth, age)
    return out
