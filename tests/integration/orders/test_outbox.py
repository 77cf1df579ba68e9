"""orders.outbox: every effect on a marketplace is a row written with the state change, delivered
once under its idempotency key, each try an attempt row; a webhook-only account needs attention."""

from __future__ import annotations

from typing import Any

import pytest

from db.models import ChannelAccount, OutboxAttempt, OutboxMessage, Shipment, StockItem
from domain.errors import ServerError, TransportError, ValidationError
from domain.states import OrderState
from orders import outbox, stock
from orders.fulfilment import ship
from orders.outbox import deliver, record_failure, retry
from orders.steps import Outcome
from tests.support.shop import FakeMarketplace, FollowUps, Shop

S = OrderState


def _never_called(account: ChannelAccount, effect: outbox.Effect) -> None:
    raise AssertionError("an account that cannot take pushes is never called")


def _shipped(shop: Shop, later: FollowUps, **fields: Any) -> tuple[int, int]:
    """An order shipped by us: (order id, the id of its fulfilment message)."""
    order_id = shop.order(S.RESERVED, lines={"A": 2}, **fields)
    with shop.transaction() as session:
        stock.set_on_hand(session, "A", 5)
        assert stock.reserve(session, order_id).ok
    shop.update(order_id, state=S.READY_TO_SHIP)
    with shop.transaction() as session:
        session.add(Shipment(order_id=order_id, carrier="ups", status="labelled",
                             tracking_number="1ZOUT"))  # fmt: skip
    assert ship(shop.transaction, order_id, deliver_it=later("deliver")) == Outcome("shipped")
    (message,) = shop.rows(OutboxMessage, order_id=order_id)
    return order_id, message.id


def test_a_fulfilment_is_delivered_once_and_each_try_is_an_attempt_row(
    shop: Shop, later: FollowUps
) -> None:
    marketplace = FakeMarketplace(fail=ServerError("fulfillmentCreate: 503", status=503))
    order_id, message_id = _shipped(shop, later)

    # the first try fails (the task retries it), the second delivers, a third does nothing
    with pytest.raises(ServerError):
        deliver(shop.transaction, message_id, marketplace, shop.keys())
    assert deliver(shop.transaction, message_id, marketplace, shop.keys()) == Outcome("delivered")
    again = deliver(shop.transaction, message_id, marketplace, shop.keys("task-2"))

    assert again == Outcome("skip: delivered")
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    key = f"fulfill:{order_id}:s{shipment.id}"
    assert marketplace.pushed == [{"account": "shop", "order": shop.get(order_id).external_id,
                                   "kind": "fulfilment", "key": key, "tracking_number": "1ZOUT",
                                   "carrier": "ups", "location": "main", "lines": [],
                                   "last": True}]  # fmt: skip
    attempts = shop.rows(OutboxAttempt, message_id=message_id)
    assert [(a.status, a.response_code) for a in attempts] == [("error", 503), ("delivered", 200)]
    assert "503" in (attempts[0].error or "") and all(a.duration_ms >= 0 for a in attempts)
    (message,) = shop.rows(OutboxMessage, id=message_id)
    assert message.status == "delivered" and message.delivered_at is not None
    stored = shop.key(key)
    assert stored is not None and stored.recovery_point == "finished"
    assert shop.get(order_id).state == S.SHIPPED
    (pushed,) = shop.events(order_id, "pushed")
    assert pushed.detail == {"effect": "fulfilment", "key": key}


def test_a_push_applied_but_whose_answer_was_lost_is_delivered_once(
    shop: Shop, later: FollowUps
) -> None:
    marketplace = FakeMarketplace(apply_then_fail=TransportError("read timeout"))
    _, message_id = _shipped(shop, later)

    with pytest.raises(TransportError):
        deliver(shop.transaction, message_id, marketplace, shop.keys())
    # the retry goes out under the same key; the marketplace side finds it applied
    assert deliver(shop.transaction, message_id, marketplace, shop.keys()) == Outcome("delivered")

    assert len(marketplace.pushed) == 1
    keys = {a.message_id for a in shop.rows(OutboxAttempt)}
    assert keys == {message_id} and len(shop.rows(OutboxAttempt)) == 2


