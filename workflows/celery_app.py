"""The Celery application: queues and the reliability settings of DESIGN.md.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its
  task finished, so a worker that dies mid-task leaves it to be delivered again (tasks are
  idempotent: they reload state and skip what is done).
- ``worker_prefetch_multiplier = 1``: a worker holds one message at a time, so a crash strands
  at most one and long tasks do not sit behind each other.
- One ``visibility_timeout`` for the broker and the result backend, longer than any task or
  countdown: Redis redelivers an unacknowledged message after it, to whoever asks.
- JSON only; explicit task names; ``result_expires`` longer than any chord can take.
- The Redis transport of ``workflows.broker``: an item in a queue that is not a message is set
  aside (``ordersync:dead-letters``) instead of stopping the worker that popped it.

The broker URL is resolved lazily (on first use), so importing this module never starts Redis.
"""

from __future__ import annotations

import gc
import inspect
from typing import Any

import structlog
from celery import Celery, signals
from celery.exceptions import Retry
from celery.schedules import crontab
from kombu.entity import Queue

from core.logging import redacted_error
from core.settings import get_settings

__all__ = ["app", "soft_time_limit"]

app = Celery("ordersync")

#: how often Beat wakes (and renews its lock) at least, and how long a dead Beat's lock keeps a
#: standby Beat waiting
BEAT_MAX_LOOP_S = 5
BEAT_LOCK_TIMEOUT_S = 30


