"""Sync status: ``/sync`` (with a chart of orders per hour per channel, drawn as SVG on the
server) and ``/api/sync``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from core.settings import get_settings
from db.base import utcnow
from orders.sync_status import Hourly, account_statuses, orders_per_hour, status_json
from web.auth import STAFF_RESPONSES
from web.sessions import SessionDep
from web.templating import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api", tags=["staff"], responses=STAFF_RESPONSES)
pages = APIRouter(include_in_schema=False)
#: one colour per channel, in the order the chart lists them
PALETTE = ("#0b57d0", "#b00020", "#1b6e2d", "#9a5b00", "#6f2dbd", "#00796b", "#555555")
CHART_W, CHART_H, PAD_L, PAD_B, PAD_T = 900, 220, 40, 28, 10


class RunOut(BaseModel):
    status: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    window_from: dt.datetime | None
    window_to: dt.datetime | None
    seen: int
    changed: int
    created: int
    states_repaired: int
    flagged: int
    error: str | None


class ReportOut(BaseModel):
    id: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    accounts: int
    seen: int
    created: int
    updated: int
    states_repaired: int
    flagged: int
    errors: int


class AccountSyncOut(BaseModel):
    account: str
    channel: str
    active: bool
    polled: bool
    cursor: dt.datetime | None
    lag_s: float | None
    last_poll: RunOut | None
    next_poll: dt.datetime | None
    parked_until: dt.datetime | None
    last_full_sync: RunOut | None
    reconcile_report: ReportOut | None


class SyncStatusOut(BaseModel):
    accounts: list[AccountSyncOut]
    orders_per_hour: dict[str, list[int]]
    hours_from: dt.datetime


def chart(hourly: Hourly) -> dict[str, Any]:
    """Polylines (one per channel) and axis ticks of the orders-per-hour chart, in SVG units."""
    top = max([1, *(n for counts in hourly.counts.values() for n in counts)])
    inner_w, inner_h = CHART_W - PAD_L - 10, CHART_H - PAD_B - PAD_T
    step = inner_w / max(1, hourly.hours - 1)

    def y(n: int) -> float:
        return round(PAD_T + inner_h - inner_h * n / top, 1)

    lines = [
        {
            "channel": channel,
            "colour": PALETTE[i % len(PALETTE)],
            "total": sum(counts),
            "points": " ".join(
                f"{round(PAD_L + h * step, 1)},{y(n)}" for h, n in enumerate(counts)
            ),
        }
        for i, (channel, counts) in enumerate(hourly.counts.items())
    ]
    days = [
        {
            "x": round(PAD_L + h * step, 1),
            "label": (hourly.start + dt.timedelta(hours=h)).strftime("%m-%d %H:00"),
        }
        for h in range(0, hourly.hours, 12)
    ]
    return {
        "width": CHART_W,
        "height": CHART_H,
        "lines": lines,
        "ticks": days,
        "top": top,
        "y_top": y(top),
        "y_zero": y(0),
        "x0": PAD_L,
        "x1": CHART_W - 10,
    }


@api.get("/sync", response_model=SyncStatusOut)
def sync_status(session: SessionDep) -> dict[str, Any]:
    now = utcnow()
    statuses = account_statuses(session, now=now, poll_interval_s=get_settings().poll_interval_s)
    hourly = orders_per_hour(session, now=now)
    return {
        "accounts": [status_json(s) for s in statuses],
        "orders_per_hour": hourly.counts,
        "hours_from": hourly.start,
    }


@pages.get("/sync", response_class=HTMLResponse)
def sync_page(request: Request, session: SessionDep) -> HTMLResponse:
    now = utcnow()
    statuses = account_statuses(session, now=now, poll_interval_s=get_settings().poll_interval_s)
    hourly = orders_per_hour(session, now=now)
    return render(
        request, "sync.html", now=now, statuses=statuses, chart=chart(hourly), hourly=hourly
    )
