"""Fulfilment both ways, end to end: real web server, real Celery workers, real Redis, the
sandbox Shopify, payment provider and carrier over real HTTP, on SQLite and on PostgreSQL.

Effects are counted from the outside world's side: the Shopify simulator's fulfillments and
cancels, the carrier's labels and voids, the payment provider's refunds.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import (
    ChannelAccount,
    Invoice,
    Label,
    Order,
    OutboxAttempt,
    OutboxMessage,
    Refund,
    Shipment,
    StockReservation,
)
from domain.errors import ValidationError
from integrations.base import AccountConfig
from integrations.shopify.connector import ShopifyConnector
from orders.fulfilment import ship
from orders.steps import Outcome
from orders.stock import set_on_hand
from sandbox.shopify import DEFAULT_SKUS, LOCATION_2_GID, LOCATION_GID
from tests.support.stack import wait_until
from tests.support.world import (
    SECRET,
    World,
    fixture_order,
    module_database_url,
    running_world,
    stock_for,
)

pytestmark = pytest.mark.slow

#: the simulator keeps these two SKUs at its second location
SECOND_LOCATION = frozenset({"SKU-BLUE-S", "SKU-BLUE-M"})


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[World]:
    var_dir = tmp_path_factory.mktemp("fulfilment")
    url = module_database_url(request, var_dir, request.param)
    with running_world(url, redis_url, var_dir) as world:
        world.sandbox.shopify.second_location_skus = SECOND_LOCATION
        with world.maker() as session, session.begin():
            for sku in DEFAULT_SKUS:
                set_on_hand(session, sku, 100_000)
        yield world


def _connected_account(world: World) -> str:
    """A Shopify account connected to the sandbox shop (credentials, API URL, webhooks)."""
    spec = world.sandbox.accounts(SECRET)["shopify"]
    name = f"shopify-{uuid.uuid4().hex[:8]}"
    with world.maker() as session, session.begin():
        session.add(ChannelAccount(name=name, channel="shopify", shop=spec.shop,
                                   api_base_url=spec.api_base_url, credentials=spec.credentials,
                                   webhook_secret=SECRET))  # fmt: skip
    return name


def _sandbox_order(world: World, *, split: bool) -> str:
    """A new order in the sandbox shop that we must charge (authorised only): with ``split``,
    of three lines from both of the shop's locations, else of lines from one location."""
    shopify = world.sandbox.shopify
    for _ in range(2000):
        (external_id,) = shopify.add_orders(1)
        skus = {item["sku"] for item in shopify.orders[external_id]["line_items"]}
        two = bool(skus & SECOND_LOCATION) and bool(skus - SECOND_LOCATION)
        # authorised at checkout (its AUTHORIZATION transaction is made with the order: a
        # status changed afterwards would have none to capture)
        authorised = shopify.orders[external_id]["financial_status"] == "authorized"
        if authorised and ((split and len(skus) == 3 and two) or (not split and not two)):
            return external_id
    raise AssertionError("the simulator made no order of the wanted shape")


def _deliver_webhook(world: World, account: str, external_id: str) -> None:
    headers, body = world.sandbox.shopify.webhook_delivery(external_id, "orders/create", SECRET)
    response = httpx.post(f"{world.stack.base_url}/webhooks/shopify/{account}", content=body,
                          headers=headers)  # fmt: skip
    assert response.status_code == 200, response.text


def _ready(world: World, *, split: bool) -> tuple[str, str, Order]:
    account = _connected_account(world)
    external_id = _sandbox_order(world, split=split)
    _deliver_webhook(world, account, external_id)
    order = world.wait_state(account, external_id, "ready_to_ship", timeout=90)
    return account, external_id, order


def _rows(world: World, model: Any, *where: Any) -> list[Any]:
    with world.maker() as session:
        return list(session.scalars(select(model).where(*where).order_by(model.id)))


def _messages(world: World, order_id: int) -> list[OutboxMessage]:
    return _rows(world, OutboxMessage, OutboxMessage.order_id == order_id,
                 OutboxMessage.kind.is_not(None))  # fmt: skip


def _all_delivered(world: World, order_id: int, count: int) -> list[OutboxMessage] | None:
    messages = _messages(world, order_id)
    done = len(messages) == count and all(m.status == "delivered" for m in messages)
    return messages if done else None


def _fulfillment_requests(world: World) -> int:
    return sum(1 for op, _ in world.sandbox.shopify.request_log if op == "FulfillmentCreate")