def soft_time_limit(hard_s: int) -> int:
    """The soft limit (``SoftTimeLimitExceeded``, a task can still record why it stops): 30 s
    before the hard one, or a tenth of it for a short hard limit (a 20 s limit gives 18 s,
    not 1 s)."""
    return max(1, hard_s - min(30, max(1, hard_s // 10)))


def _config() -> dict[str, Any]:
    from core.runtime import redis_url

    settings = get_settings()
    url = redis_url()
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    return {
        "broker_url": url,
        # redis:// and rediss:// (unix:// is kombu's socket transport: left as it is)
        **(
            {"broker_transport": "workflows.broker:Transport"}
            if url.split("://", 1)[0] in ("redis", "rediss")
            else {}
        ),
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": settings.visibility_timeout_s,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": soft_time_limit(settings.task_time_limit_s),
        "result_expires": max(86_400, settings.visibility_timeout_s * 2),
        # no STARTED state, no extended metadata: each is one more Redis write per task, and
        # the database timeline is where staff see progress (bench/pipeline_throughput.py)
        "result_extended": False,
        "task_track_started": False,
        "task_default_queue": settings.queue_orders,
        "task_queues": [Queue(name, routing_key=name) for name in settings.queues],
        "task_routes": {
            "ordersync.intake.*": {"queue": settings.queue_intake},
            "ordersync.orders.*": {"queue": settings.queue_orders},
            "ordersync.sync.*": {"queue": settings.queue_sync},
            "ordersync.documents.*": {"queue": settings.queue_documents},
            "ordersync.outbound.*": {"queue": settings.queue_outbound},
            "ordersync.maintenance.*": {"queue": settings.queue_intake},
        },
        "worker_hijack_root_logger": False,
        # task events feed monitors such as Flower; off unless asked for (a publish per state)
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": _beat_schedule(),
        # One Beat at a time (RedBeat): the schedule and a leader lock live in Redis. A second
        # Beat started by mistake waits for the lock instead of sending everything twice, and
        # takes over within ``BEAT_LOCK_TIMEOUT_S`` when the first dies. Beat wakes at least
        # every ``BEAT_MAX_LOOP_S`` to renew the lock.
        "beat_scheduler": "workflows.beat:Scheduler",
        "redbeat_redis_url": url,
        "redbeat_key_prefix": "ordersync:redbeat",
        "redbeat_lock_timeout": BEAT_LOCK_TIMEOUT_S,
        "beat_max_loop_interval": BEAT_MAX_LOOP_S,
    }


def _beat_schedule() -> dict[str, Any]:
    settings = get_settings()
    return {
        "sweep-unprocessed": {
            "task": "ordersync.maintenance.sweep",
            # half the age at which rows count as stuck: nothing waits much longer than that
            "schedule": max(5.0, settings.sweep_after_s / 2),
            "options": {"expires": max(5.0, settings.sweep_after_s / 2)},
        },
        "poll-due-accounts": {
            "task": "ordersync.sync.poll_due",
            "schedule": 60.0,
            "options": {"expires": 60.0},
        },
        "daily-purge": {
            "task": "ordersync.maintenance.purge",
            "schedule": crontab(minute=30, hour=(settings.full_sync_hour_utc + 1) % 24),
            "options": {"expires": 3600.0},
        },
        "track-shipped-parcels": {
            "task": "ordersync.maintenance.track_due",
            "schedule": float(settings.track_interval_s),
            "options": {"expires": float(settings.track_interval_s)},
        },
        "stock-flush-safety-net": {
            "task": "ordersync.outbound.flush_dirty",
            "schedule": 15.0,
            "options": {"expires": 15.0},
        },
        "nightly-stock-check": {
            "task": "ordersync.sync.stock_check_all",
            "schedule": crontab(minute=30, hour=settings.full_sync_hour_utc),
            "options": {"expires": 3600.0},
        },
        "nightly-full-sync": {
            "task": "ordersync.sync.full_sync_all",
            "schedule": crontab(minute=0, hour=settings.full_sync_hour_utc),
            "options": {"expires": 3600.0},
        },
    }


@signals.worker_init.connect
def _worker_init(**_kwargs: Any) -> None:
    from db import session

    session.set_pre_ping_default(False)  # see db.session: tasks retry a lost connection
    _freeze_heap()  # the pool is not forked yet: its children inherit a frozen heap


@signals.worker_process_init.connect
def _worker_process_init(**_kwargs: Any) -> None:
    from db import session

    session.after_fork()
    _freeze_heap()


def _freeze_heap() -> None:
    """Move every object that exists now (modules, classes, the app, its tasks, the engine:
    about 170,000 of them in a worker) out of reach of the cyclic garbage collector, as the
    Python docs advise for a process that forks workers (``gc.freeze``). Objects that live as
    long as the process then cost no full collection anything: before, a backfill's worker child
    spent about a fifth of its CPU in full collections, each walking that whole heap again
    (``bench/README.md``). Frozen objects are still freed by reference counting; only cycles
    among them that later become garbage stay until the process ends: 280 objects in a worker
    child, the same after 10,000 backfilled orders as after 155 pipeline orders."""
    gc.freeze()


def _id_arguments(task: Any, args: Any, kwargs: Any) -> dict[str, int]:
    """A task's integer ``*_id`` arguments (``order_id``, ``inbox_id``, ``account_id``): which
    order a log line is about, and never anything a buyer typed."""
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
    except TypeError:  # arguments the task does not take: its call fails, and says so
        return {}
    return {
        name: value
        for name, value in bound.arguments.items()
        if name.endswith("_id") and isinstance(value, int) and not isinstance(value, bool)
    }


@signals.task_prerun.connect
def _bind_ids(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    structlog.contextvars.bind_contextvars(**_id_arguments(task, args, kwargs))


@signals.task_postrun.connect
def _unbind_ids(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    structlog.contextvars.unbind_contextvars(*_id_arguments(task, args, kwargs))


@signals.task_retry.connect
def _redact_retry_reason(reason: Any = None, **_: Any) -> None:
    # Celery logs "Task ... retry: <reason>" right after this signal, and a Retry's text holds
    # the repr of the exception it retries for, which may quote what a buyer typed (a database
    # error's parameters, an address): the same line, with the exception as every log shows it
    if isinstance(reason, Retry) and reason.exc is not None:
        reason.excs = redacted_error(reason.exc)


app.add_defaults(_config)
app.autodiscover_tasks(["workflows"], related_name="tasks", force=False)

# every process that publishes or runs tasks counts them (workflows/metrics.py)
from workflows import metrics as _metrics  # noqa: E402, F401
