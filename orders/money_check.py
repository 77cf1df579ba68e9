"""One money check: for every order whose money is settled, what we invoiced less what we
credited, what was captured (by us or the marketplace) less what went back, and what the
marketplace says the buyer paid must be the same amount.

- invoiced - credited: the totals of its invoices and credit notes (credit notes are negative);
- captured - refunded: its payment (captured by us, or collected by the marketplace) less every
  refund recorded (ours, staff's, the marketplace's);
- the buyer paid: the marketplace's order total less the refunds recorded, or nothing for a
  cancelled order nobody paid.

Orders still on their way (new, reserved, on hold, paid but not invoiced, needing attention)
are not judged: their documents are not all there yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.models import Invoice, Order, Payment, Refund
from domain.states import OrderState

__all__ = ["JUDGED", "Mismatch", "check"]

S = OrderState
#: states in which an order's documents and money are all there
JUDGED = (S.DOCUMENTED, S.READY_TO_SHIP, S.SHIPPED, S.DELIVERED, S.CANCELLED)


@dataclass(frozen=True)
class Mismatch:
    order_id: int
    external_id: str
    channel: str
    currency: str
    invoiced: Decimal  # invoiced - credited
    captured: Decimal  # captured - refunded
    buyer_paid: Decimal  # as the marketplace says, less refunds
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"order_id": self.order_id, "external_id": self.external_id,
                "channel": self.channel, "currency": self.currency,
                "invoiced_less_credited": str(self.invoiced),
                "captured_less_refunded": str(self.captured),
                "buyer_paid": str(self.buyer_paid), "reasons": list(self.reasons)}  # fmt: skip


def _sums(
    session: Session,
    column: InstrumentedAttribute[Decimal],
    key: InstrumentedAttribute[int],
    ids: list[int],
    *where: ColumnElement[bool],
) -> dict[int, Decimal]:
    rows = session.execute(
        select(key, func.sum(column)).where(key.in_(ids), *where).group_by(key)
    ).all()
    return {int(k): v or Decimal(0) for k, v in rows}


def check(session: Session, account_ids: Iterable[int] | None = None) -> list[Mismatch]:
    """Every judged order (of ``account_ids``, or all) whose three amounts differ, with why."""
    query = select(Order.id, Order.external_id, Order.channel, Order.currency, Order.state,
                   Order.total).where(Order.state.in_([s.value for s in JUDGED]))  # fmt: skip
    if account_ids is not None:
        query = query.where(Order.channel_account_id.in_(list(account_ids)))
    orders = session.execute(query.order_by(Order.id)).all()
    found: list[Mismatch] = []
    for start in range(0, len(orders), 500):
        chunk = orders[start : start + 500]
        ids = [o.id for o in chunk]
        documents = _sums(session, Invoice.total, Invoice.order_id, ids)
        paid = _sums(session, Payment.amount, Payment.order_id, ids)
        refunded = _sums(session, Refund.amount, Refund.order_id, ids, Refund.status == "succeeded")
        for o in chunk:
            invoiced = documents.get(o.id, Decimal(0))
            back = refunded.get(o.id, Decimal(0))
            captured = paid.get(o.id, Decimal(0)) - back
            cancelled = o.state == S.CANCELLED
            buyer = Decimal(0) if cancelled and o.id not in paid else o.total - back
            reasons = []
            if invoiced != captured:
                reasons.append(f"invoiced less credited {invoiced} but captured less refunded "
                               f"{captured}")  # fmt: skip
            if captured != buyer:
                reasons.append(f"captured less refunded {captured} but the marketplace says the "
                               f"buyer paid {buyer}")  # fmt: skip
            if cancelled and captured:
                reasons.append(f"cancelled, yet {captured} of the buyer's money is not refunded")
            if reasons:
                found.append(Mismatch(o.id, o.external_id, o.channel, o.currency, invoiced,
                                      captured, buyer, tuple(reasons)))  # fmt: skip
    return found
