"""The carrier's tracking webhooks, applied (``apply``; its task ``carrier_event``).

The web process stores the raw, signed delivery in ``carrier_events`` (``web/carrier_webhooks.py``)
and this applies it through ``orders.tracking.record``, the very service the poll uses: the
shipment whose label carries the tracking number gets the status, a repeated event or an older
one arriving after a newer one changes nothing, and the poll and the webhook agree whichever
comes first. An event for a tracking number we have no shipped parcel of is kept as ``ignored``
(a label voided, or bought by someone else on the account); a body that is no track event is
``failed`` with the reason, for staff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import CarrierEvent, Label, Shipment
from domain.errors import PayloadError
from domain.states import InboxStatus
from orders.steps import Outcome
from orders.tracking import Delivered, TrackingInfo, record

__all__ = ["ACTOR", "TASK", "TrackEvent", "apply"]

#: who the timeline says moved the parcel
ACTOR = "carrier:webhook"
#: the task that applies one stored event (its only argument: the event id)
TASK = "ordersync.intake.carrier_event"


class TrackEvent(Protocol):
    """A tracking webhook read: the parcel's tracking number and what the carrier says."""

    @property
    def tracking_number(self) -> str: ...
    @property
    def tracking(self) -> TrackingInfo: ...


def apply(
    session: Session,
    event_id: int,
    parse: Callable[[bytes], TrackEvent],
    *,
    delivered: Delivered | None = None,
) -> Outcome:
    """Apply one stored tracking webhook (once: a processed one is skipped); ``parse`` reads
    the carrier's body (``integrations.carriers.webhooks.parse_track_event``) and raises
    ``PayloadError`` for one that is no track event."""
    event = session.get(CarrierEvent, event_id, with_for_update=True)
    if event is None:
        return Outcome("skip: no such event")
    if event.status != InboxStatus.RECEIVED:
        return Outcome(f"skip: {event.status}")
    event.attempts += 1
    event.processed_at = utcnow()
    try:
        parsed = parse(event.body)
    except PayloadError as exc:
        event.status, event.error = InboxStatus.FAILED, str(exc)[:2000]
        return Outcome(f"failed: {event.error}")
    shipment_id = session.scalar(
        select(Shipment.id)
        .join(Label, Label.shipment_id == Shipment.id)
        .where(Shipment.tracking_number == parsed.tracking_number, Label.voided_at.is_(None))
        .order_by(Shipment.id.desc())
        .limit(1)
    )
    if shipment_id is None:
        event.status = InboxStatus.IGNORED
        event.error = "no parcel of ours has this tracking number"
        return Outcome("ignored: unknown tracking number")
    outcome = record(session, shipment_id, parsed.tracking, actor=ACTOR, delivered=delivered)
    event.status, event.shipment_id, event.error = InboxStatus.PROCESSED, shipment_id, None
    return outcome