def test_a_webhook_only_account_makes_the_order_need_attention_and_keeps_the_message(
    shop: Shop, later: FollowUps
) -> None:
    with shop.transaction() as session:
        webhook_only = ChannelAccount(name="webhook-only", channel="shopify")
        session.add(webhook_only)
    order_id, message_id = _shipped(shop, later, account=webhook_only)

    outcome = deliver(shop.transaction, message_id, _never_called, shop.keys())

    assert outcome == Outcome("failed: no credentials")
    order = shop.get(order_id)
    assert (order.state, order.failed_step) == (S.NEEDS_ATTENTION, "push_fulfilment")
    assert order.last_error == "tracking not sent: no credentials"
    (message,) = shop.rows(OutboxMessage, id=message_id)
    assert (message.status, message.last_error) == ("failed", "no credentials")
    (attempt,) = shop.rows(OutboxAttempt, message_id=message_id)
    assert (attempt.status, attempt.error) == ("failed", "no credentials")
    # the parcel did leave: the stock is gone, the shipment shipped
    assert shop.rows(StockItem, sku="A")[0].on_hand == 3
    assert shop.rows(Shipment, order_id=order_id)[0].status == "shipped"


def test_staff_retry_after_credentials_were_added_delivers_and_the_order_is_shipped_again(
    shop: Shop, later: FollowUps
) -> None:
    with shop.transaction() as session:
        webhook_only = ChannelAccount(name="webhook-only", channel="shopify")
        session.add(webhook_only)
    order_id, message_id = _shipped(shop, later, account=webhook_only)
    deliver(shop.transaction, message_id, _never_called, shop.keys())
    with shop.transaction() as session:
        account = session.get(ChannelAccount, webhook_only.id)
        assert account is not None
        account.credentials = {"access_token": "shpat_x"}

    with shop.transaction() as session:
        was = retry(session, message_id, actor="staff:ann", deliver_it=later("deliver"))
    marketplace = FakeMarketplace()
    outcome = deliver(shop.transaction, message_id, marketplace, shop.keys())

    assert was == "failed" and outcome == Outcome("delivered")
    assert later.scheduled["deliver"] == [message_id, message_id]
    assert shop.get(order_id).state == S.SHIPPED and shop.get(order_id).failed_step is None
    assert len(marketplace.pushed) == 1
    (event,) = shop.events(order_id, "retry")
    assert event.actor == "staff:ann" and event.detail["effect"] == "fulfilment"


def test_a_refused_push_fails_for_good_and_the_order_needs_attention(
    shop: Shop, later: FollowUps
) -> None:
    refused = ValidationError("fulfillmentCreate: NOTHING_TO_FULFILL", status=422)
    order_id, message_id = _shipped(shop, later)

    with pytest.raises(ValidationError):
        deliver(shop.transaction, message_id, FakeMarketplace(fail=refused), shop.keys())
    with shop.transaction() as session:  # what the task does when it gives up
        record_failure(session, message_id, error="ValidationError: NOTHING_TO_FULFILL")

    (message,) = shop.rows(OutboxMessage, id=message_id)
    assert message.status == "failed" and "NOTHING_TO_FULFILL" in (message.last_error or "")
    order = shop.get(order_id)
    assert order.state == S.NEEDS_ATTENTION and order.failed_step == outbox.PUSH_STEP
    assert (order.last_error or "").startswith("tracking not sent: ValidationError")


def test_a_delivered_message_cannot_be_retried(shop: Shop, later: FollowUps) -> None:
    _, message_id = _shipped(shop, later)
    deliver(shop.transaction, message_id, FakeMarketplace(), shop.keys())

    with pytest.raises(ValueError, match="delivered already"), shop.transaction() as session:
        retry(session, message_id, actor="staff:ann", deliver_it=later("deliver"))


