"""The base task: one database transaction per run, errors sorted into retry, park or give up.

``OrdersyncTask.run_in_transaction`` is not used directly: tasks call ``self.transaction()``
to get a session whose commit publishes any task queued with ``publish_after_commit``. Errors
(``plan_retry`` decides, once per failure):

- retryable (``domain.errors.RetryableError``, lost DB connections, lock timeouts,
  serialization failures, deadlocks, Redis / broker / database connection errors), waiting at
  most ``PARK_AFTER_S`` (the error's ``retry_after``, else exponential backoff with full
  jitter, capped) → ``self.retry`` with that countdown, up to ``retry_max_attempts``;
- retryable but waiting longer (a marketplace's ``Retry-After: 7200``) → **parked**: the retry
  is written to ``outbox_messages`` with ``not_before`` (its task id, retry count, chain and
  chord with it), the subclass records what it waits for where staff look (``on_parked``), and
  the task ends without failing and without going on down its chain; the sweeper publishes
  the retry once ``not_before`` has passed. A countdown that long would sit unacknowledged in
  Redis past the visibility timeout and be delivered twice. A retry the broker refuses (Redis
  down) is parked too, for the sweeper to publish when the broker is back;
- anything else, or retries exhausted → ``on_permanent_failure`` (subclasses record it for staff:
  the inbox row or the order goes to ``failed`` / ``needs_attention``) and the task fails.

A message Redis hands out again because its worker died holding it (``redelivered``: the
child was killed, the machine went down) is counted in Redis by its task id, which a
redelivered message keeps (``workflows.locks.count_delivery``; a first delivery costs
nothing). Past ``MAX_DELIVERIES`` it is poison, a message that kills whatever runs it:
``on_permanent_failure`` records it for staff with ``WorkerLost`` and the message is
acknowledged without running it again. (Counted per message, not per task and arguments: the
many messages of the same work over a day, each redelivered once after a crash, are not one
poison message.)
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import kombu.exceptions
import psycopg
import redis.exceptions
import structlog
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from kombu.utils.json import dumps as kombu_dumps
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from core.logging import redacted_message
from core.settings import Settings, get_settings
from db.base import utcnow
from db.models import OutboxMessage
from db.session import get_sessionmaker
from domain.errors import RetryableError

__all__ = [
    "OrdersyncTask",
    "RetryPlan",
    "WorkerLost",
    "backoff_delay",
    "describe",
    "is_retryable",
    "plan_retry",
]

log = structlog.get_logger(__name__)

# Postgres SQLSTATEs that mean "run the transaction again": serialization failure, deadlock,
# lock not available. SQLite says "database is locked" when the busy timeout ran out.
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}


#: infrastructure that blips (a Redis restart, a broker failover, a database restart): the step
#: lock, the broker, the result backend and a database connection that was not wrapped by
#: SQLAlchemy. Not the builtin ``ConnectionError``/``TimeoutError``: none of them derives from
#: those.
_INFRASTRUCTURE_BLIPS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError: a restarted Redis loading
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    psycopg.OperationalError,
)
#: redis-py's ConnectionErrors that a retry cannot heal: wrong password, an ACL that refuses
_REDIS_REFUSALS = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, _INFRASTRUCTURE_BLIPS):
        return not isinstance(exc, _REDIS_REFUSALS)
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if code in _RETRYABLE_SQLSTATES:
            return True
        if isinstance(exc, sa_exc.OperationalError):
            return True  # connection refused/reset, "database is locked", server restart
    return isinstance(exc, (ConnectionError, TimeoutError))


def describe(exc: BaseException, limit: int = 2000) -> str:
    """What staff see of an error: its class, its message and, from a provider, its error code
    (``amount_too_large``, ``card_declined:…``), which the message alone may not carry."""
    text = f"{type(exc).__name__}: {exc}"
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code and code not in text:
        text = f"{text} [{code}]"
    return text[:limit]


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))


@dataclass(frozen=True)
class RetryPlan:
    """What a failed run does next: ``retry`` through the broker after ``delay`` seconds,
    ``park`` in the database until ``not_before``, or ``fail`` for good."""

    action: Literal["retry", "park", "fail"]
    delay: float = 0.0
    not_before: dt.datetime | None = None


def plan_retry(
    exc: BaseException, attempt: int, settings: Settings, *, now: dt.datetime | None = None
) -> RetryPlan:
    """The plan after ``exc`` on attempt ``attempt`` (0 = the first run)."""
    if not is_retryable(exc) or attempt >= settings.retry_max_attempts:
        return RetryPlan("fail")
    delay = getattr(exc, "retry_after", None)
    if delay is None:
        delay = backoff_delay(
            attempt, base=settings.retry_backoff_base_s, cap=settings.retry_backoff_max_s
        )
    if delay <= settings.park_after_s:
        return RetryPlan("retry", delay)
    return RetryPlan("park", delay, (now or utcnow()) + dt.timedelta(seconds=delay))


class WorkerLost(Exception):
    """The work's worker died each time it ran it: set aside as poison."""


