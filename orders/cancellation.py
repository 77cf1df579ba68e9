"""What cancelling an order sets off, in the transaction that cancelled it: its held stock goes
back on the shelf, and for later a credit note (if it was invoiced) and the refund of a payment
we captured (each a step of its own that does nothing when there is nothing to do).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from orders import stock
from orders.intake import record_event
from orders.steps import FollowUp

__all__ = ["on_cancelled"]


def on_cancelled(
    session: Session, order_id: int, *, credit_note: FollowUp, refund: FollowUp
) -> None:
    released = stock.release(session, order_id)
    if released:
        record_event(session, order_id, actor="system", kind="stock_released", lines=released)
    credit_note(session, order_id)
    refund(session, order_id)
