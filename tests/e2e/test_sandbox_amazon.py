"""The Amazon connector polling the Amazon simulator over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from domain.errors import AuthError, TransportError
from domain.listings import StockUpdate
from integrations.amazon.connector import AmazonConnector
from integrations.base import AccountConfig, ConnectorSeams
from sandbox.amazon import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_MARKETPLACE_ID,
    SANDBOX_REFRESH_TOKEN,
    SANDBOX_SELLER_ID,
    AmazonSimulator,
)
from tests.support.servers import serve_app


@contextmanager
def running(sim: AmazonSimulator) -> Iterator[str]:
    app = FastAPI()
    app.include_router(sim.build_router(), prefix="/amazon")
    with serve_app(app) as base:
        yield f"{base}/amazon"


def connector(
    base: str, *, secret: str = SANDBOX_CLIENT_SECRET, sleep: Callable[[float], None] = time.sleep,
    seller_id: str | None = None,
) -> AmazonConnector:  # fmt: skip
    account = AccountConfig(
        name="amazon-e2e",
        channel="amazon",
        api_base_url=base,
        credentials={
            "refresh_token": SANDBOX_REFRESH_TOKEN,
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": secret,
            "lwa_url": base,  # the simulator serves LWA under the same prefix
            "marketplace_ids": [SANDBOX_MARKETPLACE_ID],
            **({"seller_id": seller_id} if seller_id else {}),
        },
    )
    return AmazonConnector(account, ConnectorSeams(sleep=sleep))


def test_full_poll_over_several_pages_returns_every_order_once_mapped() -> None:
    # given 25 orders, 10 per page, at Amazon's documented rate limits
    sim = AmazonSimulator(seed=7, page_size=10)
    ids = sim.add_orders(25)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    with running(sim) as base:
        amazon = connector(base)
        try:
            # when
            got = list(amazon.fetch_updated_orders(since))
        finally:
            amazon.close()

    # then: each order exactly once, with its items and money as the simulator holds them
    assert Counter(o.external_id for o in got) == Counter(ids)
    for order in got:
        source = sim.orders[order.external_id]
        assert [line.external_id for line in order.lines] == [
            i["OrderItemId"] for i in sim.items[order.external_id]
        ]
        if "OrderTotal" in source:
            assert order.total == Decimal(source["OrderTotal"]["Amount"])
        assert order.payment_collected_by_marketplace
    statuses = Counter(sim.request_log)
    assert statuses[("getOrders", 200)] == 3
    assert statuses[("lwaToken", 200)] == 1  # one token for the whole poll
    assert statuses[("createRestrictedDataToken", 200)] == 1  # one RDT for every page
    assert not any(status == 429 for _, status in sim.request_log)


def test_poll_under_throttling_still_completes() -> None:
    # given tiny buckets (burst 1-2) and item pages of 2: the client will hit 429 QuotaExceeded
    sim = AmazonSimulator(
        seed=3,
        page_size=3,
        items_page_size=2,
        rate_limits={
            "getOrders": (40.0, 1),
            "getOrderItems": (40.0, 2),
            "getOrder": (40.0, 2),
            "confirmShipment": (40.0, 2),
        },
    )
    ids = sim.add_orders(8)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    # waits are real but capped: 50 ms refills at least two tokens at 40/s
    with running(sim) as base:
        amazon = connector(base, sleep=lambda s: time.sleep(min(s, 0.05)))
        try:
            got = list(amazon.fetch_updated_orders(since))
        finally:
            amazon.close()

    assert Counter(o.external_id for o in got) == Counter(ids)
    assert sum(len(o.lines) for o in got) == sum(len(sim.items[i]) for i in ids)
    assert any(status == 429 for _, status in sim.request_log)
    assert Counter(sim.request_log)[("getOrders", 200)] == 3


def test_push_fulfillment_is_recorded_once_and_ships_the_order() -> None:
    sim = AmazonSimulator(seed=5, pending_ratio=0.0)
    (order_id,) = sim.add_orders(1)

    with running(sim) as base:
        amazon = connector(base)
        try:
            for _ in range(2):  # a retried task pushes twice
                amazon.push_fulfillment(
                    order_id, tracking_number="1Z999AA1", carrier="UPS", idempotency_key="ship:1"
                )
            shipped = amazon.get_order(order_id)
        finally:
            amazon.close()

    assert len(sim.shipments) == 1
    assert sim.orders[order_id]["OrderStatus"] == "Shipped"
    assert shipped.fulfillment_status == "fulfilled"


def test_a_dropped_confirm_shipment_answer_ships_once_read_back_from_the_items() -> None:
    # confirmShipment has no idempotency key (the same package again is refused 400)
    sim = AmazonSimulator(seed=5, pending_ratio=0.0)
    first, second = sim.add_orders(2)

    with running(sim) as base:
        amazon = connector(base)
        try:
            # the client sees a broken answer; the package is shipped once, not sent again
            items = [{"orderItemId": i["OrderItemId"], "quantity": i["QuantityOrdered"]}
                     for i in sim.items[first]]  # fmt: skip
            body = {"marketplaceId": SANDBOX_MARKETPLACE_ID, "packageDetail": {
                "packageReferenceId": "1", "carrierCode": "UPS", "trackingNumber": "1ZD",
                "shipDate": "2026-01-01T00:00:00Z", "orderItems": items}}  # fmt: skip
            sim.drop_write_answers.arm(1, "confirmShipment")
            with pytest.raises(TransportError):
                amazon.client.confirm_shipment(first, body)
            assert list(sim.shipments) == [(first, "1")]

            # the connector, its answer dropped, reads the items back: shipped, done
            sim.drop_write_answers.arm(1, "confirmShipment")
            for _ in range(2):  # and the task retried: the order is shipped, left alone
                amazon.push_fulfillment(
                    second, tracking_number="1Z999AA1", carrier="UPS", idempotency_key="ship:2"
                )
        finally:
            amazon.close()

    assert sim.drop_write_answers.dropped["confirmShipment"] == 2
    assert len([k for k in sim.shipments if k[0] == second]) == 1
    assert sim.orders[second]["OrderStatus"] == "Shipped"
    assert [op for op, _ in sim.request_log].count("confirmShipment") == 2  # one per order


def test_a_dropped_patch_listings_answer_sets_the_same_absolute_quantity() -> None:
    sim = AmazonSimulator(seed=6)
    sku = sim.skus[0]
    update = StockUpdate(listing_id=1, sku=sku, external_id=sku, parent_id=None,
                         location_id=SANDBOX_MARKETPLACE_ID, quantity=9, expected=None)  # fmt: skip
    sim.drop_write_answers.arm(1, "patchListingsItem")

    with running(sim) as base:
        amazon = connector(base, seller_id=SANDBOX_SELLER_ID)
        try:
            result = amazon.push_stock([update])
        finally:
            amazon.close()

    assert result.applied == [1]
    assert sim.drop_write_answers.dropped["patchListingsItem"] == 1
    # a replace of an absolute quantity, sent again: the same value set twice
    assert sim.stock_sets == [(sku, 9), (sku, 9)]
    assert sim.listings[sku] == 9


def test_wrong_client_secret_is_an_auth_error() -> None:
    sim = AmazonSimulator()
    with running(sim) as base:
        amazon = connector(base, secret="not-the-secret")
        try:
            with pytest.raises(AuthError) as caught:
                amazon.test_connection()
        finally:
            amazon.close()

    assert caught.value.code == "invalid_client"
    assert sim.request_log == [("lwaToken", 401)]


# ------------------------------------------------------------------ buyer PII (RDT)


def test_full_poll_returns_orders_with_complete_shipping_addresses() -> None:
    # given paid orders (Amazon shows no ShippingAddress while an order is Pending)
    sim = AmazonSimulator(seed=11, page_size=4, pending_ratio=0.0)
    ids = sim.add_orders(10)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    with running(sim) as base:
        amazon = connector(base)
        try:
            got = list(amazon.fetch_updated_orders(since))
        finally:
            amazon.close()

    # then: every order carries what the carrier needs, exactly as Amazon holds it
    assert sorted(o.external_id for o in got) == sorted(ids)
    for order in got:
        source = sim.addresses[order.external_id]
        address = order.shipping_address
        assert address is not None
        assert address.name == source["Name"] and address.line1 == source["AddressLine1"]
        assert address.line2 == source.get("AddressLine2")
        assert (address.city, address.region) == (source["City"], source["StateOrRegion"])
        assert (address.postal_code, address.country_code) == (source["PostalCode"], "US")
        assert address.phone == source["Phone"]
        assert re.fullmatch(r"\d{5}(-\d{4})?", address.postal_code or "")
        assert re.fullmatch(r"[A-Z]{2}", address.region or "")
        buyer = sim.buyers[order.external_id]
        assert order.buyer_email == buyer["BuyerEmail"]
        assert order.buyer_email.endswith("@marketplace.amazon.com")
        assert order.buyer_name == buyer["BuyerName"]
    assert len({o.shipping_address for o in got}) == len(got)  # seeded, not one fixed address
    statuses = Counter(sim.request_log)
    assert statuses[("createRestrictedDataToken", 200)] == 1
    assert statuses[("getOrders", 200)] == 3


def test_pending_orders_come_without_address_until_paid() -> None:
    sim = AmazonSimulator(seed=2, pending_ratio=1.0)
    (order_id,) = sim.add_orders(1)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    with running(sim) as base:
        amazon = connector(base)
        try:
            (pending,) = list(amazon.fetch_updated_orders(since))
            sim.touch_order(order_id)  # paid: Unshipped
            (paid,) = list(amazon.fetch_updated_orders(since))
        finally:
            amazon.close()

    assert pending.shipping_address is None
    assert paid.shipping_address is not None
    assert paid.shipping_address.line1 == sim.addresses[order_id]["AddressLine1"]


def test_without_the_pii_role_the_poll_maps_orders_without_street_or_name() -> None:
    # given an application without a restricted role: the Tokens API answers 403
    sim = AmazonSimulator(seed=4, pending_ratio=0.0, pii_role=False)
    ids = sim.add_orders(3)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    with running(sim) as base:
        amazon = connector(base)
        try:
            got = list(amazon.fetch_updated_orders(since))
            described = amazon.test_connection()
        finally:
            amazon.close()

    # then: no crash, every order, with the public part of the address only
    assert sorted(o.external_id for o in got) == sorted(ids)
    for order in got:
        source = sim.addresses[order.external_id]
        address = order.shipping_address
        assert address is not None
        assert (address.name, address.line1, address.phone) == (None, None, None)
        assert (address.city, address.postal_code) == (source["City"], source["PostalCode"])
        assert order.buyer_email is None
    assert Counter(sim.request_log)[("createRestrictedDataToken", 403)] == 2  # one retry
    assert "no buyer PII" in described


# ------------------------------------------------------------------ the simulator's Tokens API


def _rdt(client: httpx.Client, token: str, resources: Any) -> httpx.Response:
    return client.post(
        "/tokens/2021-03-01/restrictedDataToken",
        json={"restrictedResources": resources},
        headers={"x-amz-access-token": token},
    )


def _bulk(elements: list[str]) -> list[dict[str, Any]]:
    return [{"method": "GET", "path": "/orders/v0/orders", "dataElements": elements}]


def test_simulator_tokens_api_answers_like_amazon() -> None:
    sim = AmazonSimulator(seed=9, pending_ratio=0.0)
    (order_id, other_id) = sim.add_orders(2)
    params = {
        "MarketplaceIds": SANDBOX_MARKETPLACE_ID,
        "CreatedAfter": "2000-01-01T00:00:00Z",
    }

    with running(sim) as base, httpx.Client(base_url=base) as client:
        lwa = sim.access_token()

        def orders(token: str) -> list[dict[str, Any]]:
            response = client.get(
                "/orders/v0/orders", params=params, headers={"x-amz-access-token": token}
            )
            assert response.status_code == 200, response.text
            found: list[dict[str, Any]] = response.json()["payload"]["Orders"]
            return found

        # a full RDT: the answer's shape, then the full address and the buyer
        granted = _rdt(client, lwa, _bulk(["buyerInfo", "shippingAddress"]))
        assert granted.status_code == 200
        body = granted.json()
        assert set(body) == {"restrictedDataToken", "expiresIn"} and body["expiresIn"] == 3600
        assert body["restrictedDataToken"].startswith("Atz.sprdt|")
        assert granted.headers["x-amzn-RateLimit-Limit"] == "1.0"
        full = orders(body["restrictedDataToken"])[0]
        assert full["ShippingAddress"] == sim.addresses[full["AmazonOrderId"]]
        assert full["BuyerInfo"]["BuyerEmail"] == sim.buyers[full["AmazonOrderId"]]["BuyerEmail"]

        # the LWA token: City, StateOrRegion, PostalCode, CountryCode and an empty BuyerInfo
        public = orders(lwa)[0]
        assert set(public["ShippingAddress"]) == {
            "City",
            "StateOrRegion",
            "PostalCode",
            "CountryCode",
        }
        assert public["BuyerInfo"] == {}

        # only the elements asked for
        only_address = _rdt(client, lwa, _bulk(["shippingAddress"])).json()
        partial = orders(only_address["restrictedDataToken"])[0]
        assert "Name" in partial["ShippingAddress"] and partial["BuyerInfo"] == {}

        # an RDT covers the calls it names, nothing else
        rdt = body["restrictedDataToken"]
        items = client.get(
            f"/orders/v0/orders/{order_id}/orderItems", headers={"x-amz-access-token": rdt}
        )
        assert items.status_code == 403
        assert items.json()["errors"][0]["code"] == "Unauthorized"
        assert _rdt(client, rdt, _bulk(["buyerInfo"])).status_code == 403

        # a specific order path: that order only
        one = _rdt(
            client,
            lwa,
            [
                {
                    "method": "GET",
                    "path": f"/orders/v0/orders/{order_id}",
                    "dataElements": ["shippingAddress"],
                }
            ],
        ).json()["restrictedDataToken"]
        mine = client.get(f"/orders/v0/orders/{order_id}", headers={"x-amz-access-token": one})
        assert mine.json()["payload"]["ShippingAddress"]["Name"]
        theirs = client.get(f"/orders/v0/orders/{other_id}", headers={"x-amz-access-token": one})
        assert theirs.status_code == 403

        # invalid requests: 400 InvalidInput
        for bad in (
            [],
            [{"method": "GET", "path": "/orders/v0/orders"}],  # getOrders needs dataElements
            [{"method": "GET", "path": "/catalog/v0/items", "dataElements": ["buyerInfo"]}],
            _bulk(["creditCard"]),
            [{"method": "FETCH", "path": "/orders/v0/orders", "dataElements": ["buyerInfo"]}],
        ):
            refused = _rdt(client, lwa, bad)
            assert refused.status_code == 400, bad
            assert refused.json()["errors"][0]["code"] == "InvalidInput"

        # no token at all
        anonymous = client.post(
            "/tokens/2021-03-01/restrictedDataToken", json={"restrictedResources": _bulk([])}
        )
        assert anonymous.status_code == 403


def test_simulator_rdt_expires_after_its_lifetime() -> None:
    now = [1_700_000_000.0]
    sim = AmazonSimulator(seed=1, clock=lambda: now[0], rdt_lifetime_s=3600)
    rdt = sim.restricted_token()

    with running(sim) as base, httpx.Client(base_url=base) as client:
        params = {"MarketplaceIds": SANDBOX_MARKETPLACE_ID, "CreatedAfter": "2000-01-01T00:00:00Z"}
        headers = {"x-amz-access-token": rdt}
        assert client.get("/orders/v0/orders", params=params, headers=headers).status_code == 200
        now[0] += 3600
        expired = client.get("/orders/v0/orders", params=params, headers=headers)

    assert expired.status_code == 403
    assert "expired" in expired.json()["errors"][0]["message"]


def test_a_json_listings_feed_sets_hundreds_of_quantities_in_one_feed_with_a_report() -> None:
    sim = AmazonSimulator(seed=6, skus=())
    skus = [f"FEED-{i:03d}" for i in range(400)]
    sim.add_listings(skus)
    sim.add_listings(["FBA-1"], 50, fba=True)
    sim.feed_polls_in_progress = 2
    updates = [
        StockUpdate(listing_id=i, sku=sku, external_id=sku, parent_id=None,
                    location_id=SANDBOX_MARKETPLACE_ID, quantity=i % 7, expected=None)
        for i, sku in enumerate([*skus, "FBA-1", "NOWHERE"])
    ]  # fmt: skip

    with running(sim) as base:
        amazon = connector(base, seller_id=SANDBOX_SELLER_ID)
        try:
            result = amazon.push_stock_feed(updates)
        finally:
            amazon.close()

    assert sorted(result.applied) == list(range(400))
    assert result.refused == {400: "INVALID: 90000900", 401: "INVALID: NOT_FOUND"}
    assert sim.listings == {sku: i % 7 for i, sku in enumerate(skus)}
    assert sim.fba_listings == {"FBA-1": 50}
    assert sim.stock_calls == 1  # one feed, not 402 patchListingsItem calls
    calls = Counter(op for op, _ in sim.request_log)
    assert calls["createFeedDocument"] == calls["createFeed"] == calls["getFeedDocument"] == 1
    assert calls["getFeed"] == 3  # IN_PROGRESS twice, then DONE
    assert calls["patchListingsItem"] == 0