def _ledger_fulfilments(world: World, external_id: str) -> list[dict[str, Any]]:
    return [f for f in world.sandbox.shopify.fulfillments if f["order_id"] == external_id]


def test_twenty_concurrent_ship_clicks_on_a_two_location_order_make_one_fulfilment_per_shipment(
    world: World,
) -> None:
    # given an order of three lines, two at one location and one at the other
    _, external_id, order = _ready(world, split=True)
    shipments = _rows(world, Shipment, Shipment.order_id == order.id)
    assert sorted(s.location for s in shipments) == [LOCATION_GID, LOCATION_2_GID]
    labels = _rows(world, Label, Label.shipment_id.in_([s.id for s in shipments]))
    assert len(labels) == 2 and len({label.tracking_number for label in labels}) == 2
    assert {label.idempotency_key for label in labels} <= set(world.sandbox.carrier.labels)

    # when staff click Ship twenty times at once
    def click(_: int) -> int:
        return world.api("POST", f"/orders/{order.id}/ship").status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(click, range(20)))

    # then each shipment became one fulfilment at Shopify, from its own location
    assert set(codes) <= {200, 409} and 200 in codes
    wait_until(lambda: _all_delivered(world, order.id, 2), timeout=90, what="two deliveries")
    pushed = _ledger_fulfilments(world, external_id)
    assert sorted(f["location_id"] for f in pushed) == [LOCATION_GID, LOCATION_2_GID]
    assert sorted(f["tracking_number"] for f in pushed) == sorted(
        label.tracking_number for label in labels
    )
    assert world.sandbox.shopify.orders[external_id]["fulfillment_status"] == "fulfilled"
    assert world.order_state(order.id) == "shipped"
    # and the API shows both parcels with their lines (two at one location, one at the other)
    shown = world.api("GET", f"/orders/{order.id}").json()["shipments"]
    assert sorted(len(s["lines"]) for s in shown) == [1, 2]
    assert {s["status"] for s in shown} == {"shipped"}


def test_shopify_refuses_a_fulfilment_that_mixes_locations(world: World) -> None:
    external_id = _sandbox_order(world, split=True)
    spec = world.sandbox.accounts(SECRET)["shopify"]
    connector = ShopifyConnector(
        AccountConfig(name="probe", channel="shopify", shop=spec.shop,
                      api_base_url=spec.api_base_url, credentials=spec.credentials)
    )  # fmt: skip
    try:
        state = connector.client.fulfillment_state(f"gid://shopify/Order/{external_id}")
        both = [{"fulfillmentOrderId": fo["id"]} for fo in state["fulfillmentOrders"]["nodes"]]
        assert len(both) == 2
        mixed = {"lineItemsByFulfillmentOrder": both, "trackingInfo": {"number": "1ZMIXED"}}
        with pytest.raises(ValidationError, match="userErrors"):
            connector.client.fulfillment_create(mixed)
    finally:
        connector.close()
    # the reason, as Shopify words it (our client keeps user error messages out of its own)
    _, answer = world.sandbox.shopify.execute("FulfillmentCreate", "", {"fulfillment": mixed})
    (error,) = answer["data"]["fulfillmentCreate"]["userErrors"]
    assert error["message"] == "All fulfillment orders must be assigned to a single location."
    assert _ledger_fulfilments(world, external_id) == []


def test_a_fulfilment_applied_whose_answer_was_dropped_is_made_once(world: World) -> None:
    _, external_id, order = _ready(world, split=False)
    world.sandbox.shopify.drop_fulfillment_answers = 1  # the next answer never arrives
    sent_before = _fulfillment_requests(world)

    response = world.api("POST", f"/orders/{order.id}/ship")

    assert response.status_code == 200
    (message,) = wait_until(lambda: _all_delivered(world, order.id, 1), timeout=90,
                            what="the fulfilment delivered")  # fmt: skip
    # the dropped request was sent again (the client retries a broken connection), Shopify
    # refused it (the fulfillment order was closed by the first), and the connector found the
    # first one's fulfillment by its tracking number: one fulfillment
    assert _fulfillment_requests(world) - sent_before == 2
    assert len(_ledger_fulfilments(world, external_id)) == 1
    attempts = _rows(world, OutboxAttempt, OutboxAttempt.message_id == message.id)
    assert [a.status for a in attempts] == ["delivered"]
    assert world.order_state(order.id) == "shipped"


