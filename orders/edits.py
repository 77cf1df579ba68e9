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
- labelled: a shipment that has not left and whose address or lines (its parcel's weight)
  the edit changed is set aside (``voided``) and a new one of its lines as they are now takes
  its place (``relabel``); the caller voids the old label at the carrier and buys the new one
  after commit (``orders.fulfilment.void_labels``, ``buy_label``: the new shipment's label key
  is ``label:{order}:s{shipment}``, never the old one's). A shipment not labelled yet gets its
  new lines in place (its label is bought with the address as it is then; when a purchase of
  its label for the old parcel died in flight, ``buy_label`` voids what that attempt bought and
  retires its key first: ``orders.fulfilment._supersede``);
- shipped: ``needs_attention`` (``edited_after_shipping``): a parcel that left cannot change;
- delivered: on the timeline only: the order is done, a return or a refund settles it (a
  refund's lines in a delivered order's body used to fail its intake: a delivered order has no
  way to ``needs_attention``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import (
    Order,
    OrderLine,
    Payment,
    Shipment,
    ShipmentLine,
    StockItem,
    StockReservation,
)
from domain.states import OrderState
from orders import stock
from orders.intake import record_event
from orders.stock import mark_dirty
from orders.transitions import transition

__all__ = ["LineDiff", "apply_edit", "diff_lines", "relabel", "snapshot"]

S = OrderState
HELD = "held"
#: states in which the order holds stock for its lines
_HOLDING = frozenset({S.RESERVED, S.PAID, S.DOCUMENTED, S.READY_TO_SHIP})
_SHIPPED = frozenset({S.SHIPPED, S.DELIVERED})
#: states whose shipments that have not left follow an edit (a cancelled order's are voided)
_PARCELS_FOLLOW = frozenset(OrderState) - _SHIPPED - {S.CANCELLED}

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


def _hold_again(
    session: Session, order_id: int, sku: str, units: int, location: int | None
) -> None:
    """Hold ``units`` of a SKU the order holds none of now: its released row if it had one
    (one reservation row per order and SKU: a refund or an earlier edit gave those units back,
    and this edit wants the SKU again), else a new row."""
    earlier = session.scalar(
        select(StockReservation)
        .where(StockReservation.order_id == order_id, StockReservation.sku == sku)
        .with_for_update()
    )
    if earlier is None:
        session.add(StockReservation(order_id=order_id, sku=sku, quantity=units,
                                     location_id=location, status=HELD,
                                     created_at=utcnow()))  # fmt: skip
        return
    earlier.status, earlier.quantity, earlier.location_id = HELD, units, location


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
            _hold_again(session, order_id, sku, delta, location)
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


def _current_lines(session: Session, order_id: int) -> dict[str, int]:
    rows = session.execute(
        select(OrderLine.external_id, OrderLine.quantity).where(OrderLine.order_id == order_id)
    ).all()
    return {str(line): int(qty) for line, qty in rows}


def _set_lines(shipment: Shipment, plan: Mapping[str, int]) -> None:
    """A pending shipment's lines as ``plan`` says, changed in place (one row per line: a row
    deleted and its line inserted again in one flush would meet the unique constraint); with
    no line left it is set aside."""
    for row in list(shipment.lines):
        if row.line_external_id in plan:
            row.quantity = plan[row.line_external_id]
        else:
            shipment.lines.remove(row)
    have = {row.line_external_id for row in shipment.lines}
    for line, qty in sorted(plan.items()):
        if line not in have:
            shipment.lines.append(ShipmentLine(line_external_id=line, quantity=qty))
    if not plan:
        shipment.status = "voided"


def relabel(
    session: Session, order_id: int, diff: LineDiff, *, address_changed: bool, actor: str
) -> bool:
    """The order's shipments that have not left, after an edit (the order row locked): those
    whose address or lines changed are made again with the order's lines as they are now. A
    labelled one is set aside (``voided``: its label is voided after commit) and a pending
    shipment of its new lines takes its place; a pending one gets its new lines in place.
    Lines the edit added go with the first shipment that changes (else the first open one).
    Returns whether labels are to be voided or bought after commit; on the timeline
    (``relabelled``) with the tracking numbers set aside and the new shipments."""
    shipments = session.scalars(
        select(Shipment)
        .where(Shipment.order_id == order_id, Shipment.status != "voided")
        .order_by(Shipment.id)
    ).all()
    open_ = [s for s in shipments if s.status in ("pending", "labelled")]
    if not open_:  # not labelled yet (buy_label uses the lines as they are) or all gone
        return False
    touched = set(diff.removed) | set(diff.changed)
    if address_changed:
        affected = list(open_)
    else:
        affected = [s for s in open_ if any(ln.line_external_id in touched for ln in s.lines)]
        if not affected and diff.added:
            affected = [open_[0]]
    if not affected:
        return False
    # what the shipments that stay (left, or untouched) carry; the rest is the affected ones'
    left = _current_lines(session, order_id)
    for shipment in shipments:
        if shipment not in affected:
            for ln in shipment.lines:
                left[ln.line_external_id] = left.get(ln.line_external_id, 0) - ln.quantity
    plans: list[dict[str, int]] = []
    for shipment in affected:
        plan: dict[str, int] = {}
        for ln in shipment.lines:
            take = min(ln.quantity, max(0, left.get(ln.line_external_id, 0)))
            if take:
                plan[ln.line_external_id] = take
                left[ln.line_external_id] -= take
        plans.append(plan)
    for line, qty in sorted(left.items()):  # added lines, raised quantities: the first one
        if qty > 0:
            plans[0][line] = plans[0].get(line, 0) + qty
    set_aside: list[str] = []
    made: list[int] = []
    changed = False
    for shipment, plan in zip(affected, plans, strict=True):
        was = {ln.line_external_id: ln.quantity for ln in shipment.lines}
        if shipment.status == "pending":
            if plan != was:
                _set_lines(shipment, plan)
                changed = True
            continue
        if plan == was and not address_changed:
            continue
        shipment.status = "voided"
        set_aside.append(shipment.tracking_number or "")
        if plan:
            again = Shipment(order_id=order_id, carrier="", status="pending",
                             location=shipment.location,
                             stock_location_id=shipment.stock_location_id)  # fmt: skip
            again.lines = [ShipmentLine(line_external_id=line, quantity=qty)
                           for line, qty in sorted(plan.items())]  # fmt: skip
            session.add(again)
            session.flush()
            made.append(again.id)
    if not set_aside and not changed:
        return False
    reason = "address changed" if address_changed else "lines changed"
    record_event(session, order_id, actor=actor, kind="relabelled", reason=reason,
                 voided=set_aside, new_shipments=made)  # fmt: skip
    return bool(set_aside or made)


def apply_edit(
    session: Session,
    order_id: int,
    diff: LineDiff,
    *,
    actor: str,
    money_changed: bool,
    address_changed: bool = False,
) -> bool:
    """The edit's effects, in the intake transaction that wrote the new lines (see the module
    docstring). ``money_changed``: the order's totals moved (an edit may change only them);
    ``address_changed``: the shipping address did. Returns whether labels are to be voided
    and bought after commit (``relabel``)."""
    if not diff and not money_changed and not address_changed:
        return False
    order = session.get_one(Order, order_id, with_for_update=True, populate_existing=True)
    state = OrderState(order.state)
    extra: dict[str, Any] = {"address_changed": True} if address_changed else {}
    record_event(session, order_id, actor=actor, kind="edited", state=state.value,
                 **diff.detail(), **extra)  # fmt: skip
    if state == S.DELIVERED:  # done: a return or a refund settles it, on the timeline
        return False
    if state in _SHIPPED:
        transition(session, order, S.NEEDS_ATTENTION, actor=actor, step="edited_after_shipping",
                   error="edited on the marketplace after it shipped")  # fmt: skip
        order.failed_step = "edited_after_shipping"
        order.last_error = "edited on the marketplace after it shipped: settle it with the buyer"
        return False
    relabelled = state in _PARCELS_FOLLOW and relabel(
        session, order_id, diff, address_changed=address_changed, actor=actor
    )
    if not diff and not money_changed:  # the address alone: no stock, no documents
        return relabelled
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
    return relabelled