class OrdersyncTask(Task):  # type: ignore[misc]
    abstract = True
    #: no Celery limit: ``plan_retry`` decides (``RETRY_MAX_ATTEMPTS``). With Celery's default of
    #: 3, the fourth retry raised the error itself and ``on_permanent_failure`` never ran.
    max_retries = None
    # acks_late comes from the app config; tasks are idempotent by construction

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction; commits on success, rolls back on error."""
        with get_sessionmaker()() as session, session.begin():
            yield session

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.bind_contextvars(task=self.name, task_id=self.request.id)
        try:
            if self._poison(args, kwargs):
                return None
            return super().__call__(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            return self._handle_error(exc, args, kwargs)
        finally:
            structlog.contextvars.unbind_contextvars("task", "task_id")

    def _poison(self, args: Any, kwargs: Any) -> bool:
        """A redelivered message past its delivery bound: recorded, not run (module doc)."""
        if not (self.request.delivery_info or {}).get("redelivered"):
            return False
        from workflows.locks import count_delivery

        deliveries = count_delivery(str(self.request.id))
        bound = get_settings().max_deliveries
        if deliveries <= bound:
            log.warning("task.redelivered", delivery=deliveries, bound=bound)
            return False
        exc = WorkerLost(f"its worker died each of the {deliveries - 1} times it ran: set aside "
                         f"as a poison message, not run again")  # fmt: skip
        log.error("task.poison", deliveries=deliveries)
        self.on_permanent_failure(exc, args, kwargs, attempts=deliveries - 1)
        return True

    #: the plan of the failure being handled (``retry_plan``), until ``_handle_error`` used it
    _decided: tuple[BaseException, RetryPlan] | None = None

    def retry_plan(self, exc: Exception) -> RetryPlan:
        """The plan for this failure, decided once: a task that books the failure itself before
        it raises (a sync run) gets the plan that ``_handle_error`` then carries out. (Kept on
        the task, not on ``self.request``: the request inside ``run`` is a copy.)"""
        if self._decided is not None and self._decided[0] is exc:
            return self._decided[1]
        plan = plan_retry(exc, self.request.retries, get_settings())
        self._decided = (exc, plan)
        return plan

    def _handle_error(self, exc: Exception, args: Any, kwargs: Any) -> Any:
        plan = self.retry_plan(exc)
        self._decided = None
        attempt = self.request.retries
        if plan.action == "fail":
            log.error("task.failed", error=type(exc).__name__, detail=redacted_message(exc),
                      attempt=attempt)  # fmt: skip
            self.on_permanent_failure(exc, args, kwargs, attempts=attempt + 1)
            raise exc
        if plan.action == "retry":
            log.warning("task.retry", error=type(exc).__name__, detail=redacted_message(exc, 200),
                        attempt=attempt + 1, delay=round(plan.delay, 2))  # fmt: skip
            try:
                raise self.retry(exc=exc, countdown=plan.delay)
            except Reject:  # the broker did not take the retry: it waits in the database
                log.warning("task.retry_unpublished", error=type(exc).__name__)
                plan = RetryPlan("park", plan.delay, utcnow() + dt.timedelta(seconds=plan.delay))
        assert plan.not_before is not None
        self.park(exc, args, kwargs, plan.not_before)
        # acknowledged, no result, the chain and chord do not move on: the parked retry carries
        # them (same task id, chain, chord) when the sweeper publishes it
        raise Ignore()

    def park(self, exc: Exception, args: Any, kwargs: Any, not_before: dt.datetime) -> None:
        """Write this run's retry to the outbox, to be published at ``not_before``."""
        retry = self.signature_from_request(
            self.request, list(args), dict(kwargs), retries=self.request.retries + 1
        )
        # plain JSON (the message's own encoding: a chord or chain may hold datetimes)
        options: dict[str, Any] = json.loads(kombu_dumps(dict(retry.options)))
        queue = options.pop("queue", None)
        reason = describe(exc)
        with self.transaction() as session:
            message = OutboxMessage(
                task_name=self.name,
                args=list(args),
                kwargs=dict(kwargs) or None,
                options=options,
                queue=queue,
                not_before=not_before,
                reason=reason,
                attempts=0,
            )
            session.add(message)
            self.on_parked(session, message, args, kwargs)
        log.warning("task.parked", error=type(exc).__name__, detail=redacted_message(exc, 200),
                    until=not_before.isoformat(), attempt=self.request.retries + 1)  # fmt: skip

    def on_parked(self, session: Session, message: OutboxMessage, args: Any, kwargs: Any) -> None:
        """In the transaction that parks ``message``: say whose work it is (``order_id``,
        ``channel_account_id``) and record what it waits for where staff see it. Subclasses
        override."""

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        """Record the failure where staff will see it. Subclasses override."""