def test_cancel_after_the_label_voids_it_returns_stock_refunds_once_credits_and_tells_shopify(
    world: World,
) -> None:
    _, external_id, order = _ready(world, split=False)
    (label,) = _rows(world, Label, Label.shipment_id.in_(
        select(Shipment.id).where(Shipment.order_id == order.id)))  # fmt: skip

    url = f"/orders/{order.id}/cancel"
    first = world.api("POST", url, json={"reason": "buyer called: wrong size"})
    second = world.api("POST", url, json={"reason": "buyer called: wrong size"})

    assert (first.status_code, second.status_code) == (200, 409)
    assert world.order_state(order.id) == "cancelled"
    wait_until(lambda: world.sandbox.carrier.labels[label.idempotency_key].voided or None,
               timeout=60, what="the label voided at the carrier")  # fmt: skip
    wait_until(lambda: _all_delivered(world, order.id, 1), timeout=60, what="cancel delivered")
    wait_until(lambda: _rows(world, Refund, Refund.order_id == order.id) or None, timeout=60,
               what="the refund")  # fmt: skip
    wait_until(lambda: _rows(world, Invoice, Invoice.order_id == order.id,
                             Invoice.kind == "credit_note") or None,
               timeout=60, what="the credit note")  # fmt: skip
    world.wait_idle()
    # the money was captured at Shopify (orderCapture): orderCancel gives it back there, and we
    # record that refund once; nothing is refunded at our payment provider
    (refund,) = _rows(world, Refund, Refund.order_id == order.id)
    assert (refund.source, refund.amount) == ("cancellation", order.total)
    assert world.sandbox.payments.refunds_for(str(order.id)) == []
    (cancelled,) = [c for c in world.sandbox.shopify.cancels if c["order_id"] == external_id]
    assert cancelled["refund_method"] is not None
    assert world.sandbox.shopify.orders[external_id]["cancelled_at"] is not None
    held = _rows(world, StockReservation, StockReservation.order_id == order.id)
    assert held and {r.status for r in held} == {"released"}
    assert _rows(world, Label, Label.id == label.id)[0].voided_at is not None


def test_a_webhook_only_account_needs_attention_instead_of_shipping_silently(
    world: World, fixtures_dir: Path
) -> None:
    shop = world.webhook_only_account()  # webhook secret only: no credentials, no API URL
    payload = fixture_order(fixtures_dir, financial_status="paid")
    stock_for(world, payload)
    world.post(shop, payload, topic="orders/create")
    order = world.wait_state(shop, str(payload["id"]), "ready_to_ship", timeout=90)

    response = world.api("POST", f"/orders/{order.id}/ship")

    assert response.status_code == 200
    failed = world.wait_state(shop, str(payload["id"]), "needs_attention")
    assert failed.last_error == "tracking not sent: no credentials"
    listed = world.api("GET", "/outbox",
                       params={"status": "undelivered", "order_id": order.id}).json()  # fmt: skip
    (message,) = listed["messages"]
    assert (message["kind"], message["status"], message["last_error"]) == (
        "fulfilment", "failed", "no credentials"
    )  # fmt: skip
    assert [a["status"] for a in message["attempts"]] == ["failed"]
    assert json.dumps(message)  # the API's answer is plain JSON


def _track_now(world: World) -> None:
    """Beat's tracking run, in a real worker, and whatever it published."""
    probe = Celery("probe", broker=world.redis_url)
    try:
        probe.send_task("ordersync.maintenance.track_due", queue="intake")
    finally:
        probe.close()
    world.wait_idle()


def _shipped(world: World) -> tuple[str, Order, Label]:
    _, external_id, order = _ready(world, split=False)
    assert world.api("POST", f"/orders/{order.id}/ship").status_code == 200
    wait_until(lambda: _all_delivered(world, order.id, 1), timeout=90, what="fulfilment")
    (label,) = _rows(world, Label, Label.shipment_id.in_(
        select(Shipment.id).where(Shipment.order_id == order.id)))  # fmt: skip
    return external_id, order, label


