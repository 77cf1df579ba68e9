"""Failed steps and resuming them.

A step that fails for good (a permanent error, or its retries exhausted) moves the order to
``needs_attention`` with the step, the error and the attempts (``record_failure``); staff retry
(``retry``) moves it back to the state that step starts from (``RESUME_STATE``) and runs the
pipeline again from there. A cancelled order whose captured payment is not refunded yet (its
refund failed) is retried by refunding it.

An outside call whose attempt died (a killed worker, a lost message) leaves its idempotency key
unfinished: ``unfinished_calls`` finds the keys no live attempt holds, for the sweeper, which
runs their step again. The step resumes its own key, so the provider answers what it did under
it (or, for a capture the marketplace says it collected, is asked: ``orders.payments``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import UNFINISHED_KEY, IdempotencyKey, Order, OrderEvent
from domain.states import OrderState
from orders.fulfilment import RETURN_STEP
from orders.intake import record_event
from orders.outbox import PUSH_STEP, shipped_state
from orders.reconcile import RECONCILE_STEP
from orders.refunds import refundable
from orders.steps import DONE_OR_GONE, FollowUp
from orders.tracking import DELIVERY_STEP
from orders.transitions import IllegalTransition, load_for_update, transition

__all__ = [
    "KEY_CLEANUP",
    "KEY_STEPS",
    "RESUME_STATE",
    "UnfinishedCall",
    "record_failure",
    "retry",
    "unfinished_calls",
]

S = OrderState
#: the state a failed step starts from: staff retry moves the order back there
RESUME_STATE = {
    "reserve_stock": S.NEW,
    "capture_payment": S.RESERVED,
    "issue_invoice": S.PAID,
    "buy_label": S.PAID,
    "mark_ready_to_ship": S.PAID,
    "ship": S.READY_TO_SHIP,
    # shipped, but the tracking did not reach the marketplace: its outbox message again
    PUSH_STEP: S.SHIPPED,
    # the carrier lost the parcel: staff dealt with it (their retry acknowledges it)
    DELIVERY_STEP: S.SHIPPED,
    # cancelled on the marketplace after it shipped: staff took the return in
    RETURN_STEP: S.SHIPPED,
    # edited on the marketplace after it shipped: staff settle it with the buyer, then retry
    # puts it back where it was; nothing runs again
    "edited_after_shipping": S.SHIPPED,
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
    push: FollowUp,
) -> OrderState:
    """Staff retry: resume a ``needs_attention`` order from the step that failed (``ship`` for
    the last step, ``push`` for a shipped order whose tracking was not sent, else ``pipeline``,
    whose steps skip what is done), or ``refund`` a cancelled
    order whose captured payment is not refunded yet. Returns the state it resumes from."""
    order = load_for_update(session, order_id)
    if OrderState(order.state) == S.CANCELLED and refundable(session, order_id) is not None:
        record_event(session, order_id, actor=actor, kind="retry", step="refund_payment")
        refund(session, order_id)
        return S.CANCELLED
    if OrderState(order.state) != S.NEEDS_ATTENTION:
        raise IllegalTransition(f"order {order_id} is {order.state}, not needs_attention")
    failed = order.failed_step or ""
    resume = RESUME_STATE.get(failed, S.NEW)
    if failed == RECONCILE_STEP:  # staff checked the mismatch: back where it was
        resume = _state_before_attention(session, order_id)
    if resume == S.SHIPPED:  # some shipments may not have left yet
        resume = shipped_state(session, order_id)
    transition(session, order, resume, actor=actor, retry_of=order.failed_step)
    order.failed_step, order.last_error, order.attempts = None, None, 0
    if failed == RECONCILE_STEP:
        if resume not in (S.READY_TO_SHIP, S.PARTIALLY_SHIPPED, S.SHIPPED):
            pipeline(session, order_id)  # its steps skip what is done
    elif failed == PUSH_STEP:
        push(session, order_id)
    elif resume in (S.SHIPPED, S.PARTIALLY_SHIPPED):
        pass  # a lost parcel, a return or an edit staff dealt with: acknowledged, nothing to run
    else:
        (ship if resume == S.READY_TO_SHIP else pipeline)(session, order_id)
    return resume


def _state_before_attention(session: Session, order_id: int) -> OrderState:
    """The state the order was in when it last moved to ``needs_attention``."""
    before = session.scalar(
        select(OrderEvent.from_state)
        .where(OrderEvent.order_id == order_id, OrderEvent.kind == "transition",
               OrderEvent.to_state == S.NEEDS_ATTENTION.value)
        .order_by(OrderEvent.id.desc())
        .limit(1)
    )  # fmt: skip
    return S(before) if before else S.NEW


#: key prefix → (the step that resumes it, the states in which that step still has work)
KEY_STEPS: dict[str, tuple[str, frozenset[OrderState]]] = {
    # cancelled while a capture was in flight: the step asks the holder what it did
    "capture": ("capture_payment", frozenset({S.RESERVED, S.CANCELLED})),
    "label": ("buy_label", frozenset({S.PAID})),
    # a refund is owed by a cancelled order, or by a paid one the buyer paid twice
    "refund": ("refund_payment", frozenset(OrderState) - {S.NEEDS_ATTENTION}),
}


#: a key whose order moved on (cancelled) while its call was in flight: the step that finds
#: what the call may have done outside and undoes it (a label bought as the order was
#: cancelled is voided, ``orders.fulfilment.void_labels``)
KEY_CLEANUP: dict[str, tuple[str, frozenset[OrderState]]] = {
    "label": ("void_labels", frozenset({S.CANCELLED})),
}


@dataclass(frozen=True)
class UnfinishedCall:
    step: str
    order_id: int
    key: str


def unfinished_calls(
    session: Session, *, idle_for: dt.timedelta, limit: int
) -> list[UnfinishedCall]:
    """Keys started, not finished, that no attempt has held for ``idle_for`` (its owner is dead
    or its message lost), of orders whose step still has work; each is marked as run now, so
    the sweeper republishes it at most once per ``idle_for``."""
    cutoff = utcnow() - idle_for
    rows = session.scalars(
        select(IdempotencyKey)
        .where(
            UNFINISHED_KEY,  # its partial index (db.models)
            or_(IdempotencyKey.locked_at.is_(None), IdempotencyKey.locked_at < cutoff),
            or_(IdempotencyKey.last_run_at.is_(None), IdempotencyKey.last_run_at < cutoff),
        )
        .order_by(IdempotencyKey.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    parsed: list[tuple[IdempotencyKey, str, int]] = []
    for row in rows:
        prefix, _, rest = row.key.partition(":")
        order_ref = rest.split(":", 1)[0]
        if prefix in KEY_STEPS and order_ref.isdigit():
            parsed.append((row, prefix, int(order_ref)))
    order_ids = sorted({order_id for _, _, order_id in parsed})
    states = {
        row.id: row.state
        for row in session.execute(select(Order.id, Order.state).where(Order.id.in_(order_ids)))
    }
    found = []
    now = utcnow()
    for row, prefix, order_id in parsed:
        row.last_run_at = now
        if order_id not in states:
            continue
        state = OrderState(states[order_id])
        for step, active in (KEY_STEPS[prefix], KEY_CLEANUP.get(prefix, ("", frozenset()))):
            if state in active:
                found.append(UnfinishedCall(step, order_id, row.key))
                break
    return found
