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

- ``ship_lines``: some lines (and units) leave now, the rest later. The chosen units are taken
  from the shipments that have not left (in order, each from its own location, so a push never
  mixes locations); a shipment only partly taken is replaced by two (``replace_shipment``): the
  taken part and the rest, each with a label of its own (the old label is voided: a label is
  bought for one parcel's weight, and the carrier refunds a voided one). The taken shipments
  ship as soon as they are labelled, their fulfilment carrying exactly those lines and units.
  One request is one key (the client's, else its content): asked again, it is the same
  request and ships nothing more.

Reprinting a label is reading the stored one (``GET /api/shipments/{id}/label.pdf``); shipping
chosen shipments is ``orders.fulfilment.ship(shipment_ids=…)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from db.base import utcnow
from db.models import OrderLine, Shipment, ShipmentLine
from domain.states import OrderState
from orders import outbox, stock
from orders.fulfilment import ShipThese, replace_shipment
from orders.intake import record_event
from orders.steps import FollowUp
from orders.transitions import IllegalTransition, load_for_update, transition

__all__ = [
    "CannotCancel",
    "ShipRequest",
    "cancel",
    "hold",
    "mark_shipped",
    "release",
    "ship_lines",
    "void_label",
]

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


@dataclass(frozen=True)
class ShipRequest:
    """The shipments that carry a ship-lines request's units, and whether the request is new
    (``False``: the same request was made before, and nothing changed now)."""

    shipment_ids: list[int]
    new: bool


#: the most units one request may name per line (a typo of 10**9 is refused, not searched for)
UNITS_MAX = 1_000_000


def _resolve(session: Session, order_id: int, lines: Mapping[str, int]) -> dict[str, int]:
    """The asked units per line, each named by its marketplace id or its SKU."""
    by_key: dict[str, str] = {}
    for external_id, sku in session.execute(
        select(OrderLine.external_id, OrderLine.sku)
        .where(OrderLine.order_id == order_id)
        .order_by(OrderLine.id)
    ):
        by_key.setdefault(external_id, external_id)
        if sku:
            by_key.setdefault(sku, external_id)
    wanted: dict[str, int] = {}
    for key, units in lines.items():
        if key not in by_key:
            raise ValueError(f"the order has no line {key!r}")
        if not 0 < units <= UNITS_MAX:
            raise ValueError(f"line {key!r}: units must be 1 to {UNITS_MAX}")
        wanted[by_key[key]] = wanted.get(by_key[key], 0) + units
    return wanted


def ship_lines(
    session: Session,
    order_id: int,
    lines: Mapping[str, int],
    *,
    actor: str,
    request_key: str | None = None,
    void_it: FollowUp,
    label_it: FollowUp,
    ship_it: ShipThese,
) -> ShipRequest:
    """Ship ``lines`` (line id or SKU → units) of a ready or partly shipped order now, the rest
    later (see the module docstring). ``void_it``, ``label_it``: void the labels of the
    shipments set aside and label the new ones, after commit; ``ship_it``: ship the taken
    shipments that are labelled (the others ship when their label is recorded). Raises
    ``ValueError`` (no such line, more units than wait to ship) and ``IllegalTransition``
    (not ready, held, shipped by the marketplace) before anything changes."""
    if not lines:
        raise ValueError("choose at least one line to ship")
    order = load_for_update(session, order_id)
    state = OrderState(order.state)
    if state not in (S.READY_TO_SHIP, S.PARTIALLY_SHIPPED) or order.fulfilled_by_marketplace:
        raise IllegalTransition(f"order {order_id} is {order.state}: nothing of ours to ship")
    if order.held_reason is not None:
        raise IllegalTransition(f"order {order_id} is held ({order.held_reason}): release it first")
    wanted = _resolve(session, order_id, lines)
    content = json.dumps(sorted(wanted.items()))
    digest = hashlib.sha256((request_key or content).encode()).hexdigest()[:32]
    key = f"ship:{order_id}:{'key' if request_key else 'lines'}:{digest}"
    asked = session.scalars(
        select(Shipment.id)
        .where(Shipment.order_id == order_id, Shipment.ship_request == key)
        .order_by(Shipment.id)
    ).all()
    if asked:
        return ShipRequest(list(asked), new=False)
    waiting = session.scalars(
        select(Shipment)
        .where(Shipment.order_id == order_id, Shipment.status.in_(["pending", "labelled"]),
               Shipment.ship_request.is_(None))
        .options(selectinload(Shipment.lines))
        .order_by(Shipment.id)
    ).all()  # fmt: skip
    left = dict(wanted)
    takes: list[tuple[Shipment, dict[str, int]]] = []
    for shipment in waiting:
        take = {}
        for line in shipment.lines:
            units = min(left.get(line.line_external_id, 0), line.quantity)
            if units:
                take[line.line_external_id] = units
                left[line.line_external_id] -= units
        if take:
            takes.append((shipment, take))
    short = {line: units for line, units in left.items() if units}
    if short:
        said = ", ".join(f"line {line}: {units}" for line, units in sorted(short.items()))
        raise ValueError(f"order {order_id}: more units than wait to ship ({said} too many)")
    chosen: list[Shipment] = []
    voided = relabel = False
    for shipment, take in takes:
        whole = {line.line_external_id: line.quantity for line in shipment.lines}
        if take == whole:
            chosen.append(shipment)
            continue
        was_labelled = shipment.status == "labelled"
        rest = {line: units - take.get(line, 0) for line, units in whole.items()}
        taken, *_ = replace_shipment(session, shipment, [take, rest])
        chosen.append(taken)
        voided, relabel = voided or was_labelled, True
    for shipment in chosen:
        shipment.ship_request, shipment.ship_requested_by = key, actor
    session.flush()
    ids = [shipment.id for shipment in chosen]
    record_event(session, order_id, actor=actor, kind="ship_lines_requested",
                 lines={line: units for line, units in sorted(wanted.items())},
                 shipments=ids)  # fmt: skip
    if voided:
        void_it(session, order_id)
    if relabel:
        label_it(session, order_id)
    # the ones labelled leave now; a pending one is shipped when its label is recorded (and
    # this finds it labelled if a label's transaction committed meanwhile)
    ship_it(session, order_id, ids)
    return ShipRequest(ids, new=True)
