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

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Order, OrderLine, Payment, Refund, StockItem, StockReservation
from db.session import dialect_insert
from domain.canonical import CanonicalRefund
from orders.intake import record_event
from orders.stock import give_back, mark_dirty, return_to_shelf

__all__ = ["key_of", "record_marketplace_refunds", "refunded_total", "restock", "unrecorded"]

HELD = "held"


def key_of(account_id: int, refund_id: str) -> str:
    return f"marketplace-refund:{account_id}:{refund_id}"


def unrecorded(
    session: Session, account_id: int, refunds: Sequence[CanonicalRefund]
) -> list[CanonicalRefund]:
    """The refunds of the account not recorded yet (by their marketplace id)."""
    keys = {key_of(account_id, r.external_id): r for r in refunds}
    known = set(
        session.scalars(select(Refund.idempotency_key).where(Refund.idempotency_key.in_(keys)))
    )
    return [r for key, r in keys.items() if key not in known]


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
        give_back(session, held, units)
        held.quantity -= units
        if held.quantity == 0:
            held.status = "released"
        mark_dirty(session, {sku})  # available again: the channels are told
        return "released"
    shipped = session.scalar(
        select(StockReservation).where(
            StockReservation.order_id == order_id, StockReservation.sku == sku,
            StockReservation.status == "consumed",
        )
    )  # fmt: skip
    if shipped is None or not shipped.quantity:
        return None
    return_to_shelf(session, shipped, min(quantity, shipped.quantity))  # where it left from
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
    if payment_id is None and unrecorded(session, order.channel_account_id, refunds):
        from orders.payments import record_collected

        collected = record_collected(session, order)  # refunded before the pipeline paid it
        payment_id = collected.id if collected is not None else None
    rows = session.execute(
        select(OrderLine.external_id, OrderLine.sku).where(OrderLine.order_id == order.id)
    ).all()
    skus = {str(external_id): sku for external_id, sku in rows}
    cancel_refund = session.scalar(
        select(Refund.id).where(Refund.idempotency_key == cancel_refund_key(order.id))
    )
    for refund in refunds:
        if cancel_refund is not None and _covered_by_cancellation(session, order, refund):
            continue
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


def _covered_by_cancellation(session: Session, order: Order, refund: CanonicalRefund) -> bool:
    """A refund the marketplace reports after we recorded the one our cancellation made there
    (``refunded_with_cancellation``) is that same money when it is more than is left of what
    it collected: noted on the timeline, not counted twice."""
    paid = session.scalar(select(Payment.amount).where(Payment.order_id == order.id))
    if paid is None or refunded_total(session, order.id) + refund.amount <= paid:
        return False
    record_event(session, order.id, actor="system", kind="refund_already_counted",
                 refund=refund.external_id, amount=str(refund.amount))  # fmt: skip
    return True


def refunded_total(session: Session, order_id: int) -> Decimal:
    """Money given back on the order so far, by anyone (succeeded refunds)."""
    rows = session.scalars(
        select(Refund.amount).where(Refund.order_id == order_id, Refund.status == "succeeded")
    ).all()
    return sum(rows, Decimal(0))


def cancel_refund_key(order_id: int) -> str:
    return f"cancel-refund:{order_id}"


def refunded_with_cancellation(session: Session, order_id: int, *, actor: str) -> Refund | None:
    """Our cancellation reached a marketplace that gives the buyer back what it collected with
    it (Shopify's ``orderCancel``, an eBay seller cancellation, WooCommerce's gateway refund):
    what is left of the money the marketplace collected, or that we captured there, is
    recorded once as the marketplace's refund of the cancellation (``source`` ``cancellation``:
    the cancellation's credit note covers it, no credit note of its own). Nothing for money we
    captured (we refund that ourselves) or for an order with nothing left to give back."""
    payment = session.scalar(select(Payment).where(Payment.order_id == order_id))
    order = session.get_one(Order, order_id)
    held_there = payment is not None and (
        payment.collected_by_marketplace or payment.provider == order.channel  # orderCapture
    )
    if payment is None or not held_there:
        return None
    left = payment.amount - refunded_total(session, order_id)
    if left <= 0:
        return None
    inserted = session.execute(
        dialect_insert(session)(Refund)
        .values(order_id=order_id, payment_id=payment.id, provider=order.channel,
                source="cancellation", external_id=None, amount=left,
                currency=payment.currency, status="succeeded", reason="cancelled",
                idempotency_key=cancel_refund_key(order_id), lines=None,
                requested_by=actor, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Refund.id)
    ).scalar_one_or_none()  # fmt: skip
    if inserted is None:
        return None
    record_event(session, order_id, actor=actor, kind="refunded_on_marketplace",
                 refund="cancellation", amount=str(left), lines=0, shipping="0",
                 restocked={})  # fmt: skip
    return session.get(Refund, inserted)

