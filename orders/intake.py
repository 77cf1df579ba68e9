"""Intake: write a canonical order into ``orders`` / ``order_lines``, once, newest data winning.

Invariant 1 (one order per external order) rests on the unique key
``(channel_account_id, external_id)`` and an ``INSERT … ON CONFLICT DO NOTHING``; invariant 2
(newer never loses to older) on a conditional ``UPDATE … WHERE external_updated_at < :new``.
Both are single statements, so any number of concurrent webhooks, polls and retries for the same
order end with one row holding the newest data, whatever the interleaving.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import Order, OrderEvent, OrderLine
from db.session import core, per_dialect
from domain.canonical import CanonicalOrder
from domain.states import OrderState, can_transition

__all__ = ["IntakeOutcome", "IntakeResult", "apply_order", "record_event"]


class IntakeOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    STALE = "stale"  # older than (or as old as) what we hold: ignored on purpose


@dataclass(frozen=True)
class IntakeResult:
    order_id: int
    outcome: IntakeOutcome
    state: OrderState
    cancelled_now: bool = False  # this update moved the order to cancelled
    #: refunds the marketplace made that this delivery recorded first (``orders.returns``)
    refunded: tuple[int, ...] = ()
    #: the delivery said the order changed without carrying it: fetch this external id
    refetch: str | None = None


def _order_values(order: CanonicalOrder) -> dict[str, Any]:
    return {
        "external_number": order.external_number,
        "financial_status": order.financial_status,
        "fulfillment_status": order.fulfillment_status,
        "currency": order.currency,
        "subtotal": order.subtotal,
        "tax_total": order.tax_total,
        "shipping_total": order.shipping_total,
        "discount_total": order.discount_total,
        "total": order.total,
        "buyer_name": order.buyer_name,
        "buyer_email": order.buyer_email,
        "shipping_address": (
            order.shipping_address.model_dump(exclude_none=True) if order.shipping_address else None
        ),
        "payment_collected_by_marketplace": order.payment_collected_by_marketplace,
        "payment_facts": (
            order.payment.model_dump(mode="json", exclude_none=True) if order.payment else None
        ),
        "fulfilled_by_marketplace": order.fulfilled_by_marketplace,
        "external_created_at": order.created_at,
        "external_updated_at": order.updated_at,
        "cancelled_at": order.cancelled_at,
        "raw": order.raw,
    }


# prebuilt statements (see db.session.core)
_orders = table(Order)
_CREATE_ORDER = per_dialect(
    lambda insert: (
        insert(_orders)
        .on_conflict_do_nothing(index_elements=["channel_account_id", "external_id"])
        .returning(_orders.c.id)
    )
)
_INSERT_LINES = insert(table(OrderLine))
_INSERT_EVENTS = insert(table(OrderEvent))


def record_event(
    session: Session,
    order_id: int,
    *,
    actor: str,
    kind: str,
    from_state: str | None = None,
    to_state: str | None = None,
    **detail: Any,
) -> None:
    record_events(
        session,
        order_id,
        [{"kind": kind, "from_state": from_state, "to_state": to_state, **detail}],
        actor=actor,
    )


def record_events(
    session: Session, order_id: int, events: list[dict[str, Any]], *, actor: str
) -> None:
    """Timeline rows in one INSERT: each a dict of ``kind``, ``from_state``, ``to_state`` and
    the detail (everything else)."""
    at = utcnow()
    rows = []
    for event in events:
        detail = dict(event)
        rows.append(
            {
                "order_id": order_id,
                "at": at,
                "actor": actor,
                "kind": detail.pop("kind"),
                "from_state": detail.pop("from_state", None),
                "to_state": detail.pop("to_state", None),
                "detail": detail,
            }
        )
    core(session).execute(_INSERT_EVENTS, rows if len(rows) > 1 else rows[0])


def _replace_lines(
    session: Session, order_id: int, order: CanonicalOrder, *, new: bool = False
) -> None:
    if not new:
        session.execute(delete(OrderLine).where(OrderLine.order_id == order_id))
    if order.lines:
        core(session).execute(
            _INSERT_LINES,
            [
                {
                    "order_id": order_id,
                    "external_id": line.external_id,
                    "sku": line.sku,
                    "title": line.title[:500],
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                    "discount": line.discount,
                    "tax": line.tax,
                    "total": line.total,
                }
                for line in order.lines
            ],
        )


def apply_order(
    session: Session, account_id: int, order: CanonicalOrder, *, actor: str
) -> IntakeResult:
    """Create the order, update it if this data is newer, or leave it if this data is stale;
    then record the refunds it carries that are new (even from stale data: a refund is a fact
    of its own, recorded once by its id)."""
    result = _apply_order(session, account_id, order, actor=actor)
    if not order.refunds:
        return result
    from orders.returns import record_marketplace_refunds

    row = session.get_one(Order, result.order_id, with_for_update=True)
    new = record_marketplace_refunds(session, row, order.refunds, actor=actor)
    return replace(result, refunded=tuple(new)) if new else result


def _apply_order(
    session: Session, account_id: int, order: CanonicalOrder, *, actor: str
) -> IntakeResult:
    values = _order_values(order)
    now = utcnow()
    initial_state = OrderState.CANCELLED if order.status == OrderState.CANCELLED else OrderState.NEW
    created_id = (
        core(session)
        .execute(
            _CREATE_ORDER(session),
            {
                "channel_account_id": account_id,
                "channel": order.channel,
                "external_id": order.external_id,
                "state": initial_state.value,
                "version": 1,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                **values,
            },
        )
        .scalar_one_or_none()
    )
    if created_id is not None:
        _replace_lines(session, created_id, order, new=True)
        record_event(
            session,
            created_id,
            actor=actor,
            kind="received",
            to_state=initial_state.value,
            external_updated_at=order.updated_at.isoformat(),
        )
        return IntakeResult(created_id, IntakeOutcome.CREATED, initial_state)

    key = (Order.channel_account_id == account_id) & (Order.external_id == order.external_id)
    from orders import edits

    known = session.execute(select(Order.id, Order.total).where(key)).one()
    before = edits.snapshot(session, known.id)
    row = session.execute(
        update(Order)
        .where(key, Order.external_updated_at < order.updated_at)
        .values(**values, version=Order.version + 1, updated_at=now)
        .returning(Order.id, Order.state)
    ).one_or_none()
    if row is None:
        current = session.execute(select(Order.id, Order.state).where(key)).one()
        return IntakeResult(current.id, IntakeOutcome.STALE, OrderState(current.state))

    order_id, state = row.id, OrderState(row.state)
    _replace_lines(session, order_id, order)
    record_event(
        session,
        order_id,
        actor=actor,
        kind="updated",
        external_updated_at=order.updated_at.isoformat(),
    )
    if order.status != OrderState.CANCELLED:
        # lines or money changed on the marketplace: stock, documents, or a person (one
        # transaction with the new lines)
        diff = edits.diff_lines(before, edits.snapshot(session, order_id))
        edits.apply_edit(session, order_id, diff, actor=actor,
                         money_changed=known.total != order.total)  # fmt: skip
        state = OrderState(
            session.execute(select(Order.state).where(Order.id == order_id)).scalar_one()
        )
    if order.status == OrderState.CANCELLED and can_transition(state, OrderState.CANCELLED):
        session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(state=OrderState.CANCELLED.value, version=Order.version + 1)
        )
        record_event(
            session,
            order_id,
            actor=actor,
            kind="transition",
            from_state=state.value,
            to_state=OrderState.CANCELLED.value,
            reason="cancelled on the marketplace",
        )
        return IntakeResult(order_id, IntakeOutcome.UPDATED, OrderState.CANCELLED, True)
    return IntakeResult(order_id, IntakeOutcome.UPDATED, state)
