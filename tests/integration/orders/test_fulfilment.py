"""orders.fulfilment: one label per order, ready to ship once documented, shipped once."""

from __future__ import annotations

from typing import Any

import pytest

from db.models import ChannelAccount, Invoice, Label, Shipment, StockItem, StockReservation
from domain.errors import ServerError
from domain.parcel import Parcel
from domain.states import OrderState
from orders import stock
from orders.fulfilment import LABEL_NOT_NEEDED, buy_label, mark_ready_to_ship, ship
from orders.steps import Outcome
from orders.transitions import IllegalTransition
from tests.support.shop import ADDRESS, FakeCarrier, FakeMarketplace, FollowUps, Shop, never_built

S = OrderState


def _labelled(shop: Shop, order_id: int, tracking: str = "1ZEXISTING") -> None:
    with shop.transaction() as session:
        shipment = Shipment(order_id=order_id, carrier="ups", status="labelled",
                            tracking_number=tracking)  # fmt: skip
        session.add(shipment)
        session.flush()
        session.add(Label(shipment_id=shipment.id, carrier="ups", tracking_number=tracking,
                          idempotency_key=f"label:{order_id}", pdf=b"%PDF-"))  # fmt: skip


def _invoiced(shop: Shop, order_id: int) -> None:
    order = shop.get(order_id)
    with shop.transaction() as session:
        session.add(Invoice(order_id=order_id, kind="invoice", series="INV-T", number=order_id,
                            source_key=f"invoice:{order_id}:1",
                            full_number=f"INV-T-{order_id}", total=order.total,
                            currency=order.currency))  # fmt: skip


# --- buy_label ----------------------------------------------------------------------------------


def test_buy_label_buys_one_label_and_records_the_shipment_and_the_label(shop: Shop) -> None:
    carrier = FakeCarrier()
    order_id = shop.order(S.PAID, lines={"A": 2, "B": 1})

    outcome = buy_label(shop.transaction, order_id, lambda: carrier, shop.keys())
    # a second run finds the label and buys none
    again = buy_label(shop.transaction, order_id, never_built, shop.keys("task-2"))

    assert outcome == again == Outcome("1Z00000001")
    (bought,) = carrier.bought
    assert bought["key"] == f"label:{order_id}" and bought["ref"] == f"order-{order_id}"
    assert bought["parcel"] == Parcel(weight_grams=1200, length_cm=30, width_cm=20, height_cm=10)
    assert bought["ship_to"].model_dump(exclude_none=True) == ADDRESS
    assert bought["ship_from"].name == "ordersync demo shop"  # the configured seller
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert (shipment.status, shipment.tracking_number) == ("labelled", "1Z00000001")
    assert shipment.carrier == "ups"
    (label,) = shop.rows(Label, shipment_id=shipment.id)
    assert (label.idempotency_key, label.pdf) == (f"label:{order_id}", b"%PDF-1.4 label")
    (event,) = shop.events(order_id, "label")
    assert event.detail == {"tracking_number": "1Z00000001", "carrier": "ups"}
    key = shop.key(f"label:{order_id}")
    assert key is not None and key.recovery_point == "finished"


def test_buy_label_reuses_the_label_an_order_has(shop: Shop) -> None:
    order_id = shop.order(S.PAID)
    _labelled(shop, order_id, "1ZEXISTING")

    outcome = buy_label(shop.transaction, order_id, never_built, shop.keys())

    assert outcome == Outcome("1ZEXISTING")
    assert len(shop.rows(Label)) == 1 and shop.key(f"label:{order_id}") is None


def test_buy_label_labels_a_shipment_that_has_no_label_yet(shop: Shop) -> None:
    carrier = FakeCarrier()
    order_id = shop.order(S.PAID, lines={"A": 1})
    with shop.transaction() as session:
        session.add(Shipment(order_id=order_id, carrier="ups", status="pending"))

    outcome = buy_label(shop.transaction, order_id, lambda: carrier, shop.keys())

    assert outcome == Outcome("1Z00000001")
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert (shipment.status, shipment.tracking_number) == ("labelled", "1Z00000001")
    assert len(shop.rows(Label, shipment_id=shipment.id)) == 1


def test_buy_label_buys_nothing_for_an_order_the_marketplace_ships(shop: Shop) -> None:
    order_id = shop.order(S.PAID, channel="amazon", fulfilled_by_marketplace=True)

    first = buy_label(shop.transaction, order_id, never_built, shop.keys())
    second = buy_label(shop.transaction, order_id, never_built, shop.keys())

    assert first == second == Outcome(LABEL_NOT_NEEDED)
    assert shop.rows(Shipment, order_id=order_id) == [] and shop.rows(Label) == []
    (event,) = shop.events(order_id, LABEL_NOT_NEEDED)  # recorded once
    assert event.detail == {"reason": "fulfilled by the marketplace"}


def test_buy_label_skips_an_order_that_is_not_paid(shop: Shop) -> None:
    order_id = shop.order(S.CANCELLED)

    outcome = buy_label(shop.transaction, order_id, never_built, shop.keys())

    assert outcome == Outcome("skip: cancelled")  # the chord goes on; its callback skips too
    assert shop.rows(Shipment) == []


