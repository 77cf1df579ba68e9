"""The Amazon connector polling the Amazon simulator over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
from fastapi import FastAPI

from integrations.amazon.connector import AmazonConnector
from integrations.base import AccountConfig, ConnectorSeams
from integrations.errors import AuthError
from orders.states import Channel
from sandbox.amazon import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_MARKETPLACE_ID,
    SANDBOX_REFRESH_TOKEN,
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
    base: str, *, secret: str = SANDBOX_CLIENT_SECRET, sleep: Callable[[float], None] = time.sleep
) -> AmazonConnector:
    account = AccountConfig(
        name="amazon-e2e",
        channel=Channel.AMAZON,
        api_base_url=base,
        credentials={
            "refresh_token": SANDBOX_REFRESH_TOKEN,
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": secret,
            "lwa_url": base,  # the simulator serves LWA under the same prefix
            "marketplace_ids": [SANDBOX_MARKETPLACE_ID],
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
