"""Reserving an order: the step that holds our stock for every line, or puts the order on hold.

An order moves ``new`` (or ``on_hold``) → ``reserved`` when ``stock.reserve`` took every unit
it needs; short stock moves a new order to ``on_hold`` and stops the pipeline until stock
arrives (``release_waiting``). An order the marketplace fulfils from its own warehouse
(Amazon FBA) holds none of our stock: it moves to ``reserved`` with ``fulfilled_by``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.session import Transaction
from domain.states import OrderState
from orders import stock
from orders.steps import DONE_OR_GONE, FollowUp, Outcome
from orders.transitions import load_for_update, transition

__all__ = ["release_waiting", "reserve"]

S = OrderState
ACTOR = "task:reserve_stock"


def reserve(transaction: Transaction, order_id: int) -> Outcome:
    with transaction() as session:
        order = load_for_update(session, order_id)
        state = OrderState(order.state)
        if state not in (S.NEW, S.ON_HOLD):
            return Outcome(f"skip: {state}", stop=state in DONE_OR_GONE)
        if order.fulfilled_by_marketplace:  # shipped from the marketplace's stock, not ours
            transition(session, order, S.RESERVED, actor=ACTOR, reserved={},
                       fulfilled_by=order.channel)  # fmt: skip
            return Outcome("reserved: fulfilled by the marketplace")
        result = stock.reserve(session, order_id, account_id=order.channel_account_id)
        if result.ok:
            transition(session, order, S.RESERVED, actor=ACTOR, reserved=result.reserved)
            return Outcome("reserved")
        if state == S.NEW:
            transition(session, order, S.ON_HOLD, actor=ACTOR, short=result.short)
        return Outcome("on_hold", stop=True)  # stock arriving (`release_waiting`) resumes it


def release_waiting(session: Session, sku: str, *, resume: FollowUp) -> list[int]:
    """After stock of ``sku`` arrived: ``resume`` the on-hold orders that wait for it."""
    waiting = stock.orders_waiting_for(session, sku)
    for order_id in waiting:
        resume(session, order_id)
    return waiting
