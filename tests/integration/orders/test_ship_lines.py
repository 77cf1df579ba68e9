"""orders.staff.ship_lines: staff ship some lines and units now and the rest later. The chosen
units are split off their shipments (each part gets its own label; the old one is voided),
shipped once labelled with exactly those lines in the fulfilment, and asking again is the same
request (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy.orm import Session

from db.models import Invoice, Label, Order, OutboxMessage, Shipment, ShipmentLine, StockItem
from domain.states import OrderState
from orders import stock
from orders.fulfilment import buy_label, mark_ready_to_ship, replace_shipment, ship, void_labels
from orders.staff import ShipRequest, hold, ship_lines
from orders.steps import Outcome
from orders.transitions import IllegalTransition
from tests.support.shop import FakeCarrier, FollowUps, Shop

S = OrderState


@dataclasses.dataclass(frozen=True)
class _Group:
    location: str
    lines: tuple[tuple[str, int], ...]


LOC1, LOC2 = "gid://shopify/Location/1", "gid://shopify/Location/2"
#: lines 0 (2 of A) and 2 (3 of C) from the first location, line 1 (1 of B) from the second
TWO_LOCATIONS = [_Group(LOC1, (("0", 2), ("2", 3))), _Group(LOC2, (("1", 1),))]


@dataclasses.dataclass
class _Ships:
    """Records the ``ship_it`` follow-ups: (order, shipment ids), in the transaction."""

    calls: list[tuple[int, list[int]]] = dataclasses.field(default_factory=list)

    def __call__(self, session: Session, order_id: int, shipment_ids: list[int]) -> None:
        assert session.in_transaction()
        self.calls.append((order_id, list(shipment_ids)))


def _ready(shop: Shop, carrier: FakeCarrier, later: FollowUps) -> int:
    """A ready-to-ship order of three lines in two labelled shipments (two locations)."""
    order_id = shop.order(S.RESERVED, lines={"A": 2, "B": 1, "C": 3})
    with shop.transaction() as session:
        for sku in "ABC":
            stock.set_on_hand(session, sku, 5)
        assert stock.reserve(session, order_id).ok
    shop.update(order_id, state=S.PAID)
    buy_label(shop.transaction, order_id, lambda: carrier, shop.keys(), lambda _: TWO_LOCATIONS)
    with shop.transaction() as session:
        order = session.get_one(Order, order_id)
        session.add(Invoice(order_id=order_id, kind="invoice", series="INV-T", number=order_id,
                            source_key=f"invoice:{order_id}:1", full_number=f"INV-T-{order_id}",
                            total=order.total, currency=order.currency))  # fmt: skip
    assert mark_ready_to_ship(shop.transaction, order_id, ship_it=later("ship")) == Outcome(
        "ready_to_ship"
    )
    return order_id


def _ask(
    shop: Shop, order_id: int, lines: dict[str, int], later: FollowUps, ships: _Ships,
    key: str | None = None,
) -> ShipRequest:  # fmt: skip
    with shop.transaction() as session:
        return ship_lines(session, order_id, lines, actor="ann", request_key=key,
                          void_it=later("void"), label_it=later("label"),
                          ship_it=ships)  # fmt: skip


def _lines(shop: Shop, shipment_id: int) -> dict[str, int]:
    return {sl.line_external_id: sl.quantity
            for sl in shop.rows(ShipmentLine, shipment_id=shipment_id)}  # fmt: skip


def test_chosen_units_split_off_get_their_own_label_ship_alone_and_the_rest_ships_later(
    shop: Shop,
) -> None:
    carrier, later, ships = FakeCarrier(), FollowUps(), _Ships()
    order_id = _ready(shop, carrier, later)
    first, second = shop.rows(Shipment, order_id=order_id)

    # one of line 0's two units (first location) and all of line 1 (second location)
    asked = _ask(shop, order_id, {"0": 1, "B": 1}, later, ships)

    assert asked.new
    taken_id, whole_id = asked.shipment_ids
    assert whole_id == second.id  # all of its lines: it leaves as it is, with its label
    shipments = {s.id: s for s in shop.rows(Shipment, order_id=order_id)}
    assert shipments[first.id].status == "voided"
    (rest_id,) = [i for i, s in shipments.items() if i not in (first.id, second.id, taken_id)]
    assert (_lines(shop, taken_id), _lines(shop, rest_id)) == ({"0": 1}, {"0": 1, "2": 3})
    assert shipments[taken_id].location == shipments[rest_id].location == LOC1
    assert (shipments[taken_id].ship_request, shipments[taken_id].ship_requested_by) == (
        shipments[whole_id].ship_request,
        "ann",
    )
    assert shipments[rest_id].ship_request is None
    assert later.scheduled == {"void": [order_id], "label": [order_id]}
    assert ships.calls == [(order_id, [taken_id, whole_id])]
    (requested,) = shop.events(order_id, "ship_lines_requested")
    assert requested.actor == "ann"
    assert requested.detail == {"lines": {"0": 1, "1": 1}, "shipments": [taken_id, whole_id]}

    # the ship published with the request: the whole one leaves, the taken one waits for its
    # label (its label ships it)
    now = ship(shop.transaction, order_id, deliver_it=later("deliver"),
               shipment_ids=[taken_id, whole_id])  # fmt: skip
    assert now == Outcome("partially shipped") and shop.get(order_id).state == S.PARTIALLY_SHIPPED

    # the old label is voided; each part gets its own label, and only the taken one ships
    assert void_labels(shop.transaction, order_id, lambda: carrier, shop.keys()) == Outcome(
        "voided 1"
    )
    labels_ship = _Ships()
    buy_label(shop.transaction, order_id, lambda: carrier, shop.keys("task-2"),
              ship_requested=labels_ship)  # fmt: skip
    assert [b["key"] for b in carrier.bought[2:]] == [f"label:{order_id}:s{taken_id}",
                                                      f"label:{order_id}:s{rest_id}"]  # fmt: skip
    assert [b["parcel"].weight_grams for b in carrier.bought[2:]] == [400, 1600]
    assert labels_ship.calls == [(order_id, [taken_id])]
    assert len(carrier.voided) == 1

    again = ship(shop.transaction, order_id, deliver_it=later("deliver"), shipment_ids=[taken_id])
    assert again == Outcome("partially shipped")
    messages = shop.rows(OutboxMessage, order_id=order_id)
    pushed = [m.payload or {} for m in messages]
    assert [(p["location"], p["lines"], p["last"]) for p in pushed] == [
        (LOC2, [["1", 1]], False), (LOC1, [["0", 1]], False)]  # fmt: skip
    assert shop.events(order_id, "transition")[-1].actor == "ann"  # who shipped, by name
    assert shop.rows(StockItem, sku="A")[0].on_hand == 5  # consumed with the last shipment

    # the rest leaves later: shipped, stock consumed
    done = ship(shop.transaction, order_id, deliver_it=later("deliver"))
    assert done == Outcome("shipped") and shop.get(order_id).state == S.SHIPPED
    last = shop.rows(OutboxMessage, order_id=order_id)[-1].payload or {}
    assert (last["lines"], last["last"]) == ([["0", 1], ["2", 3]], True)
    assert [shop.rows(StockItem, sku=s)[0].on_hand for s in "ABC"] == [3, 4, 2]
    # one label in use per shipment that left; the split one's is voided
    in_use = [lb for lb in shop.rows(Label) if lb.voided_at is None]
    assert sorted(lb.shipment_id for lb in in_use) == sorted([whole_id, taken_id, rest_id])


def test_the_same_request_again_is_the_same_request_and_a_new_key_ships_more(
    shop: Shop,
) -> None:
    carrier, later, ships = FakeCarrier(), FollowUps(), _Ships()
    order_id = _ready(shop, carrier, later)
    first = _ask(shop, order_id, {"2": 1}, later, ships)
    count = len(shop.rows(Shipment))

    repeat = _ask(shop, order_id, {"C": 1}, later, ships)  # the same line, by its SKU

    assert repeat == ShipRequest(first.shipment_ids, new=False)
    assert len(shop.rows(Shipment)) == count and len(ships.calls) == 1
    assert len(shop.events(order_id, "ship_lines_requested")) == 1

    more = _ask(shop, order_id, {"2": 1}, later, ships, key="second-box")
    assert more.new and more.shipment_ids != first.shipment_ids
    assert _ask(shop, order_id, {"2": 1}, later, ships, key="second-box").new is False


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ({"0": 3}, "more units than wait to ship (line 0: 1 too many)"),
        ({"nope": 1}, "the order has no line 'nope'"),
        ({"0": 0}, "units must be 1 to"),
        ({}, "choose at least one line"),
    ],
)
def test_more_units_than_wait_or_an_unknown_line_is_refused_and_nothing_changes(
    shop: Shop, lines: dict[str, int], error: str
) -> None:
    carrier, later, ships = FakeCarrier(), FollowUps(), _Ships()
    order_id = _ready(shop, carrier, later)
    before = [(s.id, s.status) for s in shop.rows(Shipment)]

    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        _ask(shop, order_id, lines, later, ships)

    assert [(s.id, s.status) for s in shop.rows(Shipment)] == before and ships.calls == []


def test_units_asked_for_already_are_not_taken_again(shop: Shop) -> None:
    carrier, later, ships = FakeCarrier(), FollowUps(), _Ships()
    order_id = _ready(shop, carrier, later)
    _ask(shop, order_id, {"2": 2}, later, ships)

    with pytest.raises(ValueError, match="line 2: 1 too many"):
        _ask(shop, order_id, {"2": 2}, later, ships, key="other")
    assert _ask(shop, order_id, {"2": 1}, later, ships, key="other").new


def test_a_held_order_or_one_not_ready_ships_no_lines(shop: Shop) -> None:
    carrier, later, ships = FakeCarrier(), FollowUps(), _Ships()
    order_id = _ready(shop, carrier, later)
    with shop.transaction() as session:
        hold(session, order_id, reason="address check", actor="ann")

    with pytest.raises(IllegalTransition, match="held"):
        _ask(shop, order_id, {"0": 1}, later, ships)

    paid = shop.order(S.PAID)
    with pytest.raises(IllegalTransition, match="nothing of ours to ship"):
        _ask(shop, paid, {"0": 1}, later, ships)
    assert ships.calls == []


def test_shipping_chosen_shipments_that_left_already_is_a_skip_not_a_failure(shop: Shop) -> None:
    carrier, later = FakeCarrier(), FollowUps()
    order_id = _ready(shop, carrier, later)
    _, second = shop.rows(Shipment, order_id=order_id)
    ship(shop.transaction, order_id, deliver_it=later("deliver"), shipment_ids=[second.id])

    again = ship(shop.transaction, order_id, deliver_it=later("deliver"), shipment_ids=[second.id])

    assert again == Outcome("skip: not open")
    assert len(shop.rows(OutboxMessage, order_id=order_id)) == 1


def test_replace_shipment_needs_parts_that_add_up_and_a_shipment_that_has_not_left(
    shop: Shop,
) -> None:
    carrier, later = FakeCarrier(), FollowUps()
    order_id = _ready(shop, carrier, later)
    first, _ = shop.rows(Shipment, order_id=order_id)
    with shop.transaction() as session:
        shipment = session.get_one(Shipment, first.id)
        with pytest.raises(ValueError, match="do not add up"):
            replace_shipment(session, shipment, [{"0": 1}, {"2": 3}])
        parts = replace_shipment(session, shipment, [{"0": 2}, {"2": 3}])
        assert [(p.status, p.location) for p in parts] == [("pending", LOC1)] * 2
        with pytest.raises(IllegalTransition, match="voided"):
            replace_shipment(session, shipment, [{"0": 2, "2": 3}])
