"""orders.staff.cancel and orders.fulfilment.void_labels: a cancel by staff releases the stock,
sets off the credit note and the refund, voids the unused label and pushes the cancellation."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from db.models import Label, OutboxMessage, Shipment, ShipmentLine, StockItem
from domain.states import OrderState
from orders import stock
from orders.cancellation import on_cancelled
from orders.fulfilment import buy_label, ship, void_labels
from orders.staff import CannotCancel, cancel, hold, mark_shipped, release, void_label
from orders.steps import FollowUp, Outcome
from orders.transitions import IllegalTransition
from tests.support.shop import FakeCarrier, FollowUps, Shop, never_built

S = OrderState


def _labelled_order(shop: Shop, state: OrderState = S.READY_TO_SHIP, **fields: Any) -> int:
    order_id = shop.order(S.RESERVED, lines={"A": 2}, **fields)
    with shop.transaction() as session:
        stock.set_on_hand(session, "A", 5)
        assert stock.reserve(session, order_id).ok
    shop.update(order_id, state=state)
    with shop.transaction() as session:
        shipment = Shipment(order_id=order_id, carrier="ups", status="labelled",
                            tracking_number="1ZCANCEL")  # fmt: skip
        session.add(shipment)
        session.flush()
        session.add(Label(shipment_id=shipment.id, carrier="ups", tracking_number="1ZCANCEL",
                          external_id="se-77", idempotency_key=f"label:{order_id}",
                          pdf=b"%PDF-"))  # fmt: skip
    return order_id


def _cancelled_by(later: FollowUps) -> FollowUp:
    def then(session: Session, order_id: int) -> None:
        on_cancelled(session, order_id, credit_note=later("credit_note"), refund=later("refund"))
        later("void_labels")(session, order_id)

    return then


def _cancel(shop: Shop, later: FollowUps, order_id: int, *, cancels: bool = True) -> None:
    with shop.transaction() as session:
        cancel(session, order_id, reason="buyer asked by phone", actor="staff:ann",
               marketplace_cancels=cancels, on_cancelled=_cancelled_by(later),
               deliver_it=later("deliver"))  # fmt: skip


def test_staff_cancel_releases_stock_sets_off_refund_credit_note_void_and_the_push(
    shop: Shop, later: FollowUps
) -> None:
    order_id = _labelled_order(shop)

    _cancel(shop, later, order_id)

    order = shop.get(order_id)
    assert order.state == S.CANCELLED and order.cancelled_at is not None
    assert shop.rows(StockItem, sku="A")[0].reserved == 0
    (message,) = shop.rows(OutboxMessage, order_id=order_id)
    assert (message.kind, message.idempotency_key, message.payload) == (
        "cancellation", f"cancel:{order_id}", {"reason": "buyer asked by phone"}
    )  # fmt: skip
    assert later.scheduled == {"credit_note": [order_id], "refund": [order_id],
                               "void_labels": [order_id], "deliver": [message.id]}  # fmt: skip
    (moved,) = [e for e in shop.events(order_id, "transition") if e.to_state == S.CANCELLED]
    assert (moved.actor, moved.detail) == ("staff:ann", {"reason": "buyer asked by phone"})


def test_a_second_cancel_is_refused_as_done_and_changes_nothing(
    shop: Shop, later: FollowUps
) -> None:
    order_id = _labelled_order(shop)
    _cancel(shop, later, order_id)

    with pytest.raises(IllegalTransition, match="cancelled already"):
        _cancel(shop, later, order_id)
    assert len(shop.rows(OutboxMessage, order_id=order_id)) == 1
    assert later.scheduled["refund"] == [order_id]


def test_a_shipped_order_is_not_cancelled_but_returned(shop: Shop, later: FollowUps) -> None:
    order_id = _labelled_order(shop, S.SHIPPED)

    with pytest.raises(IllegalTransition, match="return, not a cancellation"):
        _cancel(shop, later, order_id)
    assert shop.get(order_id).state == S.SHIPPED and shop.rows(OutboxMessage) == []


def test_a_marketplace_where_the_seller_cannot_cancel_says_so_and_nothing_changes(
    shop: Shop, later: FollowUps
) -> None:
    order_id = _labelled_order(shop, channel="amazon")

    with pytest.raises(CannotCancel, match="amazon does not let the seller cancel"):
        _cancel(shop, later, order_id, cancels=False)
    assert shop.get(order_id).state == S.READY_TO_SHIP and later.scheduled == {}


def test_a_cancel_without_a_reason_is_refused(shop: Shop, later: FollowUps) -> None:
    order_id = _labelled_order(shop)

    with pytest.raises(ValueError, match="needs a reason"), shop.transaction() as session:
        cancel(session, order_id, reason="  ", actor="staff:ann", marketplace_cancels=True,
               on_cancelled=_cancelled_by(later), deliver_it=later("deliver"))  # fmt: skip
    assert shop.get(order_id).state == S.READY_TO_SHIP


def test_void_labels_voids_the_unused_label_once_and_records_it(
    shop: Shop, later: FollowUps
) -> None:
    carrier = FakeCarrier()
    order_id = _labelled_order(shop)
    _cancel(shop, later, order_id)

    first = void_labels(shop.transaction, order_id, lambda: carrier, shop.keys())
    second = void_labels(shop.transaction, order_id, never_built, shop.keys())

    assert (first, second) == (Outcome("voided 1"), Outcome("voided 0"))
    assert carrier.voided == ["se-77"]
    (label,) = shop.rows(Label)
    assert label.voided_at is not None
    assert shop.rows(Shipment, order_id=order_id)[0].status == "voided"
    (event,) = shop.events(order_id, "label_voided")
    assert event.detail == {"tracking_number": "1ZCANCEL"}


# --- void and re-buy a label, mark shipped by hand ---------------------------------------------


def test_void_and_rebuy_puts_a_new_shipment_of_the_same_lines_in_place_once(
    shop: Shop, later: FollowUps
) -> None:
    order_id = _labelled_order(shop)
    (old,) = shop.rows(Shipment, order_id=order_id)
    with shop.transaction() as session:
        session.add(ShipmentLine(shipment_id=old.id, line_external_id="0", quantity=2))

    with shop.transaction() as session:
        new_id = void_label(session, old.id, actor="staff:ann", rebuy=True,
                            void_it=later("void"), label_it=later("label"))  # fmt: skip
    with pytest.raises(IllegalTransition, match="only a label that has not left"):
        with shop.transaction() as session:
            void_label(session, old.id, actor="staff:ann", rebuy=True,
                       void_it=later("void"), label_it=later("label"))  # fmt: skip

    voided, fresh = shop.rows(Shipment, order_id=order_id)
    assert (voided.id, voided.status, fresh.id, fresh.status) == (old.id, "voided", new_id,
                                                                  "pending")  # fmt: skip
    assert [(sl.line_external_id, sl.quantity)
            for sl in shop.rows(ShipmentLine, shipment_id=fresh.id)] == [("0", 2)]  # fmt: skip
    assert later.scheduled == {"void": [order_id], "label": [order_id]}
    (event,) = shop.events(order_id, "label_voided_by_staff")
    assert (event.actor, event.detail["rebuy"]) == ("staff:ann", True)


def test_the_rebought_shipment_gets_its_own_label_and_key_and_the_old_one_is_voided(
    shop: Shop, later: FollowUps
) -> None:
    carrier = FakeCarrier()
    order_id = _labelled_order(shop)
    (old,) = shop.rows(Shipment, order_id=order_id)
    with shop.transaction() as session:
        new_id = void_label(session, old.id, actor="staff:ann", rebuy=True,
                            void_it=later("void"), label_it=later("label"))  # fmt: skip

    bought = buy_label(shop.transaction, order_id, lambda: carrier, shop.keys())
    voided = void_labels(shop.transaction, order_id, lambda: carrier, shop.keys())

    assert bought == Outcome("1Z00000001") and voided == Outcome("voided 1")
    assert [b["key"] for b in carrier.bought] == [f"label:{order_id}:s{new_id}"]
    assert carrier.voided == ["se-77"]
    assert shop.rows(Shipment, id=new_id)[0].status == "labelled"


def test_mark_shipped_by_hand_replaces_unsent_shipments_and_pushes_the_tracking(
    shop: Shop, later: FollowUps
) -> None:
    order_id = _labelled_order(shop)

    with shop.transaction() as session:
        shipment_id = mark_shipped(session, order_id, tracking_number=" JD0002 ", carrier="dhl",
                                   actor="staff:ann", void_it=later("void"),
                                   deliver_it=later("deliver"))  # fmt: skip
    with pytest.raises(IllegalTransition, match="nothing of ours to ship"):
        with shop.transaction() as session:
            mark_shipped(session, order_id, tracking_number="JD0002", carrier="dhl",
                         actor="staff:ann", void_it=later("void"),
                         deliver_it=later("deliver"))  # fmt: skip

    assert shop.get(order_id).state == S.SHIPPED
    old, by_hand = shop.rows(Shipment, order_id=order_id)
    assert (old.status, by_hand.id, by_hand.status, by_hand.tracking_number) == (
        "voided", shipment_id, "shipped", "JD0002"
    )  # fmt: skip
    (message,) = shop.rows(OutboxMessage, order_id=order_id)
    assert message.payload == {"tracking_number": "JD0002", "carrier": "dhl", "location": "main",
                               "lines": [["0", 2]], "last": True}  # fmt: skip
    assert later.scheduled == {"void": [order_id], "deliver": [message.id]}
    assert shop.rows(StockItem, sku="A")[0].on_hand == 3


# --- hold and release ---------------------------------------------------------------------------


def test_a_held_order_does_not_ship_until_released(shop: Shop, later: FollowUps) -> None:
    order_id = _labelled_order(shop)

    with shop.transaction() as session:
        hold(session, order_id, reason="address to check with the buyer", actor="staff:ann")
    with pytest.raises(IllegalTransition, match="held already"), shop.transaction() as session:
        hold(session, order_id, reason="again", actor="staff:ann")
    held = ship(shop.transaction, order_id, deliver_it=later("deliver"))
    with pytest.raises(IllegalTransition, match="release it first"):
        with shop.transaction() as session:
            mark_shipped(session, order_id, tracking_number="T1", carrier="dhl",
                         actor="staff:ann", void_it=later("void"),
                         deliver_it=later("deliver"))  # fmt: skip

    assert held == Outcome("skip: held") and shop.get(order_id).state == S.READY_TO_SHIP
    assert shop.rows(OutboxMessage) == []

    with shop.transaction() as session:
        release(session, order_id, actor="staff:bob")
    with pytest.raises(IllegalTransition, match="not held"), shop.transaction() as session:
        release(session, order_id, actor="staff:bob")
    assert ship(shop.transaction, order_id, deliver_it=later("deliver")) == Outcome("shipped")
    assert [(e.kind, e.actor) for e in shop.events(order_id) if e.kind in ("held", "released")] == [
        ("held", "staff:ann"), ("released", "staff:bob")
    ]  # fmt: skip


def _collected(shop: Shop, order_id: int) -> Any:
    """The marketplace collected the order's money (Shopify, eBay)."""
    from db.models import Payment

    row = shop.get(order_id)
    with shop.transaction() as session:
        session.add(Payment(order_id=order_id, provider=row.channel, amount=row.total,
                            currency=row.currency, status="collected",
                            collected_by_marketplace=True,
                            idempotency_key=f"capture:{order_id}"))  # fmt: skip
    return row.total


