"""The eBay connector against the eBay simulator over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI

from domain.errors import AuthError, TransportError
from domain.listings import StockUpdate
from domain.states import OrderState
from integrations.base import AccountConfig, ConnectorSeams
from integrations.ebay.connector import EbayConnector
from integrations.ratelimit import MemoryRateLimiter
from sandbox.ebay import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_REFRESH_TOKEN,
    EbaySimulator,
)
from tests.support.fake_time import FakeTime as FakeClock
from tests.support.servers import serve_app
from tests.unit.integrations.ebay.spec_schema import schema_errors

Serve = Callable[[EbaySimulator], str]
HOUR_AGO = dt.timedelta(hours=1)


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as servers:

        def start(sim: EbaySimulator) -> str:
            app = FastAPI()
            app.include_router(sim.build_router(), prefix="/ebay")
            return servers.enter_context(serve_app(app)) + "/ebay"

        yield start


def connect(
    base: str, *, page_limit: int = 200, seams: ConnectorSeams | None = None, **creds: str
) -> EbayConnector:
    credentials = {
        "client_id": SANDBOX_CLIENT_ID,
        "client_secret": SANDBOX_CLIENT_SECRET,
        "refresh_token": SANDBOX_REFRESH_TOKEN,
        **creds,
    }
    account = AccountConfig(
        name="ebay-sandbox", channel="ebay", api_base_url=base, credentials=credentials
    )
    return EbayConnector(account, seams, page_limit=page_limit)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_a_full_poll_returns_every_order_once_over_several_pages(serve: Serve) -> None:
    # given 45 orders and pages of 10
    sim = EbaySimulator(seed=7)
    ids = sim.add_orders(45)
    ebay = connect(serve(sim), page_limit=10)
    # when
    got = list(ebay.fetch_updated_orders(now() - HOUR_AGO))
    # then
    assert sorted(o.external_id for o in got) == sorted(ids)
    assert len({o.external_id for o in got}) == 45
    orders = sim.orders
    for order in got:
        raw = orders[order.external_id]
        assert order.total == Decimal(raw["pricingSummary"]["total"]["value"])
        assert order.subtotal - order.discount_total + order.shipping_total + order.tax_total == (
            order.total
        )
        assert order.payment_collected_by_marketplace and order.status is OrderState.NEW
    assert sim.request_log.count(("getOrders", 200)) == 5
    assert sim.request_log.count(("token", 200)) == 1


def test_a_throttled_poll_still_completes(serve: Serve) -> None:
    # given a simulator allowing 2 calls at once, 1 more every 0.5 s, on a clock we drive
    clock = FakeClock()
    sim = EbaySimulator(seed=3, rate_per_s=2.0, burst=2.0, clock=clock.time)
    ids = sim.add_orders(30)
    seams = ConnectorSeams(sleep=clock.sleep, limiter=MemoryRateLimiter(clock=clock.time))
    ebay = connect(serve(sim), page_limit=5, seams=seams)
    # when
    got = list(ebay.fetch_updated_orders(now() - HOUR_AGO))
    # then every order came back once, through real 429s and the waits they asked for
    assert sorted(o.external_id for o in got) == sorted(ids)
    throttled = sim.request_log.count(("getOrders", 429))
    assert throttled > 0
    assert sim.request_log.count(("getOrders", 200)) == 6
    assert 1.0 in clock.sleeps  # Retry-After honoured


def test_only_orders_modified_in_the_window_come_back(serve: Serve) -> None:
    sim = EbaySimulator(seed=1)
    old = sim.add_orders(3)
    base = serve(sim)
    ebay = connect(base)
    time.sleep(0.002)  # eBay timestamps are in milliseconds; the next order must differ
    cut = now()
    time.sleep(0.002)
    sim.touch_order(old[0])
    new = sim.add_orders(2)
    got = {o.external_id: o for o in ebay.fetch_updated_orders(cut)}
    assert set(got) == {old[0], *new}
    assert got[old[0]].fulfillment_status == "partial"


def test_a_cancelled_order_arrives_cancelled(serve: Serve) -> None:
    sim = EbaySimulator(seed=2)
    (order_id,) = sim.add_orders(1)
    sim.cancel_order(order_id)
    order = connect(serve(sim)).get_order(order_id)
    assert order.status is OrderState.CANCELLED
    assert order.financial_status == "fully_refunded"
    assert order.cancelled_at is not None


def test_push_fulfillment_lands_once_even_when_repeated(serve: Serve) -> None:
    sim = EbaySimulator(seed=4)
    (order_id,) = sim.add_orders(1)
    ebay = connect(serve(sim))
    for _ in range(2):
        ebay.push_fulfillment(
            order_id, tracking_number="9400111899223", carrier="USPS", idempotency_key="ship:9"
        )
    assert list(sim.ledger) == [(order_id, "9400111899223")]
    assert sim.request_log.count(("createShippingFulfillment", 201)) == 1
    shipped = ebay.get_order(order_id)
    assert shipped.fulfillment_status == "fulfilled"
    lines = {line["lineItemId"] for line in sim.ledger[(order_id, "9400111899223")]["lineItems"]}
    assert lines == {line.external_id for line in shipped.lines}


def test_a_dropped_fulfillment_answer_is_sent_again_and_found_by_its_tracking(
    serve: Serve,
) -> None:
    # eBay answers the same tracking number again with 409: the connector looks it up
    sim = EbaySimulator(seed=4)
    (order_id,) = sim.add_orders(1)
    ebay = connect(serve(sim))
    sim.drop_write_answers.arm(1, "createShippingFulfillment")

    ebay.push_fulfillment(
        order_id, tracking_number="9400111899223", carrier="USPS", idempotency_key="ship:9"
    )

    assert sim.drop_write_answers.dropped["createShippingFulfillment"] == 1
    assert list(sim.ledger) == [(order_id, "9400111899223")]
    assert sim.request_log.count(("createShippingFulfillment", 201)) == 1
    # the repeats were answered 409 (our client retries a 409 itself, then the connector
    # looks the tracking number up)
    assert sim.request_log.count(("createShippingFulfillment", 409)) >= 1


def test_a_dropped_cancellation_answer_is_read_back_not_sent_again(serve: Serve) -> None:
    # a second cancellation is refused (32700, not eligible): sending it again would fail
    sim = EbaySimulator(seed=4)
    first, second = sim.add_orders(2)
    ebay = connect(serve(sim))

    # the client sees a broken answer; the order is cancelled once
    sim.drop_write_answers.arm(1, "createCancellation")
    with pytest.raises(TransportError):
        ebay.client.create_cancellation({"legacyOrderId": first, "buyerPaid": True})
    assert list(sim.cancellations) == [first]

    sim.drop_write_answers.arm(1, "createCancellation")
    for _ in range(2):  # the task retried: cancelled already, left alone
        ebay.push_cancellation(second, reason="out of stock", idempotency_key="cancel:2")

    assert sim.drop_write_answers.dropped["createCancellation"] == 2
    assert list(sim.cancellations) == [first, second]
    assert sim.orders[second]["cancelStatus"]["cancelState"] == "CANCELED"
    assert [op for op, _ in sim.request_log].count("createCancellation") == 2  # one per order


def test_a_dropped_bulk_quantity_answer_sets_the_same_absolute_quantities(serve: Serve) -> None:
    sim = EbaySimulator(seed=4)
    ebay = connect(serve(sim))
    updates = [StockUpdate(i, sku, sku, None, None, 3 + i, None)
               for i, sku in enumerate(sim.skus[:2])]  # fmt: skip
    sim.drop_write_answers.arm(1, "bulkUpdatePriceQuantity")

    result = ebay.push_stock(updates)

    assert sorted(result.applied) == [0, 1]
    assert sim.drop_write_answers.dropped["bulkUpdatePriceQuantity"] == 1
    # quantities are absolute: sent again, the same values set twice
    expected = [(sku, 3 + i) for i, sku in enumerate(sim.skus[:2])]
    assert sim.stock_sets == expected * 2
    assert [sim.inventory[sku] for sku in sim.skus[:2]] == [3, 4]


def test_a_wrong_client_secret_is_refused_with_ebays_error(serve: Serve) -> None:
    sim = EbaySimulator()
    sim.add_orders(1)
    base = serve(sim)
    with pytest.raises(AuthError) as caught:
        list(connect(base, client_secret="wrong").fetch_updated_orders(now() - HOUR_AGO))
    assert caught.value.status == 401 and caught.value.code == "invalid_client"
    raw = httpx.post(
        f"{base}/identity/v1/oauth2/token",
        auth=("x", "y"),
        data={"grant_type": "refresh_token", "refresh_token": "r"},
    )
    assert raw.status_code == 401
    assert raw.json() == {
        "error": "invalid_client",
        "error_description": "client authentication failed",
    }


def test_a_revoked_refresh_token_is_an_auth_error(serve: Serve) -> None:
    base = serve(EbaySimulator())
    with pytest.raises(AuthError) as caught:
        connect(base, refresh_token="v^1.1#revoked").test_connection()
    assert caught.value.code == "invalid_grant"


def test_the_simulator_speaks_the_spec_shapes_and_filter_errors(serve: Serve) -> None:
    sim = EbaySimulator(seed=5)
    sim.add_orders(3)
    base = serve(sim)
    token = httpx.post(
        f"{base}/identity/v1/oauth2/token",
        auth=(SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET),
        data={"grant_type": "refresh_token", "refresh_token": SANDBOX_REFRESH_TOKEN},
    ).json()
    assert token["token_type"] == "User Access Token" and token["expires_in"] == 7200
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    page = httpx.get(f"{base}/sell/fulfillment/v1/order", params={"limit": 2}, headers=headers)
    body = page.json()
    assert schema_errors(body, "OrderSearchPagedCollection") == []
    assert (body["total"], body["limit"], body["offset"], len(body["orders"])) == (3, 2, 0, 2)
    assert "offset=2" in body["next"] and body["href"].startswith(base)
    future = (now() + HOUR_AGO).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    refused = httpx.get(
        f"{base}/sell/fulfillment/v1/order",
        params={"filter": f"lastmodifieddate:[{future}..]"},
        headers=headers,
    )
    assert refused.status_code == 400 and refused.json()["errors"][0]["errorId"] == 30850
    too_big = httpx.get(f"{base}/sell/fulfillment/v1/order", params={"limit": 201}, headers=headers)
    assert too_big.json()["errors"][0]["errorId"] == 31100
    anonymous = httpx.get(f"{base}/sell/fulfillment/v1/order")
    assert anonymous.status_code == 401 and anonymous.json()["errors"][0]["errorId"] == 1001
