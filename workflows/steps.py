"""The base of the pipeline's tasks: one step of one order at a time, and a step that fails
for good shown to staff.

A ``StepTask`` holds the Redis lock of (order, step) around its step's service (a contended
lock is retried: its holder does the step anyway, so the order never fails of contention),
gives the service an idempotency ``Claimant`` whose owner is the task id (a redelivered task
takes its own keys back), and turns the service's ``Outcome`` into the task's result (``stop``:
the rest of the chain does not run). A step that fails for good moves the order to
``needs_attention`` (``orders.recovery``); a step that must wait longer than ``PARK_AFTER_S``
(``workflows.base``) puts a ``waiting`` event on the order's timeline with the time and the
reason, and its parked retry is the order's (the stuck-order sweep leaves it alone); a
``RefundTask`` leaves the cancelled order as it is and puts the failure on its timeline
(``orders.refunds``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.orm import Session

from core.settings import get_settings
from db.models import OutboxMessage
from orders import idempotency, outbox, recovery, refunds
from orders.intake import record_event
from orders.steps import Outcome
from workflows.base import OrdersyncTask, describe
from workflows.locks import LockBusy, OrderLock, order_lock

__all__ = ["LOCK_RETRIES", "DeliverTask", "RefundTask", "StepTask"]

# a contended step lock is retried this often before the task gives up
LOCK_RETRIES = 60


class StepTask(OrdersyncTask):
    abstract = True
    step: str = ""

    def owner(self) -> str:
        return str(self.request.id or uuid.uuid4())

    def lock(self, order_id: int) -> AbstractContextManager[OrderLock]:
        return order_lock(order_id, self.step, self.owner())

    def keys(self) -> idempotency.Claimant:
        timeout = dt.timedelta(seconds=get_settings().idempotency_lock_timeout_s)
        return idempotency.Claimant(self.transaction, self.owner(), timeout, describe)

    def report(self, outcome: Outcome) -> str:
        if outcome.stop:  # do not run the rest of the pipeline (on hold, cancelled, …)
            self.request.chain = None
            self.request.callbacks = None
        return outcome.result

    def _handle_error(self, exc: Exception, args: Any, kwargs: Any) -> Any:
        if isinstance(exc, LockBusy) and self.request.retries < LOCK_RETRIES:
            raise self.retry(exc=exc, countdown=0.5 + self.request.retries * 0.5, max_retries=None)
        return super()._handle_error(exc, args, kwargs)

    def on_parked(self, session: Session, message: OutboxMessage, args: Any, kwargs: Any) -> None:
        # the order's work: the stuck-order sweep leaves the order to it; staff see the wait
        message.order_id = args[0] if args else kwargs["order_id"]
        assert message.not_before is not None
        record_event(session, message.order_id, actor=f"task:{self.step}", kind="waiting",
                     step=self.step, until=message.not_before.isoformat(),
                     reason=message.reason)  # fmt: skip

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        order_id = args[0] if args else kwargs["order_id"]
        with self.transaction() as session:
            recovery.record_failure(session, order_id, step=self.step, error=describe(exc),
                                    attempts=attempts)  # fmt: skip


class RefundTask(StepTask):
    abstract = True

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        order_id = args[0] if args else kwargs["order_id"]
        with self.transaction() as session:
            refunds.record_failure(session, order_id, error=describe(exc), attempts=attempts)


class DeliverTask(OrdersyncTask):
    """Delivers one outbox message (``orders.outbox``): its idempotency keys are held by the
    task id; a delivery that fails for good is shown on the message and, for a fulfilment, the
    order goes to ``needs_attention``."""

    abstract = True

    def keys(self) -> idempotency.Claimant:
        timeout = dt.timedelta(seconds=get_settings().idempotency_lock_timeout_s)
        owner = str(self.request.id or uuid.uuid4())
        return idempotency.Claimant(self.transaction, owner, timeout, describe)

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        message_id = args[0] if args else kwargs["message_id"]
        with self.transaction() as session:
            outbox.record_failure(session, message_id, error=describe(exc))
