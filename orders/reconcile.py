"""Reconcile: a full sync compares every order it sees with ours, and repairs or flags each
mismatch.

The intake already settles what a newer version tells us (``orders.intake``): an order missing
here is created (counted as ``orders_created``), a newer one updated, a cancellation applied.
What is left are orders whose data we hold *as of the same version* as the marketplace's, yet
whose state here disagrees with it (a lost step, a restored backup, a hand edit, a bug). For
each, in the page's transaction:

- cancelled there, not yet shipped here (or needing attention): **repaired**, cancelled here
  with the cancellation's flow (stock back, labels voided, credit note, refund);
- cancelled there, (partly) shipped or delivered here: flagged, a return is expected
  (``needs_attention``, step ``return``);
- fulfilled there, ready to ship or partly shipped here: **repaired**, fulfilled elsewhere (ours
  do not ship, unused labels voided, shipped);
- fulfilled there, not ready here yet: flagged (``needs_attention``);
- open there, cancelled here: flagged on the timeline (cancelled is final);
- another total or currency, not cancelled: flagged (``needs_attention``): what we invoice or
  capture may be wrong.

A flagged order gets a ``reconcile_mismatch`` timeline row with the reason, and moves to
``needs_attention`` (step ``reconcile``) where its state allows; staff retry puts it back in the
state it was in. Orders we hold newer than the page (news that came after it was read) are left
alone. Repairs count as ``states_repaired``, flags as ``mismatches_flagged``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Order, OrderEvent
from domain.canonical import CanonicalOrder
from domain.states import OrderState, can_transition
from orders.fulfilment import cancelled_after_shipping
from orders.intake import IntakeOutcome, IntakeResult, record_event
from orders.transitions import load_for_update, transition

__all__ = ["RECONCILE_STEP", "Reconciled", "reconcile_page"]

RECONCILE_STEP = "reconcile"

S = OrderState
_SHIPPED = (S.SHIPPED, S.PARTIALLY_SHIPPED, S.DELIVERED)
_BEFORE_READY = (S.NEW, S.RESERVED, S.PAID, S.DOCUMENTED, S.ON_HOLD, S.NEEDS_ATTENTION)


@dataclass(frozen=True)
class Reconciled:
    #: the page's results, a repaired order's as ``updated`` (``after_intake`` runs its flow)
    results: list[IntakeResult]
    repaired: int = 0
    flagged: int = 0


def reconcile_page(
    session: Session,
    orders: Sequence[CanonicalOrder],
    results: Sequence[IntakeResult],
    *,
    actor: str,
) -> Reconciled:
    """Compare the page's orders we held as of the marketplace's version (``stale`` results
    of ``orders.intake.apply_page``) with ours; repair or flag each mismatch."""
    stale = {r.order_id: r for r in results if r.outcome == IntakeOutcome.STALE}
    if not stale:
        return Reconciled(list(results))
    theirs: dict[str, CanonicalOrder] = {}
    for order in orders:
        held = theirs.get(order.external_id)
        if held is None or order.updated_at > held.updated_at:
            theirs[order.external_id] = order
    rows = session.execute(
        select(Order.id, Order.external_id, Order.state, Order.total, Order.currency,
               Order.external_updated_at, Order.fulfilled_by_marketplace)
        .where(Order.id.in_(stale))
    ).all()  # fmt: skip
    out = {r.order_id: r for r in results}
    repaired = flagged = 0
    for row in rows:
        seen = theirs.get(row.external_id)
        if seen is None or row.external_updated_at != seen.updated_at:
            continue  # ours is newer than this page: nothing to compare
        order, state = seen, S(row.state)
        cancelled_there = order.status == S.CANCELLED
        if cancelled_there and state != S.CANCELLED:
            if can_transition(state, S.CANCELLED):
                current = load_for_update(session, row.id)
                transition(session, current, S.CANCELLED, actor=actor,
                           reason="reconcile: cancelled on the marketplace")  # fmt: skip
                out[row.id] = IntakeResult(row.id, IntakeOutcome.UPDATED, S.CANCELLED, True)
                repaired += 1
            elif state in _SHIPPED:
                flagged += cancelled_after_shipping(session, row.id)
            continue
        if not cancelled_there and state == S.CANCELLED:
            _note(session, row.id, "cancelled here, open on the marketplace", actor=actor)
            flagged += 1
            continue
        if (
            order.fulfillment_status == "fulfilled"
            and not row.fulfilled_by_marketplace
            and state in (S.READY_TO_SHIP, S.PARTIALLY_SHIPPED)
        ):
            # the intake's own flow for an order fulfilled in the marketplace's admin
            session.execute(update(Order).where(Order.id == row.id)
                            .values(fulfillment_status="fulfilled"))  # fmt: skip
            out[row.id] = replace(out[row.id], outcome=IntakeOutcome.UPDATED, state=state)
            repaired += 1
            continue
        reasons = []
        if order.fulfillment_status == "fulfilled" and state in _BEFORE_READY:
            reasons.append("fulfilled on the marketplace before it was ready here")
        if (row.total, row.currency) != (order.total, order.currency):
            reasons.append(
                f"total here {_amount(row.total)} {row.currency}, on the marketplace "
                f"{_amount(order.total)} {order.currency}"
            )
        if reasons:
            _flag(session, row.id, state, "; ".join(reasons), actor=actor)
            flagged += 1
    return Reconciled([out[r.order_id] for r in results], repaired, flagged)


def _amount(value: Decimal) -> str:
    """At least two decimals, no trailing zeros beyond them (10 → 10.00, 9.9900 → 9.99)."""
    text = f"{value.normalize():f}"
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _note(session: Session, order_id: int, reason: str, *, actor: str) -> None:
    """The mismatch on the order's timeline, once (the next night's sync counts it again in
    its report, without another row)."""
    noted = session.scalars(
        select(OrderEvent.detail).where(
            OrderEvent.order_id == order_id, OrderEvent.kind == "reconcile_mismatch"
        )
    ).all()
    if not any(detail.get("reason") == reason for detail in noted):
        record_event(session, order_id, actor=actor, kind="reconcile_mismatch", reason=reason)


def _flag(session: Session, order_id: int, state: OrderState, reason: str, *, actor: str) -> None:
    _note(session, order_id, reason, actor=actor)
    if state != S.NEEDS_ATTENTION and can_transition(state, S.NEEDS_ATTENTION):
        order = load_for_update(session, order_id)
        transition(session, order, S.NEEDS_ATTENTION, actor=actor, step=RECONCILE_STEP,
                   error=reason)  # fmt: skip
        order.failed_step, order.last_error, order.attempts = RECONCILE_STEP, reason, 1
