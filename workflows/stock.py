"""Stock out to the channels: the flush trigger, the flusher task, its safety net and the
nightly check (the logic is ``orders/stock_push.py``).

- Every transaction that changed what is available leaves the accounts whose listings it marked
  dirty on ``session.info`` (``orders.stock.mark_dirty``); after it commits, ``schedule_flush``
  publishes ``flush_stock(account)`` with a countdown of ``STOCK_FLUSH_WINDOW_S`` unless one is
  already scheduled for that window (a Redis ``SET NX`` that lives for most of the window), so
  the changes of one window go out together, at their values at send time.
- ``ordersync.outbound.flush_stock(account_id)``: the account's one flusher (a lease on its
  row, owned by the task id); a busy account is left to its flusher, one with more to do is
  flushed again after a window. Outages retry with backoff (``OrdersyncTask``), the failing
  task keeping the lease for its retry; when retries run out the dirty listings carry the
  error, which the dashboard and ``ordersync stock show`` display, and the lease is let go.
- ``ordersync.outbound.flush_dirty`` (Beat): accounts with listings dirty for longer than a few
  windows and no flusher: a trigger lost to a broker blip is not a lost push.
- ``ordersync.sync.stock_check_all`` (Beat, nightly) → ``stock_check(account)``: every
  listing read from the channel and compared (``stock_checks`` row, ``stock_drifts`` rows), then
  a flush repairs what drifted.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

import redis
import structlog
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.runtime import redis_url
from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount
from integrations.base import ConnectorSeams
from orders import stock_push
from orders.stock import DIRTY_ACCOUNTS
from workflows.base import OrdersyncTask, describe
from workflows.celery_app import app
from workflows.metrics import count_check, count_flush
from workflows.providers import connector_for, shared_limiter

__all__ = ["flush_dirty", "flush_stock", "schedule_flush", "stock_check", "stock_check_all"]

log = structlog.get_logger(__name__)

_SCHEDULED = "ordersync:stockflush:{}"
#: listings dirty for this many windows with no flusher are flushed by ``flush_dirty``
NET_WINDOWS = 5


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(redis_url())


def schedule_flush(account_ids: set[int] | list[int], *, window: float | None = None) -> int:
    """``flush_stock`` for each account after one window, unless one is already due in it;
    returns how many were published. A broker or Redis error is logged, not raised: the
    listings are dirty in the database and ``flush_dirty`` finds them."""
    window = get_settings().stock_flush_window_s if window is None else window
    published = 0
    for account_id in sorted(account_ids):
        try:
            # the key lives for most of the window: a change in its last fifth schedules the
            # next flush, so nothing committed after the flush read its rows is left behind
            if _redis().set(_SCHEDULED.format(account_id), "1", nx=True,
                            px=max(1, int(window * 800))):  # fmt: skip
                flush_stock.apply_async((account_id,), countdown=window)
                published += 1
        except Exception as exc:
            log.warning("stock.schedule_failed", account_id=account_id, error=type(exc).__name__)
    return published


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    accounts: set[int] | None = session.info.pop(DIRTY_ACCOUNTS, None)
    if accounts:
        schedule_flush(accounts)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(DIRTY_ACCOUNTS, None)


class StockTask(OrdersyncTask):
    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        account_id = args[0] if args else kwargs.get("account_id")
        if isinstance(account_id, int):
            stock_push.give_up(self.transaction, account_id,
                               f"{describe(exc)} (after {attempts} attempts)",
                               owner=self.request.id or "")  # fmt: skip

    def on_parked(self, session: Session, message: Any, args: Any, kwargs: Any) -> None:
        account_id = args[0] if args else kwargs.get("account_id")
        if isinstance(account_id, int):
            message.channel_account_id = account_id


def _account(task: OrdersyncTask, account_id: int) -> ChannelAccount | None:
    with task.transaction() as session:
        account = session.get(ChannelAccount, account_id)
        if account is None or not account.active:
            return None
        session.expunge(account)
        return account


@app.task(base=StockTask, bind=True, name="ordersync.outbound.flush_stock", ignore_result=True)
def flush_stock(self: StockTask, account_id: int) -> dict[str, Any]:
    account = _account(self, account_id)
    if account is None:
        return {"account_id": account_id, "status": "inactive"}
    connector = connector_for(account, ConnectorSeams(limiter=shared_limiter()))
    result = stock_push.FlushResult()
    try:
        stock_push.flush(self.transaction, account_id, connector,
                         owner=self.request.id or uuid.uuid4().hex, flushed=result)  # fmt: skip
    finally:
        connector.close()
        count_flush(account.channel, result)  # what it did, even when a later batch failed
    # busy: the flusher holding the account reads what is dirty when its round starts, and
    # looks again after letting go (``more``), so nothing is left behind by returning here
    if result.more:
        flush_stock.apply_async((account_id,), countdown=get_settings().stock_flush_window_s)
    return {"account_id": account_id, **result.as_dict()}


@app.task(base=OrdersyncTask, bind=True, name="ordersync.outbound.flush_dirty", ignore_result=True)
def flush_dirty(self: OrdersyncTask) -> list[int]:
    older = utcnow() - dt.timedelta(seconds=get_settings().stock_flush_window_s * NET_WINDOWS)
    with self.transaction() as session:
        accounts = stock_push.dirty_accounts(session, older)
    for account_id in accounts:
        flush_stock.delay(account_id)
    return accounts


# its failure is on its stock_checks row (status failed, the error), not on the listings
@app.task(base=OrdersyncTask, bind=True, name="ordersync.sync.stock_check", ignore_result=True)
def stock_check(self: OrdersyncTask, account_id: int) -> dict[str, Any]:
    account = _account(self, account_id)
    if account is None:
        return {"account_id": account_id, "status": "inactive"}
    connector = connector_for(account, ConnectorSeams(limiter=shared_limiter()))
    try:
        report = stock_push.check(self.transaction, account_id, connector)
    finally:
        connector.close()
    count_check(account.channel, report.drifted)
    flush_stock.delay(account_id)  # repairs what drifted, pushes what was dirty anyway
    return {"account_id": account_id, **report.__dict__}


@app.task(base=OrdersyncTask, bind=True, name="ordersync.sync.stock_check_all", ignore_result=True)
def stock_check_all(self: OrdersyncTask) -> list[int]:
    with self.transaction() as session:
        accounts = list(
            session.scalars(select(ChannelAccount.id).where(ChannelAccount.active.is_(True)))
        )
    for account_id in accounts:
        stock_check.delay(account_id)
    return accounts
