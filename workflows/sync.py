"""Polling and the nightly full sync: because webhooks get lost (WooCommerce never retries one).

- ``ordersync.sync.poll_due`` (Beat, every minute): publish ``poll_account`` for each active
  account whose last poll is older than ``poll_interval_s``, that has no parked work and no
  poll still reading.
- ``ordersync.sync.poll_account(account_id)``: a run (``sync_runs`` row) over orders updated in
  ``[cursor - overlap, now)``, read in slices (``orders.syncing``): each page, within the
  marketplace's rate limit (Redis-shared buckets per account and operation), is applied with
  the same intake as webhooks (a poll and a webhook for the same order make one order, newest
  data winning) in one transaction with the token that resumes after it; a slice stops after
  ``SYNC_SLICE_PAGES`` pages or ``SYNC_SLICE_S`` and publishes ``sync_slice(run_id)`` for the
  next. A long window that the source splits (a Shopify bulk export of 2 MB or more, on
  PostgreSQL) is read in lanes: ``sync_slice(run_id, lane)`` for each, at once on the free
  worker processes of the ``sync`` queue, each lane with its own lock and slices. The cursor
  moves when the whole window was read. A marketplace that asks us to wait
  longer than ``PARK_AFTER_S`` parks the run (``parked``, its token kept; the sweeper publishes
  it again when the wait is over); a run whose worker died is resumed by the sweeper.
- ``ordersync.sync.full_sync_all`` (Beat, nightly): a ``reconcile_reports`` row, then
  ``full_sync_account(a, report_id)`` for every account, each its own run re-reading
  ``full_sync_days`` days whatever the cursor says; the run that ends the night (done, or
  failed for good) totals the report (``orders.syncing.finish_report``; ``ordersync sync
  status``, ``/sync``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, OutboxMessage, SyncRun
from db.session import get_engine
from integrations.base import ConnectorSeams, MarketplaceConnector
from orders.intake import apply_order
from orders.syncing import (
    book_failure,
    due_for_poll,
    open_run,
    run_slice,
    start_night,
)
from workflows.base import OrdersyncTask, describe
from workflows.celery_app import app
from workflows.locks import LockBusy, redis_lock
from workflows.providers import connector_for, shared_limiter
from workflows.tasks import after_intake, after_page

__all__ = [
    "full_sync_account",
    "full_sync_all",
    "poll_account",
    "poll_due",
    "refresh_order",
    "sync_slice",
]

log = structlog.get_logger(__name__)


def _connector(account: ChannelAccount, lanes: int = 1) -> MarketplaceConnector:
    """A new connector for one run (the caller closes it), on the buckets every worker shares;
    ``lanes``: in how many parts at once it may read a long window."""
    return connector_for(account, ConnectorSeams(limiter=shared_limiter(), lanes=lanes))


def _lanes() -> int:
    """``sync_lanes`` on PostgreSQL; one on SQLite (one writer: lanes would take turns)."""
    postgres = get_engine().dialect.name == "postgresql"
    return get_settings().sync_lanes if postgres else 1


def _start(
    task: OrdersyncTask,
    account_id: int,
    kind: str,
    since: dt.datetime | None,
    report_id: int | None = None,
) -> int | None:
    """The account's unfinished run of ``kind``, else a new one (None: inactive account)."""
    with task.transaction() as session:
        return open_run(session, account_id, kind, since, reconcile_report_id=report_id)


def _slice(task: OrdersyncTask, run_id: int, lane: int | None = None) -> dict[str, Any]:
    """One slice of the run (``orders.syncing.run_slice``), or of one of its lanes; the next
    one is published when there is more, one for each lane when the run is (or was just
    found) read in lanes. A failure is booked on the run (``retrying``, ``parked`` or
    ``failed``, the page token kept) before the task retries."""
    settings = get_settings()
    with task.transaction() as session:
        run = session.get(SyncRun, run_id)
        account = session.get(ChannelAccount, run.channel_account_id) if run else None
    if run is None or account is None:
        return {"run_id": run_id, "status": "gone"}
    try:
        # one reader per account and kind, not per run: a poll_account redelivered after its
        # worker died may find the run it was reading finished and start the next one, and
        # with the same lock name it takes its own lock back (the token is its task id)
        # instead of leaving the dead one's to run out its TTL
        # a lane has a reader of its own
        reader = f"sync:{account.id}:{run.kind}" + ("" if lane is None else f":{lane}")
        with redis_lock(reader, str(task.request.id), ttl_s=settings.task_time_limit_s):
            connector: MarketplaceConnector | None = None
            try:
                # inside the try: an account that cannot be connected (credentials, bad rate
                # limits) fails its run instead of leaving it "running"
                connector = _connector(account, _lanes())
                outcome = run_slice(task.transaction, run_id, connector, after_page,
                                    max_pages=settings.sync_slice_pages,
                                    max_seconds=settings.sync_slice_s, lane=lane)  # fmt: skip
            except Exception as exc:
                status, error = _failed_run(task, exc)
                with task.transaction() as session:
                    book_failure(session, run_id, status, error)
                raise
            finally:
                if connector is not None:
                    connector.close()
    except LockBusy:  # the same slice is being read (a redelivery, or the sweeper's)
        return {"run_id": run_id, "status": "already running"}
    if outcome.status == "more":
        sync_slice.delay(run_id, lane)
    for each in outcome.lanes:
        sync_slice.delay(run_id, each)
    log.info("sync.slice", run_id=run_id, lane=lane, status=outcome.status,
             pages=outcome.pages, orders=outcome.orders)  # fmt: skip
    return {"run_id": run_id, "lane": lane, "status": outcome.status, "pages": outcome.pages,
            "orders": outcome.orders}  # fmt: skip


