"""Stock: reservations that can never oversell (invariant 6).

A reservation is one conditional update per SKU, ``reserved = reserved + q WHERE on_hand -
reserved >= q``, in the same transaction as the order's state change; if any line is short,
the savepoint is rolled back (no partial reservation) and the order goes ``on_hold``. The
database's CHECK constraints (``0 <= reserved <= on_hand``) are the last line of defence.

SKUs with no ``stock_items`` row are not stock-managed (like "don't track inventory" in a shop)
and reserve nothing.

Every change of what is available (a reservation, a release, a count set by staff) marks the
SKU's channel listings dirty in the same transaction (``mark_dirty``): their ``want_version``
goes up, so the flusher (``orders/stock_push.py``) pushes the quantity as it is when it sends,
and the accounts to flush are left on ``session.info`` for the after-commit trigger
(``workflows/stock.py``). Consuming held units when a parcel ships leaves available as it was
(on hand and reserved both fall), so it marks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, false, func, insert, select, update
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import Listing, Order, OrderLine, StockItem, StockReservation
from db.session import core, dialect_insert, rowcount

__all__ = [
    "DIRTY_ACCOUNTS",
    "ReservationResult",
    "consume",
    "mark_dirty",
    "orders_waiting_for",
    "release",
    "reserve",
    "set_on_hand",
]

HELD, RELEASED, CONSUMED = "held", "released", "consumed"


@dataclass(frozen=True)
class ReservationResult:
    ok: bool
    short: dict[str, int]  # sku → units missing
    reserved: dict[str, int]


_lines, _items = table(OrderLine), table(StockItem)
# prebuilt (see db.session.core)
_WANTED = (
    select(_lines.c.sku, func.sum(_lines.c.quantity))
    .join(_items, _items.c.sku == _lines.c.sku)
    .where(_lines.c.order_id == bindparam("b_order"))
    .group_by(_lines.c.sku)
    .order_by(_lines.c.sku)
)
_TAKE = (
    update(_items)
    .where(
        _items.c.sku == bindparam("b_sku"),
        _items.c.on_hand - _items.c.reserved >= bindparam("b_qty"),
    )
    .values(reserved=_items.c.reserved + bindparam("b_qty"), updated_at=bindparam("b_at"))
)
_HOLD = insert(table(StockReservation))
_listings = table(Listing)
_MARK = (
    update(_listings)
    .where(
        _listings.c.sku.in_(bindparam("b_skus", expanding=True)),
        _listings.c.fulfilled_by_marketplace == false(),
    )
    .values(
        want_version=_listings.c.want_version + 1,
        dirty_at=func.coalesce(_listings.c.dirty_at, bindparam("b_at")),
    )
    .returning(_listings.c.channel_account_id)
)

#: ``session.info`` key: the ids of the accounts whose listings this transaction marked dirty
DIRTY_ACCOUNTS = "ordersync.stock_dirty_accounts"


def mark_dirty(session: Session, skus: list[str] | set[str]) -> set[int]:
    """In the transaction that changed what is available of ``skus``: their listings (not
    the FBA ones) must be pushed again. Returns the accounts concerned, also kept on
    ``session.info[DIRTY_ACCOUNTS]`` for the after-commit trigger."""
    if not skus:
        return set()
    rows = core(session).execute(_MARK, {"b_skus": sorted(skus), "b_at": utcnow()})
    accounts = {int(a) for (a,) in rows}
    if accounts:
        session.info.setdefault(DIRTY_ACCOUNTS, set()).update(accounts)
    return accounts


def _wanted(session: Session, order_id: int) -> dict[str, int]:
    """Units per stock-managed SKU of the order (SKUs with no ``stock_items`` row reserve
    nothing), in SKU order: one order of locking everywhere, so orders never deadlock."""
    rows = core(session).execute(_WANTED, {"b_order": order_id})
    return {str(sku): int(qty) for sku, qty in rows if qty and qty > 0}


def reserve(session: Session, order_id: int) -> ReservationResult:
    wanted = _wanted(session, order_id)
    short: dict[str, int] = {}
    reserved: dict[str, int] = {}
    # several SKUs: a savepoint, so a short one undoes the others (no partial reservation);
    # with one SKU there is nothing to undo
    savepoint = session.begin_nested() if len(wanted) > 1 else None
    for sku, qty in wanted.items():
        took = rowcount(
            core(session).execute(_TAKE, {"b_sku": sku, "b_qty": qty, "b_at": utcnow()})
        )
        if took != 1:
            available = session.scalar(
                select(StockItem.on_hand - StockItem.reserved).where(StockItem.sku == sku)
            )
            short[sku] = qty - max(0, int(available or 0))
        else:
            reserved[sku] = qty
    if short:
        if savepoint is not None:
            savepoint.rollback()
        return ReservationResult(False, short, {})
    if reserved:
        now = utcnow()
        rows = [
            {"order_id": order_id, "sku": sku, "quantity": qty, "status": HELD, "created_at": now}
            for sku, qty in reserved.items()
        ]
        core(session).execute(_HOLD, rows if len(rows) > 1 else rows[0])
        mark_dirty(session, set(reserved))
    if savepoint is not None:
        savepoint.commit()
    return ReservationResult(True, {}, reserved)


def _settle(session: Session, order_id: int, status: str, *, consume_on_hand: bool) -> int:
    held = session.scalars(
        select(StockReservation)
        .where(StockReservation.order_id == order_id, StockReservation.status == HELD)
        .order_by(StockReservation.sku)
        .with_for_update()
    ).all()
    for reservation in held:
        values = {"reserved": StockItem.reserved - reservation.quantity, "updated_at": utcnow()}
        if consume_on_hand:
            values["on_hand"] = StockItem.on_hand - reservation.quantity
        session.execute(update(StockItem).where(StockItem.sku == reservation.sku).values(values))
        reservation.status = status
    if held and not consume_on_hand:  # a release frees units; consuming leaves available as is
        mark_dirty(session, {r.sku for r in held})
    return len(held)


def release(session: Session, order_id: int) -> int:
    """Give the order's held units back (cancellation)."""
    return _settle(session, order_id, RELEASED, consume_on_hand=False)


