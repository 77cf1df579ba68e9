"""Where shipped parcels are: the carrier's tracking, asked for each shipped shipment until it
is delivered or meets an exception (``track``; the Beat task ``track_due`` every
``TRACK_INTERVAL_S`` asks for the shipments ``due`` now).

Each new status is recorded on the shipment (``tracking_status``) and on the order's timeline
(``tracking``, with the carrier's newest event), by ``record``, which the carrier's tracking
webhooks go through too (``orders.carrier_events``). ``DE`` (delivered): the shipment is
``delivered``; when every shipment of the order is, the order is ``delivered``. ``EX`` (lost,
returned to sender, damaged): the shipment is ``exception`` and the order goes to
``needs_attention`` (step ``delivery``, the carrier's description) for staff, who deal with the
buyer and the carrier; their retry acknowledges it and puts the order back to ``shipped``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Label, Order, Shipment
from db.session import Transaction
from domain.states import OrderState
from orders.intake import record_event
from orders.steps import Outcome
from orders.transitions import load_for_update, transition

__all__ = ["DELIVERY_STEP", "Delivered", "Tracker", "TrackingInfo", "due", "record", "track"]

S = OrderState
#: the order's failed step when the carrier lost its parcel
DELIVERY_STEP = "delivery"
#: shipments whose tracking may still change
_TRACKED = ("shipped",)


class TrackingInfo(Protocol):
    @property
    def status_code(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def exception(self) -> str | None: ...
    @property
    def events(self) -> tuple[tuple[str, str, str], ...]: ...


class Delivered(Protocol):
    """Work for a delivered shipment, in the transaction that records the delivery."""

    def __call__(self, session: Session, shipment_id: int) -> None: ...


class Tracker(Protocol):
    """The carrier: where the parcel of one label is."""

    def track_label(self, label_id: str) -> TrackingInfo: ...


def due(session: Session, *, interval: dt.timedelta, limit: int = 500) -> list[int]:
    """Shipped shipments (with a label of ours) not delivered yet, whose tracking was not
    asked for in the last ``interval``."""
    cutoff = utcnow() - interval
    return list(
        session.scalars(
            select(Shipment.id)
            .join(Label, Label.shipment_id == Shipment.id)
            .where(
                Shipment.status.in_(_TRACKED),
                Label.external_id.is_not(None),
                Label.voided_at.is_(None),
                (Shipment.tracked_at.is_(None)) | (Shipment.tracked_at < cutoff),
            )
            .order_by(Shipment.tracked_at.nulls_first(), Shipment.id)
            .limit(limit)
        ).all()
    )


def track(
    transaction: Transaction,
    shipment_id: int,
    carrier: Callable[[], Tracker],
    *,
    delivered: Delivered | None = None,
) -> Outcome:
    """Ask the carrier where the shipment's parcel is and record what changed; ``delivered``
    (called with the shipment id in the transaction that records the delivery) tells the
    marketplace, where it takes delivery events."""
    with transaction() as session:
        found = session.execute(
            select(Shipment.status, Label.external_id)
            .join(Label, Label.shipment_id == Shipment.id)
            .where(Shipment.id == shipment_id, Label.voided_at.is_(None))
        ).one_or_none()
        if found is None or found[0] not in _TRACKED or found[1] is None:
            return Outcome("skip: not tracked")
        label_id = str(found[1])
    info = carrier().track_label(label_id)
    with transaction() as session:
        return record(session, shipment_id, info, actor="task:track_shipment",
                      delivered=delivered)  # fmt: skip


#: how far along a parcel a status code is (ShipEngine's codes): a status below the one
#: recorded is an older event arriving late, and changes nothing
_PROGRESS = {"NY": 0, "UN": 0, "AC": 1, "IT": 2, "AT": 2, "DE": 3, "SP": 3, "EX": 3}


def record(
    session: Session,
    shipment_id: int,
    info: TrackingInfo,
    *,
    actor: str,
    delivered: Delivered | None = None,
) -> Outcome:
    """Record what the carrier says of one shipment's parcel, asked (``track``) or told (its
    tracking webhook, ``orders.carrier_events``): the one place both go through, so a poll
    and a webhook agree and a repeated or late one changes nothing. A status not further
    along than the one recorded (the same again, or an older event after a newer one) is
    unchanged; ``DE`` delivers the shipment (the order once all of its parcels are), ``EX``
    sends the order to ``needs_attention``."""
    shipment = session.get(Shipment, shipment_id, with_for_update=True)
    if shipment is None:
        return Outcome("skip: no such shipment")
    shipment.tracked_at = utcnow()
    code = info.status_code
    known = _PROGRESS.get(shipment.tracking_status or "", -1)
    if shipment.status not in _TRACKED or code == shipment.tracking_status or (
        _PROGRESS.get(code, 0) < known
    ):
        return Outcome(f"unchanged: {code}")
    shipment.tracking_status = code
    newest = info.events[0] if info.events else ("", code, info.description)
    record_event(session, shipment.order_id, actor=actor, kind="tracking",
                 tracking_number=shipment.tracking_number, status=code,
                 description=info.description, at=newest[0], event=newest[2])  # fmt: skip
    if code == "DE":
        shipment.status, shipment.delivered_at = "delivered", utcnow()
        _order_delivered(session, shipment.order_id, actor)
        if delivered is not None:
            delivered(session, shipment_id)
    elif code == "EX":
        shipment.status = "exception"
        _order_lost(session, shipment.order_id, info.exception or info.description, actor)
    return Outcome(code)


def _order_delivered(session: Session, order_id: int, actor: str) -> None:
    order = load_for_update(session, order_id)
    if OrderState(order.state) != S.SHIPPED:
        return  # partly shipped, or needs attention: the order waits for the rest
    left = session.scalar(
        select(Shipment.id).where(
            Shipment.order_id == order_id,
            Shipment.status.not_in(["delivered", "voided"]),
        )
    )
    if left is None:
        transition(session, order, S.DELIVERED, actor=actor)


def _order_lost(session: Session, order_id: int, why: str, actor: str) -> None:
    order: Order = load_for_update(session, order_id)
    if OrderState(order.state) not in (S.SHIPPED, S.PARTIALLY_SHIPPED):
        return
    error = f"carrier exception: {why}"[:2000]
    transition(session, order, S.NEEDS_ATTENTION, actor=actor, step=DELIVERY_STEP,
               error=error)  # fmt: skip
    order.failed_step, order.last_error, order.attempts = DELIVERY_STEP, error, 1