# --- mark_ready_to_ship --------------------------------------------------------------------------


def test_a_paid_order_with_invoice_and_label_becomes_ready_to_ship(
    shop: Shop, later: FollowUps
) -> None:
    order_id = shop.order(S.PAID)
    _invoiced(shop, order_id)
    _labelled(shop, order_id)

    outcome = mark_ready_to_ship(shop.transaction, order_id, ship_it=later("ship"))

    assert outcome == Outcome("ready_to_ship")
    moves = [(e.from_state, e.to_state) for e in shop.events(order_id, "transition")]
    assert moves == [(S.PAID, S.DOCUMENTED), (S.DOCUMENTED, S.READY_TO_SHIP)]
    assert later.scheduled == {}


def test_a_paid_order_without_its_label_is_not_ready(shop: Shop, later: FollowUps) -> None:
    order_id = shop.order(S.PAID)
    _invoiced(shop, order_id)

    with pytest.raises(IllegalTransition, match="invoice or label missing"):
        mark_ready_to_ship(shop.transaction, order_id, ship_it=later("ship"))
    assert shop.get(order_id).state == S.PAID


def test_an_order_the_marketplace_already_shipped_is_shipped_once_ready(
    shop: Shop, later: FollowUps
) -> None:
    order_id = shop.order(S.PAID, channel="amazon", fulfilled_by_marketplace=True,
                          fulfillment_status="fulfilled")  # fmt: skip
    _invoiced(shop, order_id)  # the invoice alone: the marketplace ships it

    outcome = mark_ready_to_ship(shop.transaction, order_id, ship_it=later("ship"))

    assert outcome == Outcome("ready_to_ship")
    assert shop.get(order_id).state == S.READY_TO_SHIP
    assert later.scheduled == {"ship": [order_id]}


# --- ship -------------------------------------------------------------------------------------


def _ready_with_stock(shop: Shop, **fields: Any) -> int:
    order_id = shop.order(S.RESERVED, lines={"A": 2}, **fields)
    with shop.transaction() as session:
        stock.set_on_hand(session, "A", 5)
        assert stock.reserve(session, order_id).ok
    shop.update(order_id, state=S.READY_TO_SHIP)
    _labelled(shop, order_id, "1ZSHIP")
    return order_id


def test_ship_pushes_the_fulfilment_once_and_takes_the_stock_off_the_shelf(shop: Shop) -> None:
    marketplace = FakeMarketplace()
    order_id = _ready_with_stock(shop)

    assert ship(shop.transaction, order_id, marketplace) == Outcome("shipped")
    assert ship(shop.transaction, order_id, marketplace) == Outcome("skip: shipped")

    assert marketplace.pushed == [{"account": "shop", "order": shop.get(order_id).external_id,
                                   "carrier": "ups", "tracking": "1ZSHIP",
                                   "key": f"fulfill:{order_id}"}]  # fmt: skip
    item = shop.rows(StockItem, sku="A")[0]
    assert (item.on_hand, item.reserved) == (3, 0)
    assert [r.status for r in shop.rows(StockReservation, order_id=order_id)] == ["consumed"]
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert shipment.status == "shipped" and shipment.shipped_at is not None
    assert shop.get(order_id).state == S.SHIPPED


def test_a_failed_push_keeps_the_order_and_its_stock_and_the_retry_pushes_the_same_key(
    shop: Shop,
) -> None:
    marketplace = FakeMarketplace(fail=ServerError("fulfillmentCreate: 503", status=503))
    order_id = _ready_with_stock(shop)

    with pytest.raises(ServerError):
        ship(shop.transaction, order_id, marketplace)
    assert shop.get(order_id).state == S.READY_TO_SHIP
    assert shop.rows(StockItem, sku="A")[0].reserved == 2

    assert ship(shop.transaction, order_id, marketplace) == Outcome("shipped")
    assert [p["key"] for p in marketplace.pushed] == [f"fulfill:{order_id}"]


def test_an_account_with_no_api_connection_ships_without_a_push(shop: Shop) -> None:
    marketplace = FakeMarketplace()
    with shop.transaction() as session:
        offline = ChannelAccount(name="offline", channel="shopify")
        session.add(offline)
    order_id = _ready_with_stock(shop, account=offline)

    assert ship(shop.transaction, order_id, marketplace) == Outcome("shipped")
    assert marketplace.pushed == []
    assert shop.rows(StockItem, sku="A")[0].on_hand == 3


def test_an_order_the_marketplace_ships_is_recorded_shipped_with_no_push_and_no_stock(
    shop: Shop,
) -> None:
    marketplace = FakeMarketplace()
    order_id = shop.order(S.READY_TO_SHIP, channel="amazon", fulfilled_by_marketplace=True)
    with shop.transaction() as session:
        stock.set_on_hand(session, "SKU-1", 5)

    outcome = ship(shop.transaction, order_id, marketplace)

    assert outcome == Outcome("shipped by the marketplace")
    assert marketplace.pushed == [] and shop.rows(Shipment) == []
    assert shop.rows(StockItem, sku="SKU-1")[0].on_hand == 5
    (shipped,) = shop.events(order_id, "transition")
    assert shipped.to_state == S.SHIPPED and shipped.detail == {"fulfilled_by": "amazon"}
