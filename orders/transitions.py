"""Moving an order between states: one checked, fenced write plus its timeline row.

The row is locked (``FOR UPDATE`` on PostgreSQL; SQLite's write lock is taken at ``BEGIN``),
the transition is checked against ``TRANSITIONS``, and the write is conditional on the version
read, so a writer holding stale state can never move an order backwards.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Order
from db.session import rowcount
from integrations.errors import PermanentError, RetryableError
from orders.intake import record_event
from orders.states import OrderState, can_transition

__all__ = ["IllegalTransition", "StaleOrder", "load_for_update", "transition"]


class IllegalTransition(PermanentError):
    pass


class StaleOrder(RetryableError):
    """The order changed under us (version moved); reload and try again."""


def load_for_update(session: Session, order_id: int) -> Order:
    order = session.execute(
        select(Order).where(Order.id == order_id).with_for_update()
    ).scalar_one_or_none()
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
    current = OrderState(order.state)
    if not can_transition(current, to):
        raise IllegalTransition(f"order {order.id}: {current} → {to} is not allowed")
    changed = rowcount(
        session.execute(
            update(Order)
            .where(Order.id == order.id, Order.version == order.version)
            .values(state=to.value, version=order.version + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    )
    if changed != 1:
        raise StaleOrder(f"order {order.id} changed concurrently")
    order.state = to.value
    order.version += 1
    record_event(
        session,
        order.id,
        actor=actor,
        kind="transition",
        from_state=current.value,
        to_state=to.value,
        **detail,
    )
    return current
