"""Where polling and the nightly reconciliation stand, per account: what ``ordersync sync
status``, ``/sync`` and ``/api/sync`` show.

Per account: the cursor (orders changed up to here have been read) and the lag behind now, the
last poll and how it ended, when the next poll is due (``poll_due`` picks an account once its
cursor is ``POLL_INTERVAL_S`` old, unless a parked poll waits for its time), the last full sync
and the reconcile report of its night. And orders received per hour per channel, for the chart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import ChannelAccount, Order, OutboxMessage, ReconcileReport, SyncRun

__all__ = ["AccountStatus", "Hourly", "account_statuses", "orders_per_hour", "status_json"]


@dataclass(frozen=True)
class AccountStatus:
    name: str
    channel: str
    active: bool
    polled: bool  # has API credentials (a webhook-only account is never polled)
    cursor: dt.datetime | None
    lag_s: float | None
    last_poll: SyncRun | None
    next_poll: dt.datetime | None  # None: never (inactive or webhook-only)
    parked_until: dt.datetime | None
    last_full: SyncRun | None
    report: ReconcileReport | None


def _latest_runs(session: Session, kind: str) -> dict[int, SyncRun]:
    newest = (
        select(func.max(SyncRun.id))
        .where(SyncRun.kind == kind)
        .group_by(SyncRun.channel_account_id)
        .scalar_subquery()
    )
    runs = session.scalars(select(SyncRun).where(SyncRun.id.in_(newest))).all()
    return {run.channel_account_id: run for run in runs}


def account_statuses(
    session: Session, *, now: dt.datetime, poll_interval_s: int
) -> list[AccountStatus]:
    accounts = session.scalars(select(ChannelAccount).order_by(ChannelAccount.name)).all()
    polls = _latest_runs(session, "poll")
    fulls = _latest_runs(session, "full")
    parked = dict(
        session.execute(
            select(OutboxMessage.channel_account_id, func.max(OutboxMessage.not_before))
            .where(
                OutboxMessage.published_at.is_(None), OutboxMessage.channel_account_id.is_not(None)
            )
            .group_by(OutboxMessage.channel_account_id)
        ).all()
    )
    report_ids = {r.reconcile_report_id for r in fulls.values() if r.reconcile_report_id}
    reports = {
        r.id: r
        for r in session.scalars(select(ReconcileReport).where(ReconcileReport.id.in_(report_ids)))
    }
    out = []
    interval = dt.timedelta(seconds=poll_interval_s)
    for a in accounts:
        polled = bool(a.credentials)
        until = parked.get(a.id)
        if not (a.active and polled):
            next_poll = None
        elif until is not None:
            next_poll = until
        else:
            next_poll = max(now, a.poll_cursor + interval) if a.poll_cursor else now
        full = fulls.get(a.id)
        out.append(
            AccountStatus(
                name=a.name,
                channel=a.channel,
                active=a.active,
                polled=polled,
                cursor=a.poll_cursor,
                lag_s=(now - a.poll_cursor).total_seconds() if a.poll_cursor else None,
                last_poll=polls.get(a.id),
                next_poll=next_poll,
                parked_until=until,
                last_full=full,
                report=reports.get(full.reconcile_report_id or 0) if full else None,
            )
        )
    return out


@dataclass(frozen=True)
class Hourly:
    """Orders received per hour per channel, ``hours`` hours up to ``end`` (exclusive)."""

    start: dt.datetime
    hours: int
    counts: dict[str, list[int]] = field(default_factory=dict)  # channel → one count an hour


def orders_per_hour(session: Session, *, now: dt.datetime, days: int = 3) -> Hourly:
    """Orders by the hour we received them (``created_at``), for the last ``days`` days."""
    end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    hours = days * 24
    start = end - dt.timedelta(hours=hours)
    counts: dict[str, list[int]] = {}
    rows = session.execute(select(Order.channel, Order.created_at).where(Order.created_at >= start))
    for channel, created in rows:
        slot = int((created - start).total_seconds() // 3600)
        if 0 <= slot < hours:
            counts.setdefault(channel, [0] * hours)[slot] += 1
    return Hourly(start, hours, dict(sorted(counts.items())))


def _when(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _run(run: SyncRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "status": run.status,
        "started_at": _when(run.started_at),
        "finished_at": _when(run.finished_at),
        "window_from": _when(run.window_from),
        "window_to": _when(run.window_to),
        "seen": run.orders_seen,
        "changed": run.orders_changed,
        "created": run.orders_created,
        "states_repaired": run.states_repaired,
        "flagged": run.mismatches_flagged,
        "error": run.error,
    }


def _report(report: ReconcileReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "id": report.id,
        "started_at": _when(report.started_at),
        "finished_at": _when(report.finished_at),
        "accounts": report.accounts,
        "seen": report.seen,
        "created": report.created,
        "updated": report.updated,
        "states_repaired": report.states_repaired,
        "flagged": report.flagged,
        "errors": report.errors,
    }


def status_json(status: AccountStatus) -> dict[str, Any]:
    return {
        "account": status.name,
        "channel": status.channel,
        "active": status.active,
        "polled": status.polled,
        "cursor": _when(status.cursor),
        "lag_s": None if status.lag_s is None else round(status.lag_s, 1),
        "last_poll": _run(status.last_poll),
        "next_poll": _when(status.next_poll),
        "parked_until": _when(status.parked_until),
        "last_full_sync": _run(status.last_full),
        "reconcile_report": _report(status.report),
    }