def consume(session: Session, order_id: int) -> int:
    """The parcel left: held units leave the shelf."""
    return _settle(session, order_id, CONSUMED, consume_on_hand=True)


def set_on_hand(session: Session, sku: str, on_hand: int, *, actor: str = "system") -> int:
    """Set the counted quantity of a SKU (creating it) as ``actor`` (``staff:cli``, a user's
    name); returns the units now available. Its listings are marked dirty."""
    if on_hand < 0:
        raise ValueError("on_hand cannot be negative")
    reserved = session.scalar(
        select(StockItem.reserved).where(StockItem.sku == sku).with_for_update()
    )
    if reserved is not None and on_hand < reserved:
        raise ValueError(f"{sku}: {reserved} units are reserved by open orders; on hand >= that")
    session.execute(
        dialect_insert(session)(StockItem)
        .values(sku=sku, on_hand=on_hand, reserved=0, counted_by=actor[:100], updated_at=utcnow())
        .on_conflict_do_update(
            index_elements=["sku"],
            set_={"on_hand": on_hand, "counted_by": actor[:100], "updated_at": utcnow()},
        )
    )
    mark_dirty(session, {sku})
    free = session.scalar(
        select(StockItem.on_hand - StockItem.reserved).where(StockItem.sku == sku)
    )
    return int(free or 0)


def orders_waiting_for(session: Session, sku: str, limit: int = 500) -> list[int]:
    """On-hold orders with a line of ``sku``, oldest first (first come, first served)."""
    return list(
        session.scalars(
            select(Order.id)
            .join(OrderLine, OrderLine.order_id == Order.id)
            .where(Order.state == "on_hold", OrderLine.sku == sku)
            .group_by(Order.id)
            .order_by(func.min(Order.created_at), Order.id)
            .limit(limit)
        ).all()
    )