def _failed_run(task: OrdersyncTask, exc: Exception) -> tuple[str, str]:
    """A failed sync run's status and error: ``parked`` when the marketplace asked us to wait
    longer than a worker waits (the run's retry waits in the database, the cursor stays where
    it was and ``poll_due`` leaves the account alone until then), else ``retrying`` or
    ``failed``."""
    plan = task.retry_plan(exc)
    if plan.action == "park" and plan.not_before is not None:
        return "parked", f"waiting until {plan.not_before.isoformat()}: {describe(exc)}"
    return ("retrying" if plan.action == "retry" else "failed"), describe(exc)


class SyncTask(OrdersyncTask):
    abstract = True
    # a sync publishes many pipelines: Celery's default trail would keep every one of them in
    # the running task's request.children (5.6 KB an order: memory grew with the history)
    trail = False

    def on_parked(self, session: Session, message: OutboxMessage, args: Any, kwargs: Any) -> None:
        if self.name == sync_slice.name:  # args: (run_id,)
            run = session.get(SyncRun, args[0] if args else kwargs["run_id"])
            message.channel_account_id = run.channel_account_id if run else None
        else:  # args: (account_id,)
            message.channel_account_id = args[0] if args else kwargs["account_id"]


@app.task(base=SyncTask, bind=True, name="ordersync.sync.poll_account", ignore_result=True)
def poll_account(self: OrdersyncTask, account_id: int) -> dict[str, Any]:
    """Start a poll of the account (from its cursor), or go on with its unfinished one, and
    read a slice (a slice being read elsewhere makes this a no-op)."""
    run_id = _start(self, account_id, "poll", None)
    if run_id is None:
        return {"account_id": account_id, "status": "inactive"}
    return _slice(self, run_id)


@app.task(base=SyncTask, bind=True, name="ordersync.sync.full_sync_account", ignore_result=True)
def full_sync_account(
    self: OrdersyncTask, account_id: int, report_id: int | None = None
) -> dict[str, Any]:
    """Start a full sync of the account (``full_sync_days`` back, whatever the cursor says),
    part of the night's report ``report_id``, or go on with its unfinished one."""
    since = utcnow() - dt.timedelta(days=get_settings().full_sync_days)
    run_id = _start(self, account_id, "full", since, report_id)
    if run_id is None:
        return {"account_id": account_id, "status": "inactive"}
    return _slice(self, run_id)


@app.task(base=SyncTask, bind=True, name="ordersync.sync.sync_slice", ignore_result=True)
def sync_slice(self: OrdersyncTask, run_id: int, lane: int | None = None) -> dict[str, Any]:
    """The next slice of a run, or of one of its lanes (published by the previous slice, or by
    the sweeper for a run whose worker died: without a lane, which publishes one for each lane
    still unread)."""
    return _slice(self, run_id, lane)


@app.task(base=OrdersyncTask, bind=True, name="ordersync.sync.refresh_order", ignore_result=True)
def refresh_order(self: OrdersyncTask, account_id: int, external_id: str) -> str:
    """One order fetched as the marketplace has it now (a delivery said it changed without
    carrying it: Shopify ``orders/edited``), through the same intake as a poll."""
    with self.transaction() as session:
        account = session.get_one(ChannelAccount, account_id)
        connector = _connector(account)
    try:
        order = connector.get_order(external_id)
    finally:
        connector.close()
    with self.transaction() as session:
        result = apply_order(session, account_id, order, actor=f"refresh:{order.channel}")
        after_intake(session, result)
    return str(result.outcome)


@app.task(base=OrdersyncTask, bind=True, name="ordersync.sync.full_sync_all", ignore_result=True)
def full_sync_all(self: OrdersyncTask) -> int:
    """Nightly: a full sync of every account with credentials, each independent of the
    others (one account's failure is its own run's, and an error in the night's report)."""
    with self.transaction() as session:
        report_id, ids = start_night(session)
    for account_id in ids:
        full_sync_account.delay(account_id, report_id=report_id)
    return len(ids)


@app.task(base=OrdersyncTask, bind=True, name="ordersync.sync.poll_due", ignore_result=True)
def poll_due(self: OrdersyncTask) -> list[int]:
    cutoff = utcnow() - dt.timedelta(seconds=get_settings().poll_interval_s)
    with self.transaction() as session:
        due = due_for_poll(session, polled_before=cutoff)
    for account_id in due:
        poll_account.delay(account_id)
    return due
