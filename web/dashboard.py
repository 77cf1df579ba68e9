"""The staff dashboard, server-rendered: where every order stands, what is stuck and why.

- ``/``: counts by state, orders that need attention (step, error, attempts, Retry), effects not
  delivered to the marketplaces (last error, Retry), webhooks that failed (parse error, Retry),
  the latest sync run of each account, on-hold orders with the SKUs they wait for;
- ``/orders?state=&channel=&q=&page=``: the order list, filtered and paged (``q``: an order
  number, a marketplace id, our id or the buyer's name; the list never shows the name);
- ``/orders/{id}``: one order: totals, lines, payment, invoice, its shipments (lines, location,
  label, tracking; reprint, ship this parcel, void, void and re-buy; ship some lines and
  units now), what went to its
  marketplace with each attempt, timeline, actions (ship, mark shipped by hand, hold/release,
  cancel with a reason);
- ``/stock[?sku=]``: every SKU's on hand / reserved / available with its listings' pending and
  failed pushes and open drift (problems first); one SKU: per channel listing what it should
  show, what we last pushed and when, and drift with both numbers.

Pages only read. Every button posts to the staff JSON API (``web/api.py``) with ``fetch``
(``static/dashboard.js``), so a retry here is exactly the retry of the API and the CLI, and a
second click gets the API's 409, shown as "already done". Templates autoescape everything; list
pages show no buyer data at all, the detail page only the name and the city.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session, selectinload

from db.models import (
    ChannelAccount,
    InboxEvent,
    Invoice,
    Label,
    Order,
    OrderEvent,
    OutboxAttempt,
    OutboxMessage,
    Payment,
    Refund,
    Shipment,
    SyncRun,
)
from domain.states import InboxStatus, OrderState
from integrations import registry
from orders.refunds import PROVIDER as OUR_PROVIDER
from web.api import MAX_ID, NO_NUL, Id, load_order, summary, undelivered
from web.sessions import SessionDep
from web.templating import HERE, render

__all__ = ["router"]

PAGE_SIZE = 50
#: past it the OFFSET would not fit PostgreSQL's BIGINT (a 500): a 422 instead
MAX_PAGE = 10**9
# how much of each worklist the overview shows; the full lists are one click away
OVERVIEW_LIMIT = 50

router = APIRouter(tags=["dashboard"], include_in_schema=False)
router.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


def _render(request: Request, name: str, **context: Any) -> HTMLResponse:
    return render(request, name, **context)


# --- overview ---------------------------------------------------------------------------------


def _latest_sync_runs(session: Session) -> list[tuple[SyncRun, ChannelAccount]]:
    """The newest run of each kind (poll, full sync) of each account, failed first."""
    newest = (
        select(func.max(SyncRun.id))
        .group_by(SyncRun.channel_account_id, SyncRun.kind)
        .scalar_subquery()
    )
    rows = session.execute(
        select(SyncRun, ChannelAccount)
        .join(ChannelAccount, ChannelAccount.id == SyncRun.channel_account_id)
        .where(SyncRun.id.in_(newest))
        .order_by(ChannelAccount.name, SyncRun.kind)
    ).all()
    return sorted(((run, account) for run, account in rows), key=lambda r: r[0].status != "failed")


def _on_hold(session: Session) -> list[tuple[Order, dict[str, int]]]:
    """On-hold orders, oldest first, each with what its last ``on_hold`` transition was short of."""
    orders = session.scalars(
        select(Order)
        .where(Order.state == OrderState.ON_HOLD)
        .order_by(Order.updated_at)
        .limit(OVERVIEW_LIMIT)
    ).all()
    last = _latest_detail(
        session,
        [o.id for o in orders],
        OrderEvent.kind == "transition",
        OrderEvent.to_state == OrderState.ON_HOLD,
    )
    return [(o, last.get(o.id, {}).get("short") or {}) for o in orders]


def _latest_detail(
    session: Session, order_ids: list[int], *where: ColumnElement[bool]
) -> dict[int, dict[str, Any]]:
    """Per order, the detail of its newest timeline row matching ``where``."""
    latest: dict[int, dict[str, Any]] = {}
    for order_id, detail in session.execute(
        select(OrderEvent.order_id, OrderEvent.detail)
        .where(OrderEvent.order_id.in_(order_ids), *where)
        .order_by(OrderEvent.id)
    ):
        latest[order_id] = detail or {}  # the newest one wins
    return latest


def _refunds_owed(session: Session) -> list[tuple[Order, Payment, dict[str, Any]]]:
    """Cancelled orders whose money we captured at our provider and whose cancellation refund is
    not made yet (in flight, or refused: then with the provider's answer from the last
    ``refund_failed`` row). Money captured on the marketplace it refunds itself."""
    rows = session.execute(
        select(Order, Payment)
        .join(Payment, Payment.order_id == Order.id)
        .where(
            Order.state == OrderState.CANCELLED,
            Payment.collected_by_marketplace.is_(False),
            Payment.external_id.is_not(None),
            Payment.provider == OUR_PROVIDER,
            ~select(Refund.id)
            .where(Refund.payment_id == Payment.id, Refund.source == "provider")
            .exists(),
        )
        .order_by(Order.updated_at)
        .limit(OVERVIEW_LIMIT)
    ).all()
    failures = _latest_detail(session, [o.id for o, _ in rows], OrderEvent.kind == "refund_failed")
    return [(o, p, failures.get(o.id, {})) for o, p in rows]


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep) -> HTMLResponse:
    return _render(
        request,
        "index.html",
        now=dt.datetime.now(dt.UTC),
        counts=summary(session),
        attention=session.scalars(
            select(Order)
            .where(Order.state == OrderState.NEEDS_ATTENTION)
            .order_by(Order.updated_at.desc())
            .limit(OVERVIEW_LIMIT)
        ).all(),
        failed=session.execute(
            select(InboxEvent, ChannelAccount.name)
            .join(ChannelAccount, ChannelAccount.id == InboxEvent.channel_account_id)
            .where(InboxEvent.status == InboxStatus.FAILED)
            .order_by(InboxEvent.id.desc())
            .limit(OVERVIEW_LIMIT)
        ).all(),
        sync_runs=_latest_sync_runs(session),
        on_hold=_on_hold(session),
        refunds_owed=_refunds_owed(session),
        undelivered=undelivered(session, OVERVIEW_LIMIT),
        limit=OVERVIEW_LIMIT,
    )


# --- order list -------------------------------------------------------------------------------


def _conditions(state: str, channel: str, q: str) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if state:
        conditions.append(Order.state == state)
    if channel:
        conditions.append(Order.channel == channel)
    if q:
        # an order number, a marketplace id, the buyer's name, or our own id
        match = [
            Order.external_number.icontains(q, autoescape=True),
            Order.external_id.icontains(q, autoescape=True),
            Order.buyer_name.icontains(q, autoescape=True),
        ]
        digits = q.lstrip("#")
        # ASCII digits only ("²".isdigit() is true) that fit the INTEGER id
        if digits.isascii() and digits.isdigit() and int(digits) <= MAX_ID:
            match.append(Order.id == int(digits))
        conditions.append(or_(*match))
    return conditions


@router.get("/orders", response_class=HTMLResponse)
def orders(
    request: Request,
    state: str = "",
    channel: str = "",
    q: str = Query("", max_length=100, pattern=NO_NUL),
    page: int = Query(1, ge=1, le=MAX_PAGE),
    *,
    session: SessionDep,
) -> HTMLResponse:
    q = q.strip()
    if state and state not in set(OrderState):
        raise HTTPException(400, f"unknown state {state!r}")
    if channel and channel not in registry.marketplaces():
        raise HTTPException(400, f"unknown channel {channel!r}")
    where = _conditions(state, channel, q)
    total = session.scalar(select(func.count()).select_from(Order).where(*where)) or 0
    rows = session.execute(
        select(Order, ChannelAccount.name)
        .join(ChannelAccount, ChannelAccount.id == Order.channel_account_id)
        .where(*where)
        .order_by(Order.id.desc())
        .offset((page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE)
    ).all()
    pages = max(1, math.ceil(total / PAGE_SIZE))
    filters = {k: v for k, v in {"state": state, "channel": channel, "q": q}.items() if v}

    def page_url(n: int) -> str:
        return "/orders?" + urlencode({**filters, "page": n})

    return _render(
        request,
        "orders.html",
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        prev_url=page_url(page - 1) if page > 1 else None,
        next_url=page_url(page + 1) if page < pages else None,
        state=state,
        channel=channel,
        q=q,
        channels=list(registry.marketplaces()),
    )


# --- one order --------------------------------------------------------------------------------


@router.get("/orders/{order_id}", response_class=HTMLResponse)
def order_detail(request: Request, order_id: Id, session: SessionDep) -> HTMLResponse:
    order = load_order(session, order_id)
    account = session.get(ChannelAccount, order.channel_account_id)
    payment = session.scalar(select(Payment).where(Payment.order_id == order_id))
    refunds = session.scalars(
        select(Refund).where(Refund.order_id == order_id).order_by(Refund.id)
    ).all()
    # columns only: the PDFs stay in the database until someone opens them
    invoices = session.execute(
        select(
            Invoice.kind,
            Invoice.full_number,
            Invoice.total,
            Invoice.currency,
            Invoice.issued_at,
            Invoice.pdf.is_not(None).label("has_pdf"),
        )
        .where(Invoice.order_id == order_id)
        .order_by(Invoice.id)
    ).all()
    shipments = session.scalars(
        select(Shipment)
        .where(Shipment.order_id == order_id)
        .options(selectinload(Shipment.lines))
        .order_by(Shipment.id)
    ).all()
    # the label in use (a voided one is history, on the timeline)
    label = session.execute(
        select(Label.carrier, Label.tracking_number, Label.created_at)
        .join(Shipment, Shipment.id == Label.shipment_id)
        .where(Shipment.order_id == order_id, Label.voided_at.is_(None))
        .order_by(Label.id.desc())
        .limit(1)
    ).one_or_none()
    messages = session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.order_id == order_id, OutboxMessage.kind.is_not(None))
        .order_by(OutboxMessage.id)
    ).all()
    attempts: dict[int, list[OutboxAttempt]] = {}
    for attempt in session.scalars(
        select(OutboxAttempt)
        .where(OutboxAttempt.message_id.in_([m.id for m in messages]))
        .order_by(OutboxAttempt.id)
    ):
        attempts.setdefault(attempt.message_id, []).append(attempt)
    # units of each line that wait to ship and nobody asked for yet: the "ship some lines"
    # form (its key makes a double submit one request)
    waiting: dict[str, int] = {}
    for shipment in shipments:
        if shipment.status in ("pending", "labelled") and shipment.ship_request is None:
            for sl in shipment.lines:
                waiting[sl.line_external_id] = waiting.get(sl.line_external_id, 0) + sl.quantity
    address = order.shipping_address or {}
    return _render(
        request,
        "order.html",
        waiting=waiting,
        ship_key=secrets.token_urlsafe(16),
        order=order,
        account=account.name if account else "",
        ship_to={
            "name": address.get("name") or order.buyer_name,
            "city": address.get("city"),
            "country": address.get("country_code"),
        },
        payment=payment,
        refunds=refunds,
        invoices=invoices,
        shipments=shipments,
        label=label,
        messages=messages,
        attempts=attempts,
    )


# --- stock ------------------------------------------------------------------------------------

STOCK_LIMIT = 500


@router.get("/stock", response_class=HTMLResponse)
def stock(
    request: Request, session: SessionDep, sku: str = Query("", max_length=100, pattern=NO_NUL)
) -> HTMLResponse:
    from orders.stock_view import stock_overview, stock_view

    sku = sku.strip()
    if sku:
        return _render(request, "stock.html", sku=sku, view=stock_view(session, sku))
    return _render(request, "stock.html", sku="", rows=stock_overview(session, limit=STOCK_LIMIT),
                   limit=STOCK_LIMIT)  # fmt: skip
