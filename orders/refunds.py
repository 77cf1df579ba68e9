"""Refunding the money we captured, all that is left of it, once: for a cancelled order (after
any partial refunds of lines or amounts), and for an order whose marketplace collected the
money too.

Only a payment we captured (with the provider's id) is refundable, and only until its refund is
recorded; money the marketplace collected it refunds itself. The refund is made under the
idempotency key ``refund:{order_id}``, claimed before the call. A refund that fails for good
leaves the order cancelled and puts ``refund_failed`` on its timeline; staff retry it.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Payment, Refund
from db.session import Transaction
from domain.states import OrderState
from orders import idempotency
from orders.intake import record_event
from orders.steps import Outcome
from orders.transitions import load_for_update

__all__ = [
    "RefundProvider",
    "RefundedPayment",
    "left_to_refund",
    "record_failure",
    "refund",
    "refundable",
]

ACTOR = "task:refund_payment"
#: the payment rows whose money is at our payment provider (``PaymentsClient.name``)
PROVIDER = "payments"
#: refunds that have given money back, or are being made (a staff refund before its call)
SETTLED = ("succeeded", "pending", "requested")
REASON = "requested_by_customer"


class RefundedPayment(Protocol):
    """What the provider answers to a refund (``replayed``: from its idempotency cache)."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def currency(self) -> str: ...
    @property
    def replayed(self) -> bool: ...


class RefundProvider(Protocol):
    """The payment provider: at most one refund per idempotency key."""

    def refund(
        self,
        *,
        payment_intent: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        order_ref: str | None = None,
        reason: str | None = None,
    ) -> RefundedPayment: ...


def left_to_refund(session: Session, payment: Payment) -> Decimal:
    """What of ``payment`` has not gone back yet: its amount less every refund recorded on its
    order (ours, staff's, the marketplace's), never below zero."""
    refunded = session.scalars(
        select(Refund.amount).where(Refund.order_id == payment.order_id, Refund.status.in_(SETTLED))
    ).all()
    return max(payment.amount - sum(refunded, Decimal(0)), Decimal(0))


def refundable(session: Session, order_id: int) -> Payment | None:
    """The order's payment if we captured it at our provider and something of it is left to
    refund (the marketplace refunds what it collected or captured itself)."""
    payment = session.scalar(select(Payment).where(Payment.order_id == order_id))
    if payment is None or payment.collected_by_marketplace or not payment.external_id:
        return None
    if payment.provider != PROVIDER:
        return None  # captured on the marketplace (Shopify): it refunds on its side
    if session.scalar(select(Refund.id).where(Refund.idempotency_key.like(
            f"refund:{order_id}%"), Refund.source == "provider")) is not None:  # fmt: skip
        return None  # the full refund of a cancellation was made
    return payment if left_to_refund(session, payment) > 0 else None


def refund(
    transaction: Transaction,
    order_id: int,
    provider: Callable[[], RefundProvider],
    keys: idempotency.Claimant,
) -> Outcome:
    """Refund our captured payment of a cancelled order, or of one the marketplace collected,
    in full. ``provider`` is built only when there is something to refund."""
    with transaction() as session:
        order = load_for_update(session, order_id)
        paid_twice = bool(order.payment_collected_by_marketplace)
        if OrderState(order.state) != OrderState.CANCELLED and not paid_twice:
            return Outcome(f"skip: {order.state}")
        payment = refundable(session, order_id)
        if payment is None:
            return Outcome("nothing to refund")
        intent, currency = str(payment.external_id), payment.currency
        amount = left_to_refund(session, payment)  # all that is left after partial refunds
        payment_id = payment.id
        params = {"payment_intent": intent, "amount": str(amount), "currency": currency}
        key = keys.claim(session, f"refund:{order_id}", params, point="refund_sent")
    with keys.outside_call(key):
        refunded = provider().refund(
            payment_intent=intent, amount=amount, currency=currency, idempotency_key=key,
            order_ref=str(order_id), reason=REASON,
        )  # fmt: skip
    with transaction() as session:
        load_for_update(session, order_id)  # one refund writer per order at a time
        if refundable(session, order_id) is None:
            return Outcome("already recorded")
        session.add(
            Refund(payment_id=payment_id, order_id=order_id, provider="payments",
                   external_id=refunded.id, amount=refunded.amount, currency=refunded.currency,
                   status=refunded.status, reason=REASON, idempotency_key=key)
        )  # fmt: skip
        idempotency.finish(session, key, {"id": refunded.id, "status": refunded.status})
        record_event(session, order_id, actor=ACTOR, kind="refunded", refund=refunded.id,
                     amount=str(refunded.amount), currency=refunded.currency,
                     replayed=refunded.replayed)  # fmt: skip
    return Outcome("refunded")


def record_failure(session: Session, order_id: int, *, error: str, attempts: int) -> None:
    """The refund failed for good: the order stays cancelled; the failure goes on its timeline
    for staff, who retry it (``ordersync orders retry``) once the cause is fixed."""
    record_event(session, order_id, actor=ACTOR, kind="refund_failed", error=error,
                 attempts=attempts)  # fmt: skip
