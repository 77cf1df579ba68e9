"""Moving an order between states: one checked, fenced write plus its timeline row.

The row is locked (``FOR UPDATE`` on PostgreSQL; SQLite's write lock is taken at ``BEGIN``),
the transition is checked against ``TRANSITIONS``, and the write is conditional on the version
read, so a writer holding stale state can never move an order backwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from db.base import table, utcnow
from db.models import Order
from db.session import core, rowcount
from domain.errors import PermanentError, RetryableError
from domain.states import OrderState, can_transition
from orders.intake import record_events

__all__ = ["IllegalTransition", "StaleOrder", "advance", "load_for_update", "transition"]


class IllegalTransition(PermanentError):
    pass


class StaleOrder(RetryableError):
    """The order changed under us (version moved); reload and try again."""


_orders = table(Order)
# prebuilt (see db.session.core)
_LOAD = select(Order).where(Order.id == bindparam("order_id")).with_for_update()
_ADVANCE = (
    update(_orders)
    .where(_orders.c.id == bindparam("b_id"), _orders.c.version == bindparam("b_version"))
    .values(
        state=bindparam("b_state"), version=bindparam("b_new_version"), updated_at=bindparam("b_at")
    )
)


def load_for_update(session: Session, order_id: int) -> Order:
    order = session.execute(_LOAD, {"order_id": order_id}).scalar_one_or_none()
    if order is None:
        raise PermanentError(f"order {order_id} does not exist")
    return order


def transition(
    session: Session,
    order: Order,
    to: OrderState,
    *,
    actor: str,
    **detail: Any,
) -> OrderState:
    """Move ``order`` (loaded with ``load_for_update``) to ``to``; return the old state."""
    return advance(session, order, [to], actor=actor, **detail)


def advance(
    session: Session,
    order: Order,
    path: Sequence[OrderState],
    *,
    actor: str,
    **detail: Any,
) -> OrderState:
    """Move ``order`` through each state of ``path`` in turn (every step must be allowed), in
    one fenced write: the version goes up by one per step and each step gets its timeline row,
    exactly as if ``transition`` had been called for each. Returns the state it started from.
    """
    start = OrderState(order.state)
    steps, current = [], start
    for to in path:
        if not can_transition(current, to):
            raise IllegalTransition(f"order {order.id}: {current} → {to} is not allowed")
        steps.append((current, to))
        current = to
    if not steps:
        return start
    version = order.version + len(steps)
    changed = rowcount(
        core(session).execute(
            _ADVANCE,
            {
                "b_id": order.id,
                "b_version": order.version,
                "b_state": current.value,
                "b_new_version": version,
                "b_at": utcnow(),
            },
        )
    )
    if changed != 1:
        raise StaleOrder(f"order {order.id} changed concurrently")
    # the row already says so: keep the loaded object in step without a second UPDATE
    set_committed_value(order, "state", current.value)
    set_committed_value(order, "version", version)
    record_events(
        session,
        order.id,
        [
            {"kind": "transition", "from_state": a.value, "to_state": b.value, **detail}
            for a, b in steps
        ],
        actor=actor,
    )
    return start
