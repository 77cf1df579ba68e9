"""orders.tracking: the carrier's tracking moves shipped parcels (and then their orders) to
delivered, and a parcel the carrier lost sends its order to needs_attention."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy.orm import Session

from db.models import Label, Shipment
from domain.states import OrderState
from orders.recovery import retry
from orders.steps import Outcome
from orders.tracking import due, track
from tests.support.shop import FollowUps, Shop

S = OrderState
EVENTS = (("2026-12-02T10:00:00Z", "DE", "Delivered"), ("2026-12-01T08:00:00Z", "AC", "Origin"))


@dataclasses.dataclass(frozen=True)
class _Info:
    status_code: str
    description: str
    exception: str | None = None
    events: tuple[tuple[str, str, str], ...] = EVENTS


class _Carrier:
    """Answers each shipment's tracking from ``status`` (label id → tracking)."""

    def __init__(self, **status: _Info) -> None:
        self.status, self.asked = status, []  # type: ignore[var-annotated]

    def track_label(self, label_id: str) -> _Info:
        self.asked.append(label_id)
        return self.status[label_id]


def _shipped(shop: Shop, *parcels: str, state: OrderState = S.SHIPPED) -> tuple[int, list[int]]:
    """An order in ``state`` with one shipped shipment per label id in ``parcels``."""
    order_id = shop.order(state)
    ids = []
    with shop.transaction() as session:
        for n, label_id in enumerate(parcels):
            shipment = Shipment(order_id=order_id, carrier="ups", status="shipped",
                                tracking_number=f"1Z{n}")  # fmt: skip
            session.add(shipment)
            session.flush()
            session.add(Label(shipment_id=shipment.id, carrier="ups", tracking_number=f"1Z{n}",
                              external_id=label_id, idempotency_key=f"label:{order_id}:{n}",
                              pdf=b"%PDF-"))  # fmt: skip
            ids.append(shipment.id)
    return order_id, ids


def test_a_delivered_parcel_delivers_its_shipment_and_its_order_once(shop: Shop) -> None:
    order_id, (shipment_id,) = _shipped(shop, "se-1")
    carrier = _Carrier(**{"se-1": _Info("DE", "Delivered")})
    told: list[int] = []

    def tell(session: Session, shipment_id: int) -> None:
        assert session.in_transaction()
        told.append(shipment_id)

    first = track(shop.transaction, shipment_id, lambda: carrier, delivered=tell)
    again = track(shop.transaction, shipment_id, lambda: carrier, delivered=tell)

    assert (first, again) == (Outcome("DE"), Outcome("skip: not tracked"))
    assert told == [shipment_id]  # the marketplace is told once
    (shipment,) = shop.rows(Shipment, id=shipment_id)
    assert (shipment.status, shipment.tracking_status) == ("delivered", "DE")
    assert shipment.delivered_at is not None
    assert shop.get(order_id).state == S.DELIVERED
    (event,) = shop.events(order_id, "tracking")
    assert event.detail == {"tracking_number": "1Z0", "status": "DE", "description": "Delivered",
                            "at": "2026-12-02T10:00:00Z", "event": "Delivered"}  # fmt: skip


def test_an_order_is_delivered_only_when_its_last_shipment_is(shop: Shop) -> None:
    order_id, (one, two) = _shipped(shop, "se-1", "se-2")
    carrier = _Carrier(**{"se-1": _Info("DE", "Delivered"), "se-2": _Info("IT", "In Transit")})

    track(shop.transaction, one, lambda: carrier)
    track(shop.transaction, two, lambda: carrier)
    assert shop.get(order_id).state == S.SHIPPED

    carrier.status["se-2"] = _Info("DE", "Delivered")
    assert track(shop.transaction, two, lambda: carrier) == Outcome("DE")
    assert shop.get(order_id).state == S.DELIVERED


def test_a_lost_parcel_sends_the_order_to_needs_attention_and_staff_retry_acknowledges_it(
    shop: Shop, later: FollowUps
) -> None:
    order_id, (shipment_id,) = _shipped(shop, "se-1")
    lost = _Info("EX", "Exception", exception="Lost in transit")

    outcome = track(shop.transaction, shipment_id, lambda: _Carrier(**{"se-1": lost}))

    assert outcome == Outcome("EX")
    order = shop.get(order_id)
    assert (order.state, order.failed_step) == (S.NEEDS_ATTENTION, "delivery")
    assert order.last_error == "carrier exception: Lost in transit"
    assert shop.rows(Shipment, id=shipment_id)[0].status == "exception"
    with shop.transaction() as session:
        resumed = retry(session, order_id, actor="staff:ann", pipeline=later("pipeline"),
                        ship=later("ship"), refund=later("refund"), push=later("push"))  # fmt: skip
    assert resumed == S.SHIPPED and shop.get(order_id).state == S.SHIPPED


def test_an_unchanged_status_is_recorded_once(shop: Shop) -> None:
    order_id, (shipment_id,) = _shipped(shop, "se-1")
    carrier = _Carrier(**{"se-1": _Info("IT", "In Transit")})

    assert track(shop.transaction, shipment_id, lambda: carrier) == Outcome("IT")
    assert track(shop.transaction, shipment_id, lambda: carrier) == Outcome("unchanged: IT")
    assert len(shop.events(order_id, "tracking")) == 1 and carrier.asked == ["se-1", "se-1"]


def test_due_lists_shipped_parcels_not_asked_about_within_the_interval(shop: Shop) -> None:
    _, (fresh, old, never) = _shipped(shop, "se-1", "se-2", "se-3")
    _, (delivered,) = _shipped(shop, "se-4", state=S.DELIVERED)
    now = dt.datetime.now(dt.UTC)
    with shop.transaction() as session:
        for shipment_id, at in ((fresh, now), (old, now - dt.timedelta(hours=1))):
            shipment = session.get(Shipment, shipment_id)
            assert shipment is not None
            shipment.tracked_at = at
        done = session.get(Shipment, delivered)
        assert done is not None
        done.status = "delivered"

    with shop.transaction() as session:
        found = due(session, interval=dt.timedelta(minutes=5))

    assert found == [never, old]
