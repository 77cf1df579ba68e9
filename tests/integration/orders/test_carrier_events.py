"""orders.carrier_events: the carrier's tracking webhooks go through the poll's service
(orders.tracking.record), so a webhook and a poll agree, and a repeated or late event changes
nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from db.models import CarrierEvent, Label, Shipment
from domain.states import InboxStatus, OrderState
from integrations.carriers.payloads import Tracking
from integrations.carriers.webhooks import parse_track_event
from orders.carrier_events import ACTOR, apply
from orders.steps import Outcome
from orders.tracking import track
from tests.support.shop import Shop

S = OrderState


def _shipped(shop: Shop, tracking: str = "1ZWEBHOOK") -> tuple[int, int]:
    order_id = shop.order(S.SHIPPED)
    with shop.transaction() as session:
        shipment = Shipment(order_id=order_id, carrier="ups", status="shipped",
                            tracking_number=tracking)  # fmt: skip
        session.add(shipment)
        session.flush()
        session.add(Label(shipment_id=shipment.id, carrier="ups", tracking_number=tracking,
                          external_id="se-9", idempotency_key=f"label:{order_id}",
                          pdf=b"%PDF-"))  # fmt: skip
        return order_id, shipment.id


def _stored(shop: Shop, tracking: str, code: str, *, n: int = 0) -> int:
    body = json.dumps({
        "resource_url": f"https://api.shipengine.com/v1/tracking?tracking_number={tracking}",
        "resource_type": "API_TRACK",
        "data": {"tracking_number": tracking, "status_code": code, "n": n,
                 "status_description": {"IT": "In Transit", "DE": "Delivered",
                                        "EX": "Exception"}.get(code, code),
                 "exception_description": "Lost in transit" if code == "EX" else None,
                 "events": [{"occurred_at": f"2026-12-03T0{n}:00:00Z", "status_code": code,
                             "description": code}]},
    }).encode()  # fmt: skip
    with shop.transaction() as session:
        event = CarrierEvent(carrier="shipengine", dedupe_key=f"{tracking}-{code}-{n}",
                             body=body, status="received", attempts=0)  # fmt: skip
        session.add(event)
        session.flush()
        return event.id


def _apply(shop: Shop, event_id: int, told: list[int] | None = None) -> Outcome:
    def tell(session: Session, shipment_id: int) -> None:
        assert told is not None
        told.append(shipment_id)

    with shop.transaction() as session:
        return apply(session, event_id, parse_track_event, delivered=tell)


def test_in_transit_then_delivered_by_webhook_delivers_the_order_once(shop: Shop) -> None:
    order_id, shipment_id = _shipped(shop)
    told: list[int] = []

    moving = _apply(shop, _stored(shop, "1ZWEBHOOK", "IT", n=1), told)
    arrived = _apply(shop, _stored(shop, "1ZWEBHOOK", "DE", n=2), told)

    assert (moving, arrived) == (Outcome("IT"), Outcome("DE"))
    assert shop.get(order_id).state == S.DELIVERED and told == [shipment_id]
    events = shop.events(order_id, "tracking")
    assert [(e.actor, e.detail["status"]) for e in events] == [(ACTOR, "IT"), (ACTOR, "DE")]
    assert {(e.status, e.shipment_id) for e in shop.rows(CarrierEvent)} == {
        (InboxStatus.PROCESSED, shipment_id)}  # fmt: skip


def test_a_repeated_or_late_event_changes_nothing(shop: Shop) -> None:
    order_id, shipment_id = _shipped(shop)
    _apply(shop, _stored(shop, "1ZWEBHOOK", "IT", n=2))

    # an older status arriving after a newer one (out of order), then the same one again
    late = _apply(shop, _stored(shop, "1ZWEBHOOK", "AC", n=1))
    again = _apply(shop, _stored(shop, "1ZWEBHOOK", "IT", n=3))

    assert (late, again) == (Outcome("unchanged: AC"), Outcome("unchanged: IT"))
    (shipment,) = shop.rows(Shipment, id=shipment_id)
    assert (shipment.status, shipment.tracking_status) == ("shipped", "IT")
    assert len(shop.events(order_id, "tracking")) == 1

    # delivered; an in-transit event delivered late after it moves nothing back
    delivered = _stored(shop, "1ZWEBHOOK", "DE", n=4)
    assert _apply(shop, delivered, []) == Outcome("DE")
    assert _apply(shop, _stored(shop, "1ZWEBHOOK", "IT", n=5)) == Outcome("unchanged: IT")
    assert _apply(shop, delivered) == Outcome("skip: processed")  # the same row twice
    assert shop.get(order_id).state == S.DELIVERED


def test_the_poll_after_the_webhook_agrees_and_records_nothing_new(shop: Shop) -> None:
    order_id, shipment_id = _shipped(shop)
    _apply(shop, _stored(shop, "1ZWEBHOOK", "IT", n=1))

    class Carrier:  # the carrier's answer to the poll: what its webhook said
        def track_label(self, label_id: str) -> Tracking:
            return parse_track_event(shop.rows(CarrierEvent)[0].body).tracking

    assert track(shop.transaction, shipment_id, lambda: Carrier()) == Outcome("unchanged: IT")
    assert len(shop.events(order_id, "tracking")) == 1


def test_a_lost_parcel_by_webhook_needs_attention(shop: Shop) -> None:
    order_id, _ = _shipped(shop)
    assert _apply(shop, _stored(shop, "1ZWEBHOOK", "EX")) == Outcome("EX")
    order = shop.get(order_id)
    assert (order.state, order.failed_step, order.last_error) == (
        S.NEEDS_ATTENTION, "delivery", "carrier exception: Lost in transit")  # fmt: skip


def test_an_unknown_parcel_is_ignored_and_a_body_that_is_no_track_event_fails(
    shop: Shop,
) -> None:
    unknown = _stored(shop, "1ZSOMEONEELSE", "DE")
    assert _apply(shop, unknown) == Outcome("ignored: unknown tracking number")
    with shop.transaction() as session:
        bad = CarrierEvent(carrier="shipengine", dedupe_key="bad", body=b'{"resource_type": 1}',
                           status="received", attempts=0)  # fmt: skip
        session.add(bad)
    assert _apply(shop, bad.id).result.startswith("failed: carrier webhook: not a track event")
    rows = {e.id: e for e in shop.rows(CarrierEvent)}
    assert (rows[unknown].status, rows[bad.id].status) == (InboxStatus.IGNORED, InboxStatus.FAILED)