def test_a_delivery_event_waits_for_its_shipments_fulfilment_then_goes_out_after_it(
    shop: Shop, later: FollowUps
) -> None:
    """Found by the chaos suite (marketplace_faults, long): the fulfilment held back by 429s,
    the carrier's delivery was pushed first, Shopify found no fulfilment with the tracking
    number ("NOT_FOUND") and the delivery failed for good."""
    marketplace = FakeMarketplace()
    order_id, fulfilment_id = _shipped(shop, later)
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    key = f"delivered:{order_id}:s{shipment.id}"
    with shop.transaction() as session:
        delivery_id = outbox.enqueue(
            session, order_id, kind=outbox.DELIVERY, key=key, shipment_id=shipment.id,
            payload={"tracking_number": "1ZOUT", "delivered_at": "2026-12-04T18:52:52Z"},
            deliver_it=later("deliver"),
        )  # fmt: skip

    # when: the delivery comes first
    first = deliver(shop.transaction, delivery_id, marketplace, shop.keys())
    # then: it waits, untried: no push, no attempt, no key, still pending
    assert first == Outcome("waits: the shipment's fulfilment is not delivered yet")
    assert marketplace.pushed == []
    assert shop.rows(OutboxAttempt, message_id=delivery_id) == []
    assert shop.key(key) is None
    assert shop.rows(OutboxMessage, id=delivery_id)[0].status == "pending"

    # when: the fulfilment goes out
    before = len(later.scheduled["deliver"])
    assert deliver(shop.transaction, fulfilment_id, marketplace, shop.keys(),
                   deliver_it=later("deliver")) == Outcome("delivered")  # fmt: skip
    # then: it publishes the waiting delivery, which now goes out after it
    assert later.scheduled["deliver"][before:] == [delivery_id]
    assert deliver(shop.transaction, delivery_id, marketplace, shop.keys()) == Outcome("delivered")
    assert [p["kind"] for p in marketplace.pushed] == ["fulfilment", "delivery"]


def test_a_delivery_without_a_fulfilment_message_is_not_held(shop: Shop, later: FollowUps) -> None:
    marketplace = FakeMarketplace()
    order_id = shop.order(S.SHIPPED, lines={"A": 1})
    with shop.transaction() as session:
        shipment = Shipment(order_id=order_id, carrier="ups", status="delivered",
                            tracking_number="1ZMP")  # fmt: skip
        session.add(shipment)
        session.flush()
        delivery_id = outbox.enqueue(
            session, order_id, kind=outbox.DELIVERY, key=f"delivered:{order_id}:s{shipment.id}",
            payload={"tracking_number": "1ZMP"}, deliver_it=later("deliver"),
            shipment_id=shipment.id,
        )  # fmt: skip
    assert deliver(shop.transaction, delivery_id, marketplace, shop.keys()) == Outcome("delivered")
    assert [p["kind"] for p in marketplace.pushed] == ["delivery"]


def test_a_delivery_is_not_held_for_ever_by_a_fulfilment_that_failed_for_good(
    shop: Shop, later: FollowUps
) -> None:
    marketplace = FakeMarketplace(fail=ValidationError("push_delivery: not found"))
    order_id, fulfilment_id = _shipped(shop, later)
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    with shop.transaction() as session:
        record_failure(session, fulfilment_id, error="refused")
        delivery_id = outbox.enqueue(
            session, order_id, kind=outbox.DELIVERY, key=f"delivered:{order_id}:s{shipment.id}",
            payload={"tracking_number": "1ZOUT"}, deliver_it=later("deliver"),
            shipment_id=shipment.id,
        )  # fmt: skip
    # the delivery is tried (not left pending for the sweeper to republish for ever)
    with pytest.raises(ValidationError):
        deliver(shop.transaction, delivery_id, marketplace, shop.keys())
    assert len(shop.rows(OutboxAttempt, message_id=delivery_id)) == 1
