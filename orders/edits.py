"""Edits made on the marketplace after intake (Shopify order edits, WooCommerce line changes,
by webhook or poll): the order's lines as they are now against what we held, invoiced and
shipped.

``apply_edit`` runs in the intake transaction that wrote the new lines, so the whole edit is
one transaction: the diff goes on the timeline (``edited``), and by the order's state:

- not reserved yet (new, on hold, cancelled): nothing else; its reservation uses the new lines;
- reserved (up to ready to ship): removed units are released and added units reserved, per
  SKU, with the same conditional update as any reservation (no oversell); when the shelf
  cannot cover what was added, nothing is taken, the order's units are released and it waits
  ``on_hold`` for that stock like any order (stock arriving resumes it);
- invoiced: a finalised invoice is never changed: a credit note for what is left of the
  invoice in force and a new invoice with the next number, of the order as it is now;
- shipped: ``needs_attention`` (``edited_after_shipping``): a parcel that left cannot change.

A label bought before an edit that changes the address or the parcel is not voided here yet
(issue 11's last part, with the shipments of issue 12): the edit is on the timeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Order, OrderLine, Payment, StockItem, StockReservation
from domain.states import OrderState
from orders import stock
from orders.intake import record_event
from orders.stock import mark_dirty
from orders.transitions import transition

__all__ = ["LineDiff", "apply_edit", "diff_lines", "snapshot"]

S = OrderState
HELD = "held"
#: states in which the order holds stock for its lines
_HOLDING = frozenset({S.RESERVED, S.PAID, S.DOCUMENTED, S.READY_TO_SHIP})
_SHIPPED = frozenset({S.SHIPPED, S.DELIVERED})

Snapshot = dict[str, tuple[str | None, int, Decimal]]  # line id → (sku, quantity, line total)


@dataclass(frozen=True)
class LineDiff:
    """What an edit changed, per line: added, removed, and quantity or price changes."""

    added: dict[str, int]  # line id → quantity
    removed: dict[str, int]
    changed: dict[str, tuple[int, int]]  # line id → (quantity before, after)
    repriced: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.repriced)

    def detail(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed,
                "changed": {k: list(v) for k, v in self.changed.items()},
                "repriced": list(self.repriced)}  # fmt: skip


def snapshot(session: Session, order_id: int) -> Snapshot:
    rows = session.execute(
        select(OrderLine.external_id, OrderLine.sku, OrderLine.quantity, OrderLine.total).where(
            OrderLine.order_id == order_id
        )
    ).all()
    return {str(line): (sku, int(qty), total) for line, sku, qty, total in rows}


def diff_lines(before: Snapshot, after: Snapshot) -> LineDiff:
    added = {k: v[1] for k, v in after.items() if k not in before}
    removed = {k: v[1] for k, v in before.items() if k not in after}
    changed = {
        k: (before[k][1], v[1]) for k, v in after.items() if k in before and before[k][1] != v[1]
    }
    repriced = tuple(
        k for k, v in after.items()
        if k in before and before[k][1] == v[1] and before[k][2] != v[2]
    )  # fmt: skip
    return LineDiff(added, removed, changed, repriced)


def _wanted(session: Session, order_id: int) -> dict[str, int]:
    """Units per stock-managed SKU of the order's lines now."""
    rows = session.execute(
        select(OrderLine.sku, OrderLine.quantity)
        .join(StockItem, StockItem.sku == OrderLine.sku)
        .where(OrderLine.order_id == order_id)
    ).all()
    wanted: dict[str, int] = {}
    for sku, quantity in rows:
        wanted[str(sku)] = wanted.get(str(sku), 0) + int(quantity)
    return wanted


def _held(session: Session, order_id: int) -> dict[str, StockReservation]:
    rows = session.scalars(
        select(StockReservation)
        .where(StockReservation.order_id == order_id, StockReservation.status == HELD)
        .order_by(StockReservation.sku)
        .with_for_update()
    ).all()
    return {row.sku: row for row in rows}


