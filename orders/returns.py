"""Refunds and returns the marketplace made: recorded once each, with the units it says are
restocked back on our shelf, and a credit note of exactly what it refunded (``documents``).

A marketplace refund is a ``refunds`` row (``source`` ``marketplace``) whose idempotency key is
the marketplace's refund id (``marketplace-refund:{account}:{id}``), inserted with ``ON
CONFLICT DO NOTHING``: however many deliveries, polls and order updates carry the same refund,
one insert wins, and only that transaction restocks and schedules the credit note. Restocked
units of an order still holding them are released (they will not ship); units already shipped
go back on hand (a return).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Order, OrderLine, Payment, Refund, StockItem, StockReservation
from db.session import dialect_insert
from domain.canonical import CanonicalRefund
from orders.intake import record_event
from orders.stock import mark_dirty

__all__ = ["key_of", "record_marketplace_refunds", "refunded_total", "restock"]

HELD = "held"


def key_of(account_id: int, refund_id: str) -> str:
    return f"marketplace-refund:{account_id}:{refund_id}"


def restock(session: Session, order_id: int, sku: str, quantity: int) -> str | None:
    """``quantity`` units of ``sku`` of the order back on the shelf: released from its held
    reservation if it still holds them, back on hand if they left with its parcel (consumed),
    else nothing (they never left the shelf). Returns how (``released`` / ``returned``), or
    None when nothing moved."""
    if quantity <= 0 or session.get(StockItem, sku) is None:
        return None
    held = session.scalar(
        select(StockReservation)
        .where(
            StockReservation.order_id == order_id,
            StockReservation.sku == sku,
            StockReservation.status == HELD,
        )
        .with_for_update()
    )
    if held is not None:
        units = min(quantity, held.quantity)
        session.execute(
            update(StockItem)
            .where(StockItem.sku == sku)
            .values(reserved=StockItem.reserved - units, updated_at=utcnow())
        )
        held.quantity -= units
        if held.quantity == 0:
            held.status = "released"
        mark_dirty(session, {sku})  # available again: the channels are told
        return "released"
    shipped = session.scalar(
        select(StockReservation.quantity).where(
            StockReservation.order_id == order_id, StockReservation.sku == sku,
            StockReservation.status == "consumed",
        )
    )  # fmt: skip
    if not shipped:
        return None
    session.execute(
        update(StockItem)
        .where(StockItem.sku == sku)
        .values(on_hand=StockItem.on_hand + min(quantity, shipped), updated_at=utcnow())
    )
    mark_dirty(session, {sku})
    return "returned"


def record_marketplace_refunds(
    session: Session, order: Order, refunds: Sequence[CanonicalRefund], *, actor: str
) -> list[int]:
    """Record each refund not recorded yet and restock what it says; returns the new refund
    rows' ids (empty when every one was known). The caller holds the order's row lock or its
    intake transaction."""
    new: list[int] = []
    if not refunds:
        return new
    payment_id = session.scalar(select(Payment.id).where(Payment.order_id == order.id))
    rows = session.execute(
        select(OrderLine.external_id, OrderLine.sku).where(OrderLine.order_id == order.id)
    ).all()
    skus = {str(external_id): sku for external_id, sku in rows}
    for refund in refunds:
        inserted = session.execute(
            dialect_insert(session)(Refund)
            .values(
                order_id=order.id, payment_id=payment_id, provider=order.channel,
                source="marketplace", external_id=refund.external_id, amount=refund.amount,
                currency=refund.currency or order.currency, status="succeeded",
                reason="marketplace", idempotency_key=key_of(order.channel_account_id,
                                                             refund.external_id),
                lines=[
                    {"line": line.line_external_id, "quantity": line.quantity,
                     "amount": str(line.subtotal), "tax": str(line.tax),
                     "restock": line.restock}
                    for line in refund.lines
                ],
                shipping=refund.shipping + refund.shipping_tax, requested_by=actor,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(Refund.id)
        ).scalar_one_or_none()  # fmt: skip
        if inserted is None:
            continue  # another delivery of the same refund recorded it
        new.append(inserted)
        restocked: dict[str, int] = {}
        for line in refund.lines:
            sku = skus.get(line.line_external_id)
            if line.restock and sku:
                how = restock(session, order.id, sku, line.quantity)
                if how:
                    restocked[sku] = restocked.get(sku, 0) + line.quantity
        record_event(session, order.id, actor=actor, kind="refunded_on_marketplace",
                     refund=refund.external_id, amount=str(refund.amount),
                     lines=len(refund.lines), shipping=str(refund.shipping),
                     restocked=restocked)  # fmt: skip
    return new


def refunded_total(session: Session, order_id: int) -> Decimal:
    """Money given back on the order so far, by anyone (succeeded refunds)."""
    rows = session.scalars(
        select(Refund.amount).where(Refund.order_id == order_id, Refund.status == "succeeded")
    ).all()
    return sum(rows, Decimal(0))
