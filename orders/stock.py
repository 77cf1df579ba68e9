"""Stock: reservations that can never oversell (invariant 6).

A reservation is one conditional update per SKU, ``reserved = reserved + q WHERE on_hand -
reserved >= q``, in the same transaction as the order's state change; if any line is short,
the savepoint is rolled back (no partial reservation) and the order goes ``on_hold``. The
database's CHECK constraints (``0 <= reserved <= on_hand``) are the last line of defence.

SKUs with no ``stock_items`` row are not stock-managed (like "don't track inventory" in a shop)
and reserve nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import Order, OrderLine, StockItem, StockReservation
from db.session import core, dialect_insert, rowcount

__all__ = [
    "ReservationResult",
    "consume",
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
    return len(held)


def release(session: Session, order_id: int) -> int:
    """Give the order's held units back (cancellation)."""
    return _settle(session, order_id, RELEASED, consume_on_hand=False)


def consume(session: Session, order_id: int) -> int:
    """The parcel left: held units leave the shelf."""
    return _settle(session, order_id, CONSUMED, consume_on_hand=True)


def set_on_hand(session: Session, sku: str, on_hand: int) -> int:
    """Set the counted quantity of a SKU (creating it); returns the units now available."""
    if on_hand < 0:
        raise ValueError("on_hand cannot be negative")
    reserved = session.scalar(
        select(StockItem.reserved).where(StockItem.sku == sku).with_for_update()
    )
    if reserved is not None and on_hand < reserved:
        raise ValueError(f"{sku}: {reserved} units are reserved by open orders; on hand >= that")
    session.execute(
        dialect_insert(session)(StockItem)
        .values(sku=sku, on_hand=on_hand, reserved=0, updated_at=utcnow())
        .on_conflict_do_update(
            index_elements=["sku"], set_={"on_hand": on_hand, "updated_at": utcnow()}
        )
    )
    available = session.scalar(
        select(StockItem.on_hand - StockItem.reserved).where(StockItem.sku == sku)
    )
    return int(available or 0)


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