def test_the_carriers_tracking_delivers_a_shipped_order_and_a_lost_parcel_needs_attention(
    world: World,
) -> None:
    delivered_external_id, delivered, _ = _shipped(world)
    _, lost, lost_label = _shipped(world)
    world.sandbox.carrier.lose(lost_label.tracking_number)

    _track_now(world)

    assert world.order_state(delivered.id) == "delivered"
    (shipment,) = _rows(world, Shipment, Shipment.order_id == delivered.id)
    assert (shipment.status, shipment.tracking_status) == ("delivered", "DE")
    # and Shopify was told, through the outbox: a DELIVERED event on that fulfillment, once
    fulfilment, told = wait_until(lambda: _all_delivered(world, delivered.id, 2), timeout=60,
                                  what="the delivery event delivered")  # fmt: skip
    assert (fulfilment.kind, told.kind) == ("fulfilment", "delivery")
    events = [e for e in world.sandbox.shopify.fulfillment_events if e["status"] == "DELIVERED"]
    (pushed,) = _ledger_fulfilments(world, delivered_external_id)
    assert [e["fulfillment_id"] for e in events].count(pushed["id"]) == 1
    assert world.order_state(lost.id) == "needs_attention"
    with world.maker() as session:
        failed = session.get(Order, lost.id)
        assert failed is not None
        assert (failed.failed_step, failed.last_error) == (
            "delivery", "carrier exception: Lost in transit"
        )  # fmt: skip


def test_a_fulfilment_whose_publish_was_lost_is_delivered_by_the_sweeper(world: World) -> None:
    # given an order shipped in a transaction whose delivery task was never published (the
    # broker was down at commit): the outbox row is there, pending, and nothing will run it
    _, external_id, order = _ready(world, split=False)

    @contextmanager
    def transaction() -> Iterator[Session]:
        with world.maker() as session, session.begin():
            yield session

    def lost(session: Session, order_id: int) -> None:  # FollowUp: here a message id
        pass

    assert ship(transaction, order.id, deliver_it=lost) == Outcome("shipped")
    (message,) = _messages(world, order.id)
    assert message.status == "pending" and _ledger_fulfilments(world, external_id) == []

    # when the sweeper runs after its wait (its clock moved past SWEEP_AFTER_S)
    probe = Celery("probe", broker=world.redis_url)
    try:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
        probe.send_task("ordersync.maintenance.sweep", kwargs={"now": later.isoformat()},
                        queue="intake")  # fmt: skip
    finally:
        probe.close()

    # then it publishes the delivery, and the fulfilment reaches Shopify once
    wait_until(lambda: _all_delivered(world, order.id, 1), timeout=90, what="swept delivery")
    assert len(_ledger_fulfilments(world, external_id)) == 1


def _order_of_several_units(world: World) -> str:
    """A new sandbox order from one location of at least two units (so some can go first)."""
    shopify = world.sandbox.shopify
    for _ in range(200):
        (external_id,) = shopify.add_orders(1)
        order = shopify.orders[external_id]
        skus = {item["sku"] for item in order["line_items"]}
        units = sum(item["quantity"] for item in order["line_items"])
        one_place = skus <= SECOND_LOCATION or not skus & SECOND_LOCATION
        if one_place and units >= 2 and order["financial_status"] == "paid":
            return external_id
    raise AssertionError("the simulator made no order of several units")


def test_staff_ship_some_lines_now_and_the_rest_later_make_two_fulfilments_of_those_units(
    world: World,
) -> None:
    # given a ready order of several units from one location, in one labelled parcel
    account = _connected_account(world)
    external_id = _order_of_several_units(world)
    _deliver_webhook(world, account, external_id)
    order = world.wait_state(account, external_id, "ready_to_ship", timeout=90)
    items = world.sandbox.shopify.orders[external_id]["line_items"]
    ordered = {str(item["id"]): int(item["quantity"]) for item in items}
    (old,) = _rows(world, Shipment, Shipment.order_id == order.id)
    (old_label,) = _rows(world, Label, Label.shipment_id == old.id)
    first_line = str(items[0]["id"])
    now = {first_line: 1}  # one unit of the first line leaves now
    rest = {line: qty - now.get(line, 0) for line, qty in ordered.items()}

    # when staff double-click "Ship these" (the same request twice at once)
    def click(_: int) -> httpx.Response:
        return world.api("POST", f"/orders/{order.id}/ship", json={"lines": now},
                         headers={"Idempotency-Key": "box-1"})  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(click, range(2)))

    # then one request split the parcel: one unit ships in its own labelled parcel, once
    assert [a.status_code for a in answers] == [200, 200]
    assert sorted(a.json()["new"] for a in answers) == [False, True]
    assert len({tuple(a.json()["shipments"]) for a in answers}) == 1
    wait_until(lambda: _all_delivered(world, order.id, 1), timeout=90, what="first fulfilment")
    assert world.order_state(order.id) == "partially_shipped"
    wait_until(lambda: world.sandbox.carrier.labels[old_label.idempotency_key].voided or None,
               timeout=60, what="the whole parcel's label voided")  # fmt: skip
    (first,) = _ledger_fulfilments(world, external_id)
    assert [(li["line_item"].rsplit("/", 1)[-1], li["quantity"]) for li in first["line_items"]] \
        == [(first_line, 1)]
    assert world.sandbox.shopify.orders[external_id]["fulfillment_status"] == "partial"

    # and the rest leaves later, with the label bought for it: a second fulfilment of the rest
    wait_until(lambda: [s for s in _rows(world, Shipment, Shipment.order_id == order.id)
                        if s.status == "labelled"] or None,
               timeout=60, what="the rest's label")  # fmt: skip
    assert world.api("POST", f"/orders/{order.id}/ship").status_code == 200
    wait_until(lambda: _all_delivered(world, order.id, 2), timeout=90, what="second fulfilment")
    first, second = _ledger_fulfilments(world, external_id)
    assert {li["line_item"].rsplit("/", 1)[-1]: li["quantity"] for li in second["line_items"]} \
        == {line: qty for line, qty in rest.items() if qty}
    assert first["tracking_number"] != second["tracking_number"] != old_label.tracking_number
    assert world.sandbox.shopify.orders[external_id]["fulfillment_status"] == "fulfilled"
    assert world.order_state(order.id) == "shipped"
    # on the timeline, with the name of who asked
    timeline = world.api("GET", f"/orders/{order.id}").json()["events"]
    (asked,) = [e for e in timeline if e["kind"] == "ship_lines_requested"]
    assert asked["actor"].startswith(world.staff_name) and asked["detail"]["lines"] == now


