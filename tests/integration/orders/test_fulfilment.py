"""orders.fulfilment: one label per order, ready to ship once documented, shipped once."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from db.models import (
    Invoice,
    Label,
    OutboxMessage,
    Shipment,
    ShipmentLine,
    StockItem,
    StockReservation,
)
from domain.parcel import Parcel
from domain.states import OrderState
from orders import stock
from orders.fulfilment import (
    LABEL_NOT_NEEDED,
    buy_label,
    cancelled_after_shipping,
    fulfilled_elsewhere,
    mark_ready_to_ship,
    ship,
)
from orders.steps import Outcome
from orders.transitions import IllegalTransition
from tests.support.shop import ADDRESS, FakeCarrier, FollowUps, Shop, never_built

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


def test_a_paid_order_without_its_label_is_not_ready_and_waits_for_it(
    shop: Shop, later: FollowUps
) -> None:
    from domain.errors import RetryableError
    from orders.fulfilment import DocumentsPending

    order_id = shop.order(S.PAID)
    _invoiced(shop, order_id)

    # its label set aside by an edit and being bought again: the step waits (a retry), it
    # does not fail the order
    with pytest.raises(DocumentsPending, match="still being made") as waiting:
        mark_ready_to_ship(shop.transaction, order_id, ship_it=later("ship"))
    assert isinstance(waiting.value, RetryableError)
    assert shop.get(order_id).state == S.PAID

    _labelled(shop, order_id)  # the new label is bought
    assert mark_ready_to_ship(shop.transaction, order_id, ship_it=later("ship")) == Outcome(
        "ready_to_ship"
    )


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


def test_ship_takes_the_stock_off_the_shelf_and_writes_the_fulfilment_to_the_outbox_once(
    shop: Shop, later: FollowUps
) -> None:
    order_id = _ready_with_stock(shop)

    first = ship(shop.transaction, order_id, deliver_it=later("deliver"))
    second = ship(shop.transaction, order_id, deliver_it=later("deliver"))

    assert (first, second) == (Outcome("shipped"), Outcome("skip: shipped"))
    item = shop.rows(StockItem, sku="A")[0]
    assert (item.on_hand, item.reserved) == (3, 0)
    assert [r.status for r in shop.rows(StockReservation, order_id=order_id)] == ["consumed"]
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert shipment.status == "shipped" and shipment.shipped_at is not None
    assert shop.get(order_id).state == S.SHIPPED
    # the effect on the marketplace: one row, written with the state change, delivered later
    (message,) = shop.rows(OutboxMessage, order_id=order_id)
    assert (message.kind, message.status, message.shipment_id) == ("fulfilment", "pending",
                                                                   shipment.id)  # fmt: skip
    assert message.idempotency_key == f"fulfill:{order_id}:s{shipment.id}"
    # a shipment made before shipments had lines: the marketplace ships what is open
    assert message.payload == {"tracking_number": "1ZSHIP", "carrier": "ups", "location": "main",
                               "lines": [], "last": True}  # fmt: skip
    assert later.scheduled == {"deliver": [message.id]}


def test_an_order_without_a_labelled_shipment_does_not_ship(shop: Shop, later: FollowUps) -> None:
    order_id = shop.order(S.READY_TO_SHIP)

    with pytest.raises(IllegalTransition, match="no labelled shipment"):
        ship(shop.transaction, order_id, deliver_it=later("deliver"))
    assert shop.get(order_id).state == S.READY_TO_SHIP and shop.rows(OutboxMessage) == []


def test_an_order_the_marketplace_ships_is_recorded_shipped_with_no_push_and_no_stock(
    shop: Shop, later: FollowUps
) -> None:
    order_id = shop.order(S.READY_TO_SHIP, channel="amazon", fulfilled_by_marketplace=True)
    with shop.transaction() as session:
        stock.set_on_hand(session, "SKU-1", 5)

    outcome = ship(shop.transaction, order_id, deliver_it=later("deliver"))

    assert outcome == Outcome("shipped by the marketplace")
    assert later.scheduled == {} and shop.rows(OutboxMessage) == [] and shop.rows(Shipment) == []
    assert shop.rows(StockItem, sku="SKU-1")[0].on_hand == 5
    (shipped,) = shop.events(order_id, "transition")
    assert shipped.to_state == S.SHIPPED and shipped.detail == {"fulfilled_by": "amazon"}


# --- split shipments ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Group:
    location: str
    lines: tuple[tuple[str, int], ...]


def _split_order(shop: Shop) -> int:
    """A paid order of three lines (external ids 0, 1, 2) the marketplace ships from two
    locations: lines 0 and 2 from the first, line 1 from the second."""
    order_id = shop.order(S.RESERVED, lines={"A": 2, "B": 1, "C": 3})
    with shop.transaction() as session:
        for sku in "ABC":
            stock.set_on_hand(session, sku, 5)
        assert stock.reserve(session, order_id).ok
    shop.update(order_id, state=S.PAID)
    return order_id


def _two_locations(order_id: int) -> list[_Group]:
    return TWO_LOCATIONS


TWO_LOCATIONS = [_Group("gid://shopify/Location/1", (("0", 2), ("2", 3))),
                 _Group("gid://shopify/Location/2", (("1", 1),))]  # fmt: skip


def test_an_order_from_two_locations_gets_two_shipments_each_with_its_lines_and_label(
    shop: Shop,
) -> None:
    carrier = FakeCarrier()
    order_id = _split_order(shop)
    asked: list[int] = []

    def plan(order_id: int) -> list[_Group]:
        asked.append(order_id)
        return TWO_LOCATIONS

    outcome = buy_label(shop.transaction, order_id, lambda: carrier, shop.keys(), plan)
    again = buy_label(shop.transaction, order_id, never_built, shop.keys("task-2"), plan)

    assert outcome == again == Outcome("1Z00000001, 1Z00000002") and asked == [order_id]
    first, second = shop.rows(Shipment, order_id=order_id)
    assert (first.location, second.location) == ("gid://shopify/Location/1",
                                                  "gid://shopify/Location/2")  # fmt: skip
    assert {(sl.line_external_id, sl.quantity) for sl in shop.rows(ShipmentLine,
            shipment_id=first.id)} == {("0", 2), ("2", 3)}  # fmt: skip
    assert [(sl.line_external_id, sl.quantity)
            for sl in shop.rows(ShipmentLine, shipment_id=second.id)] == [("1", 1)]  # fmt: skip
    assert [b["key"] for b in carrier.bought] == [f"label:{order_id}",
                                                  f"label:{order_id}:s{second.id}"]  # fmt: skip
    assert [b["parcel"].weight_grams for b in carrier.bought] == [2000, 400]
    assert len(shop.rows(Label)) == 2


def test_shipping_one_shipment_leaves_the_order_partially_shipped_until_the_last(
    shop: Shop, later: FollowUps
) -> None:
    order_id, carrier = _split_order(shop), FakeCarrier()
    buy_label(shop.transaction, order_id, lambda: carrier, shop.keys(), _two_locations)
    _invoiced(shop, order_id)
    mark_ready_to_ship(shop.transaction, order_id, ship_it=later("ship"))
    first, second = shop.rows(Shipment, order_id=order_id)

    partly = ship(shop.transaction, order_id, deliver_it=later("deliver"),
                  shipment_ids=[second.id])  # fmt: skip

    assert partly == Outcome("partially shipped")
    assert shop.get(order_id).state == S.PARTIALLY_SHIPPED
    assert shop.rows(StockItem, sku="B")[0].on_hand == 5  # consumed with the last shipment
    (message,) = shop.rows(OutboxMessage, order_id=order_id)
    assert message.payload == {"tracking_number": "1Z00000002", "carrier": "ups",
                               "location": "gid://shopify/Location/2", "lines": [["1", 1]],
                               "last": False}  # fmt: skip

    rest = ship(shop.transaction, order_id, deliver_it=later("deliver"))

    assert rest == Outcome("shipped") and shop.get(order_id).state == S.SHIPPED
    messages = shop.rows(OutboxMessage, order_id=order_id)
    assert [m.idempotency_key for m in messages] == [f"fulfill:{order_id}:s{second.id}",
                                                     f"fulfill:{order_id}:s{first.id}"]  # fmt: skip
    assert messages[1].payload == {"tracking_number": "1Z00000001", "carrier": "ups",
                                   "location": "gid://shopify/Location/1",
                                   "lines": [["0", 2], ["2", 3]], "last": True}  # fmt: skip
    assert [shop.rows(StockItem, sku=s)[0].on_hand for s in "ABC"] == [3, 4, 2]
    moves = [(e.from_state, e.to_state) for e in shop.events(order_id, "transition")][-2:]
    assert moves == [(S.READY_TO_SHIP, S.PARTIALLY_SHIPPED), (S.PARTIALLY_SHIPPED, S.SHIPPED)]


# --- changes made in the marketplace's own admin ----------------------------------------------


def test_an_order_fulfilled_in_the_marketplaces_admin_is_not_shipped_again(
    shop: Shop, later: FollowUps
) -> None:
    order_id = _ready_with_stock(shop)
    shop.update(order_id, fulfillment_status="fulfilled")  # what the marketplace now says

    with shop.transaction() as session:
        applied = fulfilled_elsewhere(session, order_id, void_unused=later("void"))

    assert applied and shop.get(order_id).state == S.SHIPPED
    assert shop.rows(Shipment, order_id=order_id)[0].status == "voided"
    assert later.scheduled == {"void": [order_id]} and shop.rows(OutboxMessage) == []
    assert shop.rows(StockItem, sku="A")[0].on_hand == 3
    (moved,) = [e for e in shop.events(order_id, "transition") if e.to_state == S.SHIPPED]
    assert moved.detail == {"fulfilled_by": "marketplace admin", "shipments_not_sent": 1}
    # our Ship click afterwards does nothing
    assert ship(shop.transaction, order_id, deliver_it=later("deliver")) == Outcome(
        "skip: shipped"
    )


def test_lines_fulfilled_in_the_admin_get_no_shipment_of_ours(shop: Shop) -> None:
    carrier = FakeCarrier()
    order_id = _split_order(shop)

    def open_lines(order_id: int) -> list[_Group]:  # line 1 was shipped from the admin
        return [_Group("gid://shopify/Location/1", (("0", 2), ("2", 3)))]

    buy_label(shop.transaction, order_id, lambda: carrier, shop.keys(), open_lines)

    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert {sl.line_external_id for sl in shop.rows(ShipmentLine, shipment_id=shipment.id)} == {
        "0", "2"
    }  # fmt: skip


def test_a_cancellation_on_the_marketplace_after_shipping_expects_a_return(shop: Shop) -> None:
    shipped = shop.order(S.SHIPPED)
    delivered = shop.order(S.DELIVERED)

    with shop.transaction() as session:
        assert cancelled_after_shipping(session, shipped)
        assert cancelled_after_shipping(session, delivered)
    with shop.transaction() as session:  # a second update says the same: recorded once
        assert not cancelled_after_shipping(session, shipped)

    order = shop.get(shipped)
    assert (order.state, order.failed_step) == (S.NEEDS_ATTENTION, "return")
    assert order.last_error == (
        "cancelled on the marketplace after it shipped: expect the parcel back"
    )
    assert shop.get(delivered).state == S.DELIVERED
    assert len(shop.events(shipped, "return_expected")) == 1
    assert len(shop.events(delivered, "return_expected")) == 1
