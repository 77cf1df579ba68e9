"""What staff do to an order by hand (from the dashboard, the API or the CLI), each safe to
repeat and each on the order's timeline with who did it (``actor``: the logged-in user's name
from the API, the login name or ``--as`` from the CLI).

- ``cancel``: with a reason, before the order ships. In one transaction: the order is
  ``cancelled``, its held stock goes back, the credit note and the refund of what we captured
  are set off (the existing steps, ``orders.cancellation``), its unused labels are voided at
  the carrier (``orders.fulfilment.void_labels``, after commit) and the cancellation for the
  marketplace is written to the outbox (``orders.outbox``, key ``cancel:{order_id}``). A
  marketplace where the seller cannot cancel through the API (Amazon) is refused with the
  reason, before anything changes. A second cancel is refused as already done.
- ``hold`` / ``release``: with a reason, an order before it ships is held: the pipeline
  prepares it, but it does not ship (Ship, mark shipped) until staff release it.
- ``void_label``: void the label of a shipment that has not left, and re-buy one (a new
  shipment of the same lines, labelled by ``buy_label``).
- ``mark_shipped``: the parcel left with a label bought elsewhere: shipped by hand with its
  tracking number, pushed to the marketplace like any shipment.

Reprinting a label is reading the stored one (``GET /api/shipments/{id}/label.pdf``); shipping
chosen shipments is ``orders.fulfilment.ship(shipment_ids=…)``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import OrderLine, Shipment, ShipmentLine
from domain.states import OrderState
from orders import outbox, stock
from orders.intake import record_event
from orders.steps import FollowUp
from orders.transitions import IllegalTransition, load_for_update, transition

__all__ = ["CannotCancel", "cancel", "hold", "mark_shipped", "release", "void_label"]

S = OrderState
#: how long a cancellation reason may be (it is shown on the timeline and sent on)
REASON_MAX = 500


class CannotCancel(Exception):
    """The order cannot be cancelled by us (the marketplace does not let the seller)."""


def cancel(
    session: Session,
    order_id: int,
    *,
    reason: str,
    actor: str,
    marketplace_cancels: bool,
    on_cancelled: FollowUp,
    deliver_it: FollowUp,
) -> None:
    """Cancel the order (see the module docstring). ``marketplace_cancels``: the order's
    marketplace takes a seller's cancellation through its API; ``on_cancelled``: what any
    cancellation sets off (stock, credit note, refund, label voids)."""
    reason = reason.strip()
    if not reason or len(reason) > REASON_MAX:
        raise ValueError(f"a cancellation needs a reason of 1 to {REASON_MAX} characters")
    order = load_for_update(session, order_id)
    state = OrderState(order.state)
    if state == S.CANCELLED:
        raise IllegalTransition(f"order {order_id} is cancelled already")
    shipped = session.scalar(
        select(Shipment.id).where(
            Shipment.order_id == order_id, Shipment.status.in_(["shipped", "delivered"])
        )
    )
    if state in (S.SHIPPED, S.DELIVERED) or shipped is not None:
        raise IllegalTransition(
            f"order {order_id} has shipped: it comes back as a return, not a cancellation"
        )
    if not marketplace_cancels and not order.fulfilled_by_marketplace:
        raise CannotCancel(
            f"{order.channel} does not let the seller cancel an order through its API: cancel "
            "it there (the cancellation then comes back by poll and is applied here)"
        )
    if order.fulfilled_by_marketplace:
        raise CannotCancel(f"{order.channel} ships this order itself: cancel it there")
    transition(session, order, S.CANCELLED, actor=actor, reason=reason)
    order.cancelled_at = utcnow()
    on_cancelled(session, order_id)
    outbox.enqueue(session, order_id, kind=outbox.CANCELLATION, key=f"cancel:{order_id}",
                   payload={"reason": reason}, deliver_it=deliver_it)  # fmt: skip


def void_label(
    session: Session,
    shipment_id: int,
    *,
    actor: str,
    rebuy: bool,
    void_it: FollowUp,
    label_it: FollowUp,
) -> int | None:
    """Void the label of a shipment that has not left (after commit, at the carrier:
    ``void_it``) and, with ``rebuy``, put a new shipment of the same lines from the same
    location in its place, labelled after commit (``label_it``). Returns the new shipment's id.
    A shipment that left, or was voided already, is refused."""
    shipment = session.get(Shipment, shipment_id)
    if shipment is None:
        raise LookupError(f"no shipment {shipment_id}")
    order = load_for_update(session, shipment.order_id)  # one staff action on it at a time
    session.refresh(shipment)
    if shipment.status != "labelled":
        raise IllegalTransition(
            f"shipment {shipment_id} is {shipment.status}: only a label that has not left is voided"
        )
    shipment.status = "voided"
    void_it(session, order.id)
    new_id = None
    if rebuy:
        again = Shipment(order_id=order.id, carrier="", status="pending",
                         location=shipment.location,
                         stock_location_id=shipment.stock_location_id)  # fmt: skip
        again.lines = [ShipmentLine(line_external_id=line.line_external_id,
                                    quantity=line.quantity) for line in shipment.lines]  # fmt: skip
        session.add(again)
        session.flush()
        new_id = again.id
        label_it(session, order.id)
    record_event(session, order.id, actor=actor, kind="label_voided_by_staff",
                 tracking_number=shipment.tracking_number, rebuy=rebuy,
                 new_shipment=new_id)  # fmt: skip
    return new_id


def mark_shipped(
    session: Session,
    order_id: int,
    *,
    tracking_number: str,
    carrier: str,
    actor: str,
    void_it: FollowUp,
    deliver_it: FollowUp,
) -> int:
    """The parcel left with a label bought elsewhere (``tracking_number`` of ``carrier``): the
    shipments that have not left are replaced by one shipment of their lines, shipped now, whose
    fulfilment goes to the marketplace through the outbox; their labels of ours are voided
    (``void_it``); stock leaves the shelf and the order is ``shipped``. Returns the shipment's
    id."""
    tracking_number, carrier = tracking_number.strip(), carrier.strip()
    if not tracking_number or len(tracking_number) > 100 or not carrier or len(carrier) > 50:
        raise ValueError("a tracking number (1-100 characters) and a carrier (1-50) are needed")
    order = load_for_update(session, order_id)
    state = OrderState(order.state)
    if state not in (S.READY_TO_SHIP, S.PARTIALLY_SHIPPED) or order.fulfilled_by_marketplace:
        raise IllegalTransition(f"order {order_id} is {order.state}: nothing of ours to ship")
    if order.held_reason is not None:
        raise IllegalTransition(f"order {order_id} is held ({order.held_reason}): release it first")
    unused = session.scalars(
        select(Shipment).where(
            Shipment.order_id == order_id, Shipment.status.in_(["pending", "labelled"])
        ).order_by(Shipment.id)
    ).all()  # fmt: skip
    quantities: dict[str, int] = {}
    for old in unused:
        old.status = "voided"
        for line in old.lines:
            quantities[line.line_external_id] = quantities.get(line.line_external_id, 0) + (
                line.quantity
            )
    if not quantities:  # nothing planned (or planned before shipments had lines): all of it
        quantities = {
            line.external_id: line.quantity
            for line in session.scalars(select(OrderLine).where(OrderLine.order_id == order_id))
            if line.quantity > 0
        }
    now = utcnow()
    location, ours = (
        (unused[0].location, unused[0].stock_location_id) if unused
        else stock.shipment_location(session, order_id, None)
    )  # fmt: skip
    shipment = Shipment(order_id=order_id, carrier=carrier, status="shipped",
                        tracking_number=tracking_number, shipped_at=now,
                        location=location, stock_location_id=ours)  # fmt: skip
    shipment.lines = [ShipmentLine(line_external_id=k, quantity=v) for k, v in quantities.items()]
    session.add(shipment)
    session.flush()
    if unused:
        void_it(session, order_id)
    stock.consume(session, order_id)
    transition(session, order, S.SHIPPED, actor=actor, tracking_number=tracking_number,
               carrier=carrier, by_hand=True)  # fmt: skip
    outbox.enqueue(
        session, order_id, kind=outbox.FULFILMENT, key=f"fulfill:{order_id}:s{shipment.id}",
        payload={"tracking_number": tracking_number, "carrier": carrier,
                 "location": shipment.location, "lines": [[k, v] for k, v in quantities.items()],
                 "last": True},
        deliver_it=deliver_it, shipment_id=shipment.id,
    )  # fmt: skip
    return shipment.id


def hold(session: Session, order_id: int, *, reason: str, actor: str) -> None:
    """Hold the order (see the module docstring); a held one is refused as done."""
    reason = reason.strip()
    if not reason or len(reason) > REASON_MAX:
        raise ValueError(f"a hold needs a reason of 1 to {REASON_MAX} characters")
    order = load_for_update(session, order_id)
    if order.held_reason is not None:
        raise IllegalTransition(f"order {order_id} is held already")
    if OrderState(order.state) in (S.SHIPPED, S.DELIVERED, S.CANCELLED):
        raise IllegalTransition(f"order {order_id} is {order.state}: nothing to hold")
    order.held_reason = reason
    record_event(session, order_id, actor=actor, kind="held", reason=reason)


def release(session: Session, order_id: int, *, actor: str) -> None:
    """Release a held order: it may ship again."""
    order = load_for_update(session, order_id)
    if order.held_reason is None:
        raise IllegalTransition(f"order {order_id} is not held")
    record_event(session, order_id, actor=actor, kind="released", reason=order.held_reason)
    order.held_reason = None