def _rebalance(session: Session, order_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """Held units per SKU moved to what the lines want now. Returns (changes, short): on a
    shortage nothing is taken (a savepoint) and ``short`` says what is missing."""
    wanted, held = _wanted(session, order_id), _held(session, order_id)
    changes: dict[str, int] = {}
    short: dict[str, int] = {}
    account = session.scalar(select(Order.channel_account_id).where(Order.id == order_id))
    locations = stock.locations_of(session, int(account or 0))
    savepoint = session.begin_nested()
    for sku in sorted(set(wanted) | set(held)):  # one lock order everywhere
        have = held[sku].quantity if sku in held else 0
        delta = wanted.get(sku, 0) - have
        if not delta:
            continue
        # more units at the reservation's own location (a new line: the first of the
        # account's locations that has them all); fewer go back where they were held
        location: int | None = None
        if delta < 0:
            stock.give_back(session, held[sku], -delta)
        elif sku in held:
            location = stock.take_more(session, held[sku], delta)
        else:
            location = stock.take(session, sku, delta, locations)
        if delta > 0 and location is None:
            available = session.scalar(
                select(StockItem.on_hand - StockItem.reserved).where(StockItem.sku == sku)
            )
            short[sku] = delta - max(0, int(available or 0))
            continue
        changes[sku] = delta
        if sku in held:
            held[sku].quantity += delta
            if held[sku].quantity == 0:
                held[sku].status = "released"
        else:
            session.add(StockReservation(order_id=order_id, sku=sku, quantity=delta,
                                         location_id=location, status=HELD,
                                         created_at=utcnow()))  # fmt: skip
    if short:
        savepoint.rollback()
        return {}, short
    savepoint.commit()
    mark_dirty(session, set(changes))  # what is available moved: the channels are told
    return changes, {}


def _hold_for_stock(session: Session, order: Order, short: Mapping[str, int], actor: str) -> None:
    """The edit wants units the shelf has not got: everything the order held goes back and it
    waits on hold (its reservation is made afresh when the stock arrives)."""
    held = _held(session, order.id)
    for row in held.values():
        stock.give_back(session, row, row.quantity)
    session.execute(delete(StockReservation).where(StockReservation.order_id == order.id))
    mark_dirty(session, set(held))
    transition(session, order, S.ON_HOLD, actor=actor, short=dict(short), reason="edited")


def _follow_collection(session: Session, order: Order, actor: str) -> None:
    """Money the marketplace holds follows its order once it says the order is paid: an edit it
    charged the buyer for (or gave back) is what it holds now, whether it collected the money
    or we captured it there (Shopify's ``orderCapture``). A capture at our own provider is a
    fact at its amount and stays."""
    payment = session.scalar(select(Payment).where(Payment.order_id == order.id))
    held_by_marketplace = payment is not None and (
        payment.collected_by_marketplace or payment.provider == order.channel
    )
    if payment is None or not held_by_marketplace:
        return
    if not order.payment_collected_by_marketplace or payment.amount == order.total:
        return
    record_event(session, order.id, actor=actor, kind="collected_amount_changed",
                 before=str(payment.amount), after=str(order.total))  # fmt: skip
    payment.amount = order.total


def _reinvoice(session: Session, order: Order, actor: str) -> list[str]:
    """An invoiced order changed: a credit note of what is left of the invoice in force and a
    new invoice (the next number) of the order as it is now."""
    from orders.documents import credit_refunds, seller
    from orders.invoices import credit_remaining, current_invoice, invoice_for

    invoice = current_invoice(session, order.id)
    if invoice is None:
        return []
    note = credit_remaining(session, order, source_key=f"credit:edit:{order.id}:{invoice.id}",
                            seller=seller())  # fmt: skip
    fresh = invoice_for(session, order, seller=seller())
    credit_refunds(session, order)
    numbers = [n.full_number for n in (note, fresh) if n is not None]
    record_event(session, order.id, actor=actor, kind="reinvoiced", credited=invoice.full_number,
                 documents=numbers, total=str(fresh.total))  # fmt: skip
    return numbers


def apply_edit(
    session: Session, order_id: int, diff: LineDiff, *, actor: str, money_changed: bool
) -> None:
    """The edit's effects, in the intake transaction that wrote the new lines (see the module
    docstring). ``money_changed``: the order's totals moved (an edit may change only them)."""
    if not diff and not money_changed:
        return
    order = session.get_one(Order, order_id, with_for_update=True, populate_existing=True)
    state = OrderState(order.state)
    record_event(session, order_id, actor=actor, kind="edited", state=state.value,
                 **diff.detail())  # fmt: skip
    if state in _SHIPPED:
        transition(session, order, S.NEEDS_ATTENTION, actor=actor, step="edited_after_shipping",
                   error="edited on the marketplace after it shipped")  # fmt: skip
        order.failed_step = "edited_after_shipping"
        order.last_error = "edited on the marketplace after it shipped: settle it with the buyer"
        return
    if money_changed:
        _follow_collection(session, order, actor)
    if state in _HOLDING and diff:
        changes, short = _rebalance(session, order_id)
        if short:
            _hold_for_stock(session, order, short, actor)
        elif changes:
            record_event(session, order_id, actor=actor, kind="reservation_changed",
                         changes=changes)  # fmt: skip
    _reinvoice(session, order, actor)
