"""Refunding the money we captured, all that is left of it, once: for a cancelled order (after
any partial refunds of lines or amounts), and for an order whose marketplace collected the
money too.

Only a payment we captured (with the provider's id) is refundable, and only until its refund is
recorded; money the marketplace collected it refunds itself. The refund is made under the
idempotency key ``refund:{order_id}``, claimed before the call. A refund that fails for good
leaves the order cancelled and puts ``refund_failed`` on its timeline; staff retry it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Order, OrderLine, Payment, Refund
from db.session import Transaction
from domain.money import round_money
from domain.states import OrderState
from orders import idempotency
from orders.intake import record_event
from orders.steps import FollowUp, Outcome
from orders.transitions import load_for_update

__all__ = [
    "RefundProvider",
    "RefundRefused",
    "RefundedPayment",
    "left_to_refund",
    "make_refund",
    "record_failure",
    "refund",
    "refund_refused",
    "refundable",
    "request_refund",
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
    if session.scalar(select(Refund.id).where(Refund.order_id == order_id,
                                              Refund.source == "provider")) is not None:
        return None  # the full refund of a cancellation was made (only ``refund`` makes one)
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


# --- staff refunds of lines or an amount ------------------------------------------------------

STAFF = "staff"


class RefundRefused(Exception):
    """A staff refund that cannot be made as asked: the reason is for the person who asked."""


def _line_amounts(order: Order, wanted: Mapping[str, int]) -> list[dict[str, Any]]:
    """The asked units of each line (by line id or SKU) with their share of the line's net and
    tax, in the currency's minor unit."""
    by_key: dict[str, OrderLine] = {}
    for line in order.lines:
        by_key.setdefault(line.external_id, line)
        if line.sku:
            by_key.setdefault(line.sku, line)
    items = []
    for key, quantity in wanted.items():
        found = by_key.get(key)
        if found is None:
            raise RefundRefused(f"the order has no line {key!r}")
        line = found
        if not 0 < quantity <= line.quantity:
            raise RefundRefused(f"line {key!r} has {line.quantity} units; cannot refund {quantity}")
        share = Decimal(quantity) / Decimal(line.quantity)
        items.append({"line": line.external_id, "quantity": quantity,
                      "amount": str(round_money(line.total * share, order.currency)),
                      "tax": str(round_money(line.tax * share, order.currency)),
                      "restock": False})  # fmt: skip
    return items


def _refunded_units(session: Session, order_id: int) -> dict[str, int]:
    units: dict[str, int] = {}
    for lines in session.scalars(
        select(Refund.lines).where(Refund.order_id == order_id, Refund.status.in_(SETTLED))
    ):
        for item in lines or []:
            units[str(item["line"])] = units.get(str(item["line"]), 0) + int(item["quantity"])
    return units


def request_refund(
    session: Session,
    order_id: int,
    *,
    actor: str,
    lines: Mapping[str, int] | None = None,
    amount: Decimal | None = None,
    request_key: str | None = None,
) -> tuple[Refund, bool]:
    """Staff ask to give back ``lines`` (line id or SKU → units) or an ``amount`` of an order we
    captured. Recorded once per request (``request_key``: the client's key, else the request's
    content, so a double click is one refund), never more than is left to refund (requests not
    made yet count), and made at the provider by ``make_refund``. Returns the refund and
    whether it is new. Raises ``RefundRefused`` with the reason, ``LookupError``."""
    order = load_for_update(session, order_id)
    if bool(lines) == (amount is not None):
        raise RefundRefused("give either lines or an amount")
    payment = session.scalar(select(Payment).where(Payment.order_id == order_id))
    if payment is None or payment.provider != PROVIDER or payment.collected_by_marketplace:
        raise RefundRefused(
            "we did not capture this order's money: refund it on the marketplace that holds it"
        )
    items: list[dict[str, Any]] = []
    if lines:
        items = _line_amounts(order, lines)
        done = _refunded_units(session, order_id)
        for item in items:
            line = next(x for x in order.lines if x.external_id == item["line"])
            if done.get(item["line"], 0) + item["quantity"] > line.quantity:
                left = line.quantity - done.get(item["line"], 0)
                raise RefundRefused(f"line {item['line']!r}: only {left} units left to refund")
        amount = sum((Decimal(i["amount"]) + Decimal(i["tax"]) for i in items), Decimal(0))
    assert amount is not None
    amount = round_money(Decimal(amount), order.currency)
    if amount <= 0:
        raise RefundRefused("a refund must be more than zero")
    content = json.dumps({"lines": items, "amount": str(amount)}, sort_keys=True)
    digest = request_key or hashlib.sha256(content.encode()).hexdigest()[:32]
    key = f"refund:{order_id}:staff:{digest}"
    existing = session.scalar(select(Refund).where(Refund.idempotency_key == key))
    if existing is not None:
        return existing, False
    remaining = left_to_refund(session, payment)
    if amount > remaining:
        raise RefundRefused(
            f"{amount} {order.currency} is more than the {remaining} {order.currency} left to "
            "refund"
        )
    refund = Refund(order_id=order_id, payment_id=payment.id, provider=PROVIDER, source=STAFF,
                    amount=amount, currency=order.currency, status="requested",
                    reason=REASON, idempotency_key=key, lines=items or None,
                    requested_by=actor)  # fmt: skip
    session.add(refund)
    session.flush()
    record_event(session, order_id, actor=actor, kind="refund_requested", refund_id=refund.id,
                 amount=str(amount), lines=len(items))  # fmt: skip
    return refund, True


def make_refund(
    transaction: Transaction,
    order_id: int,
    refund_id: int,
    provider: Callable[[], RefundProvider],
    keys: idempotency.Claimant,
    *,
    credit: FollowUp,
) -> Outcome:
    """Make a requested staff refund at the provider, once (its own key, claimed before the
    call); ``credit`` issues its credit note."""
    with transaction() as session:
        load_for_update(session, order_id)
        refund = session.get_one(Refund, refund_id)
        if refund.status != "requested":
            return Outcome(f"skip: {refund.status}")
        payment = session.get_one(Payment, refund.payment_id)
        intent, amount, currency = str(payment.external_id), refund.amount, refund.currency
        params = {"payment_intent": intent, "amount": str(amount), "currency": currency}
        key = keys.claim(session, refund.idempotency_key, params, point="refund_sent")
    with keys.outside_call(key):
        made = provider().refund(
            payment_intent=intent, amount=amount, currency=currency, idempotency_key=key,
            order_ref=str(order_id), reason=REASON,
        )  # fmt: skip
    with transaction() as session:
        load_for_update(session, order_id)
        refund = session.get_one(Refund, refund_id)
        if refund.status != "requested":
            return Outcome("already recorded")
        refund.status, refund.external_id = made.status, made.id
        idempotency.finish(session, key, {"id": made.id, "status": made.status})
        record_event(session, order_id, actor=ACTOR, kind="refunded", refund=made.id,
                     amount=str(made.amount), currency=made.currency,
                     requested_by=refund.requested_by, replayed=made.replayed)  # fmt: skip
        credit(session, order_id)
    return Outcome("refunded")


def refund_refused(session: Session, order_id: int, refund_id: int, *, error: str) -> None:
    """A staff refund the provider refused for good: marked failed (it no longer counts against
    what is left) and shown on the timeline."""
    refund = session.get(Refund, refund_id)
    if refund is not None and refund.status == "requested":
        refund.status = "failed"
    record_event(session, order_id, actor=ACTOR, kind="refund_failed", refund_id=refund_id,
                 error=error)  # fmt: skip
