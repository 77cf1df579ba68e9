"""The base task: one database transaction per run, errors sorted into retry or give up.

``OrdersyncTask.run_in_transaction`` is not used directly: tasks call ``self.transaction()``
to get a session whose commit publishes any task queued with ``publish_after_commit``. Errors:

- retryable (``domain.errors.RetryableError``, lost DB connections, lock timeouts,
  serialization failures, deadlocks) → ``self.retry`` with exponential backoff and full jitter,
  capped, up to ``retry_max_attempts``;
- anything else, or retries exhausted → ``on_permanent_failure`` (subclasses record it for staff:
  the inbox row or the order goes to ``failed`` / ``needs_attention``) and the task fails.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from celery import Task
from celery.exceptions import Retry
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from core.logging import redacted_message
from core.settings import get_settings
from db.session import get_sessionmaker
from domain.errors import RetryableError

__all__ = ["OrdersyncTask", "backoff_delay", "describe", "is_retryable"]

log = structlog.get_logger(__name__)

# Postgres SQLSTATEs that mean "run the transaction again": serialization failure, deadlock,
# lock not available. SQLite says "database is locked" when the busy timeout ran out.
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RetryableError):
        return True
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


class OrdersyncTask(Task):  # type: ignore[misc]
    abstract = True
    # acks_late comes from the app config; tasks are idempotent by construction

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction; commits on success, rolls back on error."""
        with get_sessionmaker()() as session, session.begin():
            yield session

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.bind_contextvars(task=self.name, task_id=self.request.id)
        try:
            return super().__call__(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            return self._handle_error(exc, args, kwargs)
        finally:
            structlog.contextvars.unbind_contextvars("task", "task_id")

    def _handle_error(self, exc: Exception, args: Any, kwargs: Any) -> Any:
        settings = get_settings()
        attempt = self.request.retries
        if is_retryable(exc) and attempt < settings.retry_max_attempts:
            delay = getattr(exc, "retry_after", None)
            if delay is None:
                delay = backoff_delay(
                    attempt,
                    base=settings.retry_backoff_base_s,
                    cap=settings.retry_backoff_max_s,
                )
            log.warning(
                "task.retry",
                error=type(exc).__name__,
                detail=redacted_message(exc, 200),
                attempt=attempt + 1,
                delay=round(delay, 2),
            )
            raise self.retry(exc=exc, countdown=delay)
        log.error(
            "task.failed", error=type(exc).__name__, detail=redacted_message(exc), attempt=attempt
        )
        self.on_permanent_failure(exc, args, kwargs, attempts=attempt + 1)
        raise exc

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        """Record the failure where staff will see it. Subclasses override."""
