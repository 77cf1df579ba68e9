"""orders.refunds and orders.cancellation: a cancelled order's captured money goes back once."""

from __future__ import annotations

from decimal import Decimal

import pytest

from db.models import Refund, StockItem, StockReservation
from domain.errors import TransportError
from domain.states import OrderState
from orders import stock
from orders.cancellation import on_cancelled
from orders.refunds import record_failure, refund, refundable
from orders.steps import Outcome
from tests.support.shop import FakePayments, FollowUps, Shop, never_built

S = OrderState


def test_a_cancelled_orders_captured_payment_is_refunded_once(
    shop: Shop, provider: FakePayments
) -> None:
    order_id = shop.order(S.CANCELLED, lines={"A": 3})
    payment = shop.captured(order_id, "pi_9")

    assert refund(shop.transaction, order_id, lambda: provider, shop.keys()) == Outcome("refunded")
    again = refund(shop.transaction, order_id, never_built, shop.keys("task-2"))

    assert again == Outcome("nothing to refund")
    assert provider.calls == [f"refund:{order_id}"]
    (made,) = provider.refunds.values()
    assert (made.payment_intent, made.amount, made.currency) == ("pi_9", Decimal(30), "EUR")
    (row,) = shop.rows(Refund, order_id=order_id)
    assert (row.payment_id, row.external_id, row.amount) == (payment.id, "re_1", Decimal(30))
    assert row.idempotency_key == f"refund:{order_id}" and row.reason == "requested_by_customer"
    (event,) = shop.events(order_id, "refunded")
    assert Decimal(event.detail.pop("amount")) == Decimal(30)
    assert event.detail == {"refund": "re_1", "currency": "EUR", "replayed": False}
    with shop.maker() as session:
        assert refundable(session, order_id) is None


def test_our_capture_of_an_order_the_marketplace_collected_is_refunded_but_not_its_money(
    shop: Shop, provider: FakePayments
) -> None:
    # given a paid order the buyer paid twice: to the marketplace and to us
    twice = shop.order(S.PAID, payment_collected_by_marketplace=True, financial_status="paid")
    shop.captured(twice, "pi_7")
    # and an open order we alone charged
    ours = shop.order(S.PAID)
    shop.captured(ours, "pi_8")

    assert refund(shop.transaction, twice, lambda: provider, shop.keys()) == Outcome("refunded")
    assert refund(shop.transaction, ours, never_built, shop.keys()) == Outcome("skip: paid")

    (made,) = provider.refunds.values()
    assert made.payment_intent == "pi_7"
    assert [r.order_id for r in shop.rows(Refund)] == [twice]


def test_a_refund_whose_answer_was_lost_is_asked_again_under_the_same_key(
    shop: Shop, provider: FakePayments
) -> None:
    order_id = shop.order(S.CANCELLED)
    shop.captured(order_id)
    provider.lose_answer = TransportError("refund: connection reset")

    with pytest.raises(TransportError):
        refund(shop.transaction, order_id, lambda: provider, shop.keys())
    assert shop.rows(Refund, order_id=order_id) == []
    assert refund(shop.transaction, order_id, lambda: provider, shop.keys()) == Outcome("refunded")

    assert provider.calls == [f"refund:{order_id}"] * 2 and len(provider.refunds) == 1
    (event,) = shop.events(order_id, "refunded")
    assert event.detail["replayed"] is True


def test_money_the_marketplace_collected_is_not_refunded_by_us(shop: Shop) -> None:
    order_id = shop.order(S.CANCELLED, channel="amazon", payment_collected_by_marketplace=True)
    payment = shop.captured(order_id)
    with shop.transaction() as session:
        loaded = session.get(type(payment), payment.id)
        assert loaded is not None
        loaded.collected_by_marketplace, loaded.external_id = True, None

    assert refund(shop.transaction, order_id, never_built, shop.keys()) == Outcome(
        "nothing to refund"
    )
    assert shop.rows(Refund) == []


def test_an_order_that_is_not_cancelled_is_not_refunded(shop: Shop) -> None:
    order_id = shop.order(S.PAID)
    shop.captured(order_id)

    assert refund(shop.transaction, order_id, never_built, shop.keys()) == Outcome("skip: paid")


def test_a_refund_that_failed_for_good_goes_on_the_timeline(shop: Shop) -> None:
    order_id = shop.order(S.CANCELLED)

    with shop.transaction() as session:
        record_failure(session, order_id, error="PaymentDeclined: no", attempts=3)

    assert shop.get(order_id).state == S.CANCELLED
    (event,) = shop.events(order_id, "refund_failed")
    assert event.detail == {"error": "PaymentDeclined: no", "attempts": 3}


def test_cancelling_gives_the_stock_back_and_schedules_the_credit_note_and_the_refund(
    shop: Shop, later: FollowUps
) -> None:
    order_id = shop.order(S.RESERVED, lines={"A": 2})
    with shop.transaction() as session:
        stock.set_on_hand(session, "A", 2)
        assert stock.reserve(session, order_id).ok

    with shop.transaction() as session:
        on_cancelled(session, order_id, credit_note=later("credit_note"), refund=later("refund"))

    assert shop.rows(StockItem, sku="A")[0].reserved == 0
    assert [r.status for r in shop.rows(StockReservation, order_id=order_id)] == ["released"]
    (released,) = shop.events(order_id, "stock_released")
    assert released.detail == {"lines": 1}
    assert later.scheduled == {"credit_note": [order_id], "refund": [order_id]}


def test_cancelling_an_order_that_holds_no_stock_records_no_release(
    shop: Shop, later: FollowUps
) -> None:
    order_id = shop.order(S.NEW)

    with shop.transaction() as session:
        on_cancelled(session, order_id, credit_note=later("credit_note"), refund=later("refund"))

    assert shop.events(order_id, "stock_released") == []
    assert later.scheduled == {"credit_note": [order_id], "refund": [order_id]}


def test_a_refund_of_an_order_whose_id_begins_alike_does_not_stand_for_this_ones(
    shop: Shop, provider: FakePayments
) -> None:
    # given two cancelled, captured orders whose ids begin alike (n and n0): the refund key of
    # the second, refund:n0, begins with the first's, refund:n
    first = shop.order(S.CANCELLED)
    shop.captured(first, "pi_1")
    longer = shop.order(S.CANCELLED, id=int(f"{first}0"))
    shop.captured(longer, "pi_2")

    # when the second is refunded first
    assert refund(shop.transaction, longer, lambda: provider, shop.keys()) == Outcome("refunded")

    # then the first is still refunded: its own money, not "nothing to refund"
    assert refund(shop.transaction, first, lambda: provider, shop.keys("t2")) == Outcome("refunded")
    assert sorted(r.payment_intent for r in provider.refunds.values()) == ["pi_1", "pi_2"]
    assert {r.order_id for r in shop.rows(Refund)} == {first, longer}
