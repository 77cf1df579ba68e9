"""Polling and the nightly full sync: because webhooks get lost (WooCommerce never retries one).

- ``ordersync.sync.poll_due`` (Beat, every minute): publish ``poll_account`` for each active
  account whose last poll is older than ``poll_interval_s`` and that has no parked work.
- ``ordersync.sync.poll_account(account_id)``: orders updated in ``[cursor - overlap, now)``,
  page by page within the marketplace's rate limit (one Redis-shared bucket per account and
  operation), upserted in batches with the same intake as webhooks (so a poll and a webhook for
  the same order make one order, newest data winning), new ones entering the pipeline; the
  cursor moves only when the whole window was read. Every run is a ``sync_runs`` row. A
  marketplace that asks us to wait longer than ``PARK_AFTER_S`` parks the poll (``parked`` run,
  cursor unchanged; the sweeper publishes it again when the wait is over).
- ``ordersync.sync.full_sync_all`` (Beat, nightly): ``chord(full_sync_account(a) for a in
  accounts) → reconcile_report``, re-reading ``full_sync_days`` days whatever the cursor says.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from celery import chord
from sqlalchemy import ColumnElement, exists, select, update
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, OutboxMessage, SyncRun
from domain.canonical import CanonicalOrder
from integrations.base import ConnectorSeams, MarketplaceConnector
from orders.intake import IntakeOutcome, apply_order
from workflows.base import OrdersyncTask, describe
from workflows.celery_app import app
from workflows.locks import LockBusy, redis_lock
from workflows.providers import connector_for, shared_limiter
from workflows.tasks import after_intake

__all__ = ["full_sync_account", "full_sync_all", "poll_account", "poll_due", "reconcile_report"]

log = structlog.get_logger(__name__)

BATCH = 50  # orders per transaction: short write locks, little lost work on a crash


def _connector(account: ChannelAccount) -> MarketplaceConnector:
    """A new connector for one run (the caller closes it), on the buckets every worker shares."""
    return connector_for(account, ConnectorSeams(limiter=shared_limiter()))


def _sync(
    task: OrdersyncTask, account_id: int, kind: str, since: dt.datetime | None
) -> dict[str, Any]:
    settings = get_settings()
    now = utcnow()
    with task.transaction() as session:
        account = session.get(ChannelAccount, account_id)
        if account is None or not account.active:
            return {"account_id": account_id, "status": "inactive"}
        channel = account.channel
        if since is None:
            cursor = account.poll_cursor or now - dt.timedelta(days=settings.first_poll_days)
            since = cursor - dt.timedelta(seconds=settings.poll_overlap_s)
        run = SyncRun(channel_account_id=account_id, kind=kind, status="running",
                      window_from=since, window_to=now, started_at=now)  # fmt: skip
        session.add(run)
        session.flush()
        run_id = run.id
    seen = changed = created = 0
    connector: MarketplaceConnector | None = None
    try:
        # one connector per run, closed below; inside the try: an account that cannot be
        # connected (credentials, bad rate limits) fails its run instead of leaving it "running"
        connector = _connector(account)
        batch: list[CanonicalOrder] = []

        def flush() -> None:
            nonlocal changed, created
            with task.transaction() as session:
                for order in batch:
                    result = apply_order(session, account_id, order, actor=f"{kind}:{channel}")
                    after_intake(session, result)
                    if result.outcome != IntakeOutcome.STALE:
                        changed += 1
                    if result.outcome == IntakeOutcome.CREATED:
                        created += 1
                session.execute(
                    update(SyncRun).where(SyncRun.id == run_id)
                    .values(orders_seen=seen, orders_changed=changed)
                )  # fmt: skip
            batch.clear()

        for order in connector.fetch_updated_orders(since, now):
            seen += 1
            batch.append(order)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
        covered_to = connector.last_window_end or now
    except Exception as exc:
        status, error = _failed_run(task, exc)
        with task.transaction() as session:
            session.execute(
                update(SyncRun).where(SyncRun.id == run_id)
                .values(status=status, error=error,
                        orders_seen=seen, orders_changed=changed, finished_at=utcnow())
            )  # fmt: skip
        raise
    finally:
        if connector is not None:
            connector.close()
    with task.transaction() as session:
        account = session.get(ChannelAccount, account_id)
        assert account is not None
        if account.poll_cursor is None or covered_to > account.poll_cursor:
            account.poll_cursor = covered_to  # the cursor never moves back
        session.execute(
            update(SyncRun).where(SyncRun.id == run_id)
            .values(status="ok", orders_seen=seen, orders_changed=changed, finished_at=utcnow(),
                    window_to=covered_to)
        )  # fmt: skip
    log.info("sync.done", account_id=account_id, kind=kind, seen=seen, changed=changed)
    return {"account_id": account_id, "run_id": run_id, "seen": seen, "changed": changed,
            "created": created}  # fmt: skip


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

    def on_parked(self, session: Session, message: OutboxMessage, args: Any, kwargs: Any) -> None:
        message.channel_account_id = args[0] if args else kwargs["account_id"]


def _nothing_parked() -> ColumnElement[bool]:
    """The account has no parked work waiting (a poll told to come back later)."""
    return ~exists().where(
        OutboxMessage.channel_account_id == ChannelAccount.id, OutboxMessage.published_at.is_(None)
    )


@app.task(base=SyncTask, bind=True, name="ordersync.sync.poll_account", ignore_result=True)
def poll_account(self: OrdersyncTask, account_id: int) -> dict[str, Any]:
    # one poll per account at a time; a second trigger while one runs is simply dropped
    try:
        with redis_lock(f"poll:{account_id}", str(self.request.id), ttl_s=900):
            return _sync(self, account_id, "poll", None)
    except LockBusy:
        return {"account_id": account_id, "status": "already running"}


@app.task(base=SyncTask, bind=True, name="ordersync.sync.full_sync_account")
def full_sync_account(self: OrdersyncTask, account_id: int) -> dict[str, Any]:
    # waits for a running poll instead of skipping: the nightly window must be read
    since = utcnow() - dt.timedelta(days=get_settings().full_sync_days)
    with redis_lock(f"poll:{account_id}", str(self.request.id), ttl_s=3600):
        return _sync(self, account_id, "full", since)


@app.task(base=OrdersyncTask, bind=True, name="ordersync.sync.reconcile_report")
def reconcile_report(self: OrdersyncTask, results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the nightly sync found that webhooks and polls had missed (``changed`` > 0)."""
    report = {
        "accounts": len(results),
        "seen": sum(r.get("seen", 0) for r in results),
        "missed_and_repaired": sum(r.get("changed", 0) for r in results),
        "created": sum(r.get("created", 0) for r in results),
    }
    log.info("sync.reconcile", **report)
    return report


@app.task(base=OrdersyncTask, bind=True, name="ordersync.sync.full_sync_all", ignore_result=True)
def full_sync_all(self: OrdersyncTask) -> int:
    with self.transaction() as session:
        accounts = session.scalars(select(ChannelAccount).where(ChannelAccount.active)).all()
        ids = [a.id for a in accounts if a.credentials]
    if ids:
        chord([full_sync_account.si(i) for i in ids], reconcile_report.s()).apply_async()
    return len(ids)


@app.task(base=OrdersyncTask, bind=True, name="ordersync.sync.poll_due", ignore_result=True)
def poll_due(self: OrdersyncTask) -> list[int]:
    cutoff = utcnow() - dt.timedelta(seconds=get_settings().poll_interval_s)
    with self.transaction() as session:
        accounts = session.scalars(
            select(ChannelAccount).where(
                ChannelAccount.active,
                (ChannelAccount.poll_cursor.is_(None)) | (ChannelAccount.poll_cursor < cutoff),
                _nothing_parked(),
            )
        ).all()
        # an account without API credentials is webhook-only: nothing to poll with
        due = [a.id for a in accounts if a.credentials]
    for account_id in due:
        poll_account.delay(account_id)
    return due