def test_the_carriers_signed_tracking_webhooks_deliver_an_order_and_repeats_change_nothing(
    world: World,
) -> None:
    from db.models import CarrierEvent, OrderEvent
    from sandbox.carrier import SANDBOX_API_KEY

    external_id, order, label = _shipped(world)
    carrier = world.sandbox.carrier
    url = f"{world.stack.base_url}/webhooks/carrier/shipengine"
    registered = httpx.post(f"{world.sandbox.url}/carrier/v1/environments/webhooks",
                            json={"event": "track", "url": url},
                            headers={"API-Key": SANDBOX_API_KEY})  # fmt: skip
    assert registered.status_code == 201
    number = label.tracking_number

    def shipment() -> Shipment:
        (found,) = _rows(world, Shipment, Shipment.order_id == order.id)
        assert isinstance(found, Shipment)
        return found

    # a forged delivery (the body changed after signing) is refused and nothing is stored
    body = carrier.track_event(number, "DE")
    forged = httpx.post(url, content=body.replace(b'"DE"', b'"EX"'), headers=carrier.sign(body))
    assert forged.status_code == 401 and _rows(world, CarrierEvent) == []

    # in transit, then delivered: the order is delivered, and Shopify told, by webhook alone
    assert carrier.post_track_event(number, "IT") == 200
    wait_until(lambda: shipment().tracking_status == "IT" or None, timeout=60, what="in transit")
    assert carrier.post_track_event(number, "DE") == 200
    wait_until(lambda: world.order_state(order.id) == "delivered" or None, timeout=60,
               what="delivered by webhook")  # fmt: skip
    wait_until(lambda: _all_delivered(world, order.id, 2), timeout=60, what="delivery pushed")

    # the carrier retries the delivered event, and an older one arrives late: harmless
    assert carrier.replay_webhook(-1) == 200
    assert carrier.post_track_event(number, "AC") == 200
    wait_until(lambda: all(e.status != "received" for e in _rows(world, CarrierEvent)) or None,
               timeout=60, what="every event applied")  # fmt: skip
    world.wait_idle()
    events = _rows(world, CarrierEvent)
    assert [e.status for e in events] == ["processed"] * 3  # IT, DE, AC (the retry: same row)
    assert (shipment().status, shipment().tracking_status) == ("delivered", "DE")
    timeline = _rows(world, OrderEvent, OrderEvent.order_id == order.id)
    assert [e.detail["status"] for e in timeline if e.kind == "tracking"] == ["IT", "DE"]
    assert [e.to_state for e in timeline].count("delivered") == 1
    (pushed,) = _ledger_fulfilments(world, external_id)
    told = [e for e in world.sandbox.shopify.fulfillment_events
            if e["status"] == "DELIVERED" and e["fulfillment_id"] == pushed["id"]]  # fmt: skip
    assert len(told) == 1