@pytest.mark.parametrize("refunds_on_cancel", [True, False])
def test_a_cancellation_delivered_where_the_marketplace_refunds_records_that_refund_once(
    shop: Shop, later: FollowUps, refunds_on_cancel: bool
) -> None:
    from db.models import Refund
    from domain.canonical import CanonicalRefund
    from orders.outbox import deliver
    from orders.returns import record_marketplace_refunds
    from tests.support.shop import FakeMarketplace

    order_id = _labelled_order(shop)
    paid = _collected(shop, order_id)
    _cancel(shop, later, order_id)
    (message,) = shop.rows(OutboxMessage, order_id=order_id)
    marketplace = FakeMarketplace(refunds_on_cancel=refunds_on_cancel)

    assert deliver(shop.transaction, message.id, marketplace, shop.keys()) == Outcome("delivered")
    deliver(shop.transaction, message.id, marketplace, shop.keys("task-2"))  # a redelivery

    refunds = shop.rows(Refund, order_id=order_id)
    if not refunds_on_cancel:  # (WooCommerce: a cancelled status gives nothing back)
        assert refunds == []
        return
    assert [(r.source, r.amount, r.provider) for r in refunds] == [
        ("cancellation", paid, "shopify")
    ]
    # the marketplace then reports the refund its cancellation made: the same money, once
    with shop.transaction() as session:
        order = session.get_one(type(shop.get(order_id)), order_id)
        report = CanonicalRefund(external_id="r-1", order_external_id=order.external_id,
                                 amount=paid, currency=order.currency)  # fmt: skip
        assert record_marketplace_refunds(session, order, [report], actor="webhook") == []
    assert len(shop.rows(Refund, order_id=order_id)) == 1
    assert [e.detail["refund"] for e in shop.events(order_id, "refund_already_counted")] == ["r-1"]
