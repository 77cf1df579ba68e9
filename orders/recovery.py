"""Failed steps and resuming them.

A step that fails for good (a permanent error, or its retries exhausted) moves the order to
``needs_attention`` with the step, the error and the attempts (``record_failure``); staff retry
(``retry``) moves it back to the state that step starts from (``RESUME_STATE``) and runs the
pipeline again from there. A cancelled order whose captured payment is not refunded yet (its
refund failed) is retried by refunding it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from domain.states import OrderState
from orders.intake import record_event
from orders.refunds import refundable
from orders.steps import DONE_OR_GONE, FollowUp
from orders.transitions import IllegalTransition, load_for_update, transition

__all__ = ["RESUME_STATE", "record_failure", "retry"]

S = OrderState
#: the state a failed step starts from: staff retry moves the order back there
RESUME_STATE = {
    "reserve_stock": S.NEW,
    "capture_payment": S.RESERVED,
    "issue_invoice": S.PAID,
    "buy_label": S.PAID,
    "mark_ready_to_ship": S.PAID,
    "ship": S.READY_TO_SHIP,
}


def record_failure(
    session: Session, order_id: int, *, step: str, error: str, attempts: int
) -> None:
    """``step`` failed for good: the order needs attention (unless it is done or gone)."""
    order = load_for_update(session, order_id)
    if OrderState(order.state) in DONE_OR_GONE:
        return
    transition(session, order, S.NEEDS_ATTENTION, actor=f"task:{step}", step=step, error=error,
               attempts=attempts)  # fmt: skip
    order.failed_step, order.last_error, order.attempts = step, error, attempts


def retry(
    session: Session,
    order_id: int,
    *,
    actor: str,
    pipeline: FollowUp,
    ship: FollowUp,
    refund: FollowUp,
) -> OrderState:
    """Staff retry: resume a ``needs_attention`` order from the step that failed (``ship`` for
    the last step, else ``pipeline``, whose steps skip what is done), or ``refund`` a cancelled
    order whose captured payment is not refunded yet. Returns the state it resumes from."""
    order = load_for_update(session, order_id)
    if OrderState(order.state) == S.CANCELLED and refundable(session, order_id) is not None:
        record_event(session, order_id, actor=actor, kind="retry", step="refund_payment")
        refund(session, order_id)
        return S.CANCELLED
    if OrderState(order.state) != S.NEEDS_ATTENTION:
        raise IllegalTransition(f"order {order_id} is {order.state}, not needs_attention")
    resume = RESUME_STATE.get(order.failed_step or "", S.NEW)
    transition(session, order, resume, actor=actor, retry_of=order.failed_step)
    order.failed_step, order.last_error, order.attempts = None, None, 0
    (ship if resume == S.READY_TO_SHIP else pipeline)(session, order_id)
    return resume
