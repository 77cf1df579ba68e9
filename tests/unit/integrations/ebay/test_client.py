"""eBay client and connector over mocked HTTP (respx), answers built from our spec-derived
examples and eBay's documented error bodies."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
import structlog

from domain.errors import (
    AuthError,
    NotFound,
    PayloadError,
    RateLimited,
    ServerError,
    ValidationError,
)
from domain.listings import StockUpdate
from integrations.base import AccountConfig, ConnectorSeams
from integrations.ebay.client import SCOPE
from integrations.ebay.connector import EbayConnector
from tests.unit.integrations.ebay.conftest import load

BASE = "https://api.ebay.com"
ORDERS = f"{BASE}/sell/fulfillment/v1/order"
TOKEN = f"{BASE}/identity/v1/oauth2/token"
CREDS = {
    "client_id": "App-ID-1",
    "client_secret": "Cert-SECRET-42",
    "refresh_token": "v^1.1#r^SEKRIT",
}
T0 = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)

TOO_MANY = {
    "errors": [
        {
            "errorId": 2001,
            "domain": "ACCESS",
            "category": "REQUEST",
            "message": "Too many requests. The request limit has been reached for the resource.",
        }
    ]
}
INVALID_TOKEN = {
    "errors": [
        {
            "errorId": 1001,
            "domain": "OAuth",
            "category": "REQUEST",
            "message": "Invalid access token",
            "longMessage": "Invalid access token. Check the value of the Authorization HTTP "
            "request header.",
        }
    ]
}


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def token_ok(expires_in: int = 7200) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "access_token": "v^1.1#i^1#USER",
            "expires_in": expires_in,
            "token_type": "User Access Token",
        },
    )


def make_order(n: int, modified: dt.datetime = T0 - dt.timedelta(hours=1)) -> dict[str, Any]:
    order = copy.deepcopy(load("order.us_not_started.json"))
    order["orderId"] = f"27-13905-{n:05d}"
    order["lastModifiedDate"] = modified.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return order


def paged(orders: list[dict[str, Any]], limit: int) -> Any:
    """A getOrders side effect: eBay's OrderSearchPagedCollection over ``orders``."""

    def answer(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", "0"))
        body: dict[str, Any] = {
            "href": str(request.url),
            "total": len(orders),
            "limit": limit,
            "offset": offset,
            "orders": orders[offset : offset + limit],
        }
        if offset + limit < len(orders):
            body["next"] = f"{ORDERS}?limit={limit}&offset={offset + limit}"
        return httpx.Response(200, json=body)

    return answer


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield router


def connector(clock: Clock, sleeps: list[float], *, page_limit: int = 200) -> EbayConnector:
    account = AccountConfig(name="ebay-us", channel="ebay", credentials=CREDS)
    seams = ConnectorSeams(sleep=sleeps.append, clock=clock)
    return EbayConnector(account, seams, page_limit=page_limit)


# -- polling --------------------------------------------------------------------------------


def test_polls_every_offset_page_to_the_last_one(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    # given 5 orders served 2 per page
    mock.post(TOKEN).mock(return_value=token_ok())
    orders = [make_order(n) for n in range(5)]
    route = mock.get(ORDERS).mock(side_effect=paged(orders, 2))
    # when
    got = list(
        connector(clock, sleeps, page_limit=2).fetch_updated_orders(T0 - dt.timedelta(days=1))
    )
    # then
    assert [o.external_id for o in got] == [o["orderId"] for o in orders]
    offsets = [call.request.url.params["offset"] for call in route.calls]
    assert offsets == ["0", "2", "4"]
    first = route.calls[0].request.url
    assert first.params["limit"] == "2"
    assert first.params["fieldGroups"] == "TAX_BREAKDOWN"
    assert first.params["filter"] == "lastmodifieddate:[2026-01-01T12:00:00.000Z..]"
    assert "%5B" in str(first) and "%5D" in str(first)  # eBay wants [ ] percent-encoded


def test_a_past_until_closes_the_range_and_drops_orders_at_or_after_it(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    since, until = T0 - dt.timedelta(hours=3), T0 - dt.timedelta(hours=1)
    mock.post(TOKEN).mock(return_value=token_ok())
    orders = [make_order(1, until - dt.timedelta(seconds=1)), make_order(2, until)]
    route = mock.get(ORDERS).mock(side_effect=paged(orders, 200))
    got = list(connector(clock, sleeps).fetch_updated_orders(since, until))
    # eBay's range is inclusive; ours is [since, until)
    assert [o.external_id for o in got] == ["27-13905-00001"]
    assert route.calls[0].request.url.params["filter"] == (
        "lastmodifieddate:[2026-01-02T09:00:00.000Z..2026-01-02T11:00:00.000Z]"
    )


def test_a_future_until_is_left_open_because_ebay_refuses_future_dates(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    route = mock.get(ORDERS).mock(side_effect=paged([], 200))
    list(
        connector(clock, sleeps).fetch_updated_orders(
            T0 - dt.timedelta(hours=1), T0 + dt.timedelta(hours=1)
        )
    )
    assert route.calls[0].request.url.params["filter"].endswith("..]")


def test_an_order_met_again_on_a_later_page_is_yielded_again_not_remembered(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    a, b, c = make_order(1), make_order(2), make_order(3)
    pages = iter(
        [
            {"total": 3, "limit": 2, "offset": 0, "orders": [a, b], "next": f"{ORDERS}?offset=2"},
            {"total": 3, "limit": 2, "offset": 2, "orders": [b, c]},  # b moved down a place
        ]
    )
    mock.get(ORDERS).mock(side_effect=lambda request: httpx.Response(200, json=next(pages)))
    got = list(
        connector(clock, sleeps, page_limit=2).fetch_updated_orders(T0 - dt.timedelta(days=1))
    )
    # nothing per order is kept across pages (flat memory on a long history): the intake
    # finds the second b stale
    assert [o.external_id for o in got] == [a["orderId"], b["orderId"], b["orderId"], c["orderId"]]


def test_a_next_link_that_does_not_advance_is_a_payload_error(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    body = {
        "total": 9,
        "limit": 1,
        "offset": 0,
        "orders": [make_order(1)],
        "next": f"{ORDERS}?offset=0",
    }
    mock.get(ORDERS).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(PayloadError, match="does not advance"):
        list(connector(clock, sleeps, page_limit=1).fetch_updated_orders(T0 - dt.timedelta(days=1)))


def test_an_unmappable_order_in_a_page_names_the_order_and_field(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    bad = make_order(7)
    del bad["pricingSummary"]["total"]
    mock.get(ORDERS).mock(side_effect=paged([bad], 200))
    with pytest.raises(
        PayloadError, match=r"27-13905-00007: invalid fields: pricingSummary\.total"
    ):
        list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))


# -- token ----------------------------------------------------------------------------------


def test_the_user_token_is_minted_from_the_refresh_token_and_cached(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    token = mock.post(TOKEN).mock(return_value=token_ok())
    orders = mock.get(ORDERS).mock(side_effect=paged([], 200))
    ebay = connector(clock, sleeps)
    list(ebay.fetch_updated_orders(T0 - dt.timedelta(days=1)))
    list(ebay.fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert token.call_count == 1
    request = token.calls[0].request
    expected = base64.b64encode(b"App-ID-1:Cert-SECRET-42").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["v^1.1#r^SEKRIT"],
        "scope": [SCOPE],
    }
    assert all(c.request.headers["Authorization"] == "Bearer v^1.1#i^1#USER" for c in orders.calls)


def test_the_token_is_refreshed_shortly_before_it_expires(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    token = mock.post(TOKEN).mock(return_value=token_ok(expires_in=7200))
    mock.get(ORDERS).mock(side_effect=paged([], 200))
    ebay = connector(clock, sleeps)
    list(ebay.fetch_updated_orders(T0 - dt.timedelta(days=1)))
    clock.now = T0 + dt.timedelta(seconds=7200 - 301)  # still inside the 5-minute margin
    list(ebay.fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert token.call_count == 1
    clock.now = T0 + dt.timedelta(seconds=7200 - 299)
    list(ebay.fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert token.call_count == 2


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (
            401,
            {"error": "invalid_client", "error_description": "client authentication failed"},
            "invalid_client",
        ),
        (
            400,
            {
                "error": "invalid_grant",
                "error_description": "the provided authorization "
                "refresh token is invalid or was issued to another client",
            },
            "invalid_grant",
        ),
    ],
)
def test_a_refused_token_request_is_an_auth_error_without_secrets(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float], status: int, body: Any, code: str
) -> None:
    token = mock.post(TOKEN).mock(return_value=httpx.Response(status, json=body))
    orders = mock.get(ORDERS)
    with pytest.raises(AuthError) as caught:
        list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert caught.value.code == code
    assert token.call_count == 1  # permanent: no retry
    assert not orders.called
    for secret in CREDS.values():
        assert secret not in str(caught.value)


def test_a_401_on_a_cached_token_refreshes_it_once(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    token = mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(ORDERS).mock(
        side_effect=[httpx.Response(401, json=INVALID_TOKEN), paged([make_order(1)], 200)]
    )
    got = list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert len(got) == 1
    assert token.call_count == 2


def test_a_401_that_persists_with_a_fresh_token_is_an_auth_error(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    token = mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(ORDERS).mock(return_value=httpx.Response(401, json=INVALID_TOKEN))
    with pytest.raises(AuthError) as caught:
        list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert caught.value.code == "1001"
    assert token.call_count == 2


# -- errors and retries ---------------------------------------------------------------------


def test_a_429_is_retried_after_its_retry_after(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    route = mock.get(ORDERS).mock(
        side_effect=[
            httpx.Response(429, json=TOO_MANY, headers={"Retry-After": "7"}),
            paged([make_order(1)], 200),
        ]
    )
    got = list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert len(got) == 1
    assert route.call_count == 2
    assert 7.0 in sleeps


def test_429s_that_do_not_stop_become_rate_limited_with_the_ebay_code(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    route = mock.get(ORDERS).mock(
        return_value=httpx.Response(429, json=TOO_MANY, headers={"Retry-After": "2"})
    )
    with pytest.raises(RateLimited) as caught:
        list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert caught.value.retryable
    assert caught.value.code == "2001"
    assert caught.value.retry_after == 2.0
    assert route.call_count == 3  # ApiClient's in-call attempts


def test_a_5xx_is_retried_then_succeeds(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    system_error = {
        "errors": [
            {
                "errorId": 30500,
                "domain": "API_FULFILLMENT",
                "category": "APPLICATION",
                "message": "System error",
            }
        ]
    }
    route = mock.get(ORDERS).mock(
        side_effect=[httpx.Response(500, json=system_error), paged([make_order(1)], 200)]
    )
    assert len(list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))) == 1
    assert route.call_count == 2


def test_a_5xx_that_persists_is_a_retryable_server_error(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(ORDERS).mock(return_value=httpx.Response(503, text="<html>busy</html>"))
    with pytest.raises(ServerError) as caught:
        list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert caught.value.retryable and caught.value.status == 503


def test_a_400_is_permanent_and_not_retried(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    bad_filter = {
        "errors": [
            {
                "errorId": 30810,
                "domain": "API_FULFILLMENT",
                "category": "REQUEST",
                "message": "Invalid date format",
            }
        ]
    }
    route = mock.get(ORDERS).mock(return_value=httpx.Response(400, json=bad_filter))
    with pytest.raises(ValidationError) as caught:
        list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))
    assert not caught.value.retryable and caught.value.code == "30810"
    assert route.call_count == 1


def test_get_order_maps_one_order_and_a_404_is_not_found(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(f"{ORDERS}/27-13905-71642").mock(
        return_value=httpx.Response(200, json=load("order.us_not_started.json"))
    )
    missing = mock.get(f"{ORDERS}/00-00000-00000").mock(return_value=httpx.Response(404))
    ebay = connector(clock, sleeps)
    order = ebay.get_order("27-13905-71642")
    assert (order.external_id, order.total) == ("27-13905-71642", Decimal("71.31"))
    with pytest.raises(NotFound):
        ebay.get_order("00-00000-00000")
    assert missing.call_count == 1


def test_a_non_json_success_is_a_payload_error(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(ORDERS).mock(return_value=httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(PayloadError, match="not JSON"):
        list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))


# -- fulfillment, stock, connection ---------------------------------------------------------


def test_push_fulfillment_ships_every_line_with_the_tracking_number(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    order_id = "27-13905-71642"
    mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(f"{ORDERS}/{order_id}/shipping_fulfillment").mock(
        return_value=httpx.Response(200, json={"fulfillments": [], "total": 0})
    )
    mock.get(f"{ORDERS}/{order_id}").mock(
        return_value=httpx.Response(200, json=load("order.us_not_started.json"))
    )
    create = mock.post(f"{ORDERS}/{order_id}/shipping_fulfillment").mock(
        return_value=httpx.Response(
            201,
            json={},
            headers={"Location": f"{ORDERS}/{order_id}/shipping_fulfillment/9400111899223"},
        )
    )
    connector(clock, sleeps).push_fulfillment(
        order_id, tracking_number="9400111899223", carrier="USPS", idempotency_key="ship:1"
    )
    assert create.call_count == 1
    sent = create.calls[0].request
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.content) == {
        "lineItems": [
            {"lineItemId": "10071239283201", "quantity": 2},
            {"lineItemId": "10071239283202", "quantity": 1},
        ],
        "shippedDate": "2026-01-02T12:00:00.000Z",
        "shippingCarrierCode": "USPS",
        "trackingNumber": "9400111899223",
    }


def test_push_fulfillment_does_nothing_when_the_tracking_number_is_already_there(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    order_id = "27-13905-71642"
    mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(f"{ORDERS}/{order_id}/shipping_fulfillment").mock(
        return_value=httpx.Response(
            200,
            json={
                "total": 1,
                "fulfillments": [
                    {
                        "fulfillmentId": "9400111899223",
                        "shipmentTrackingNumber": "9400111899223",
                        "shippingCarrierCode": "USPS",
                        "lineItems": [{"lineItemId": "10071239283201"}],
                    }
                ],
            },
        )
    )
    create = mock.post(f"{ORDERS}/{order_id}/shipping_fulfillment")
    connector(clock, sleeps).push_fulfillment(
        order_id, tracking_number="9400111899223", carrier="USPS", idempotency_key="ship:1"
    )
    assert not create.called


def test_push_fulfillment_after_a_409_is_done_if_our_fulfillment_landed(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    order_id = "27-13905-71642"
    mock.post(TOKEN).mock(return_value=token_ok())
    listed = mock.get(f"{ORDERS}/{order_id}/shipping_fulfillment").mock(
        side_effect=[
            httpx.Response(200, json={"fulfillments": [], "total": 0}),
            httpx.Response(
                200,
                json={
                    "total": 1,
                    "fulfillments": [{"fulfillmentId": "T1", "shipmentTrackingNumber": "T1"}],
                },
            ),
        ]
    )
    mock.get(f"{ORDERS}/{order_id}").mock(
        return_value=httpx.Response(200, json=load("order.us_not_started.json"))
    )
    create = mock.post(f"{ORDERS}/{order_id}/shipping_fulfillment").mock(
        return_value=httpx.Response(409)
    )
    connector(clock, sleeps).push_fulfillment(
        order_id, tracking_number="T1", carrier="UPS", idempotency_key="ship:1"
    )
    assert listed.call_count == 2
    assert create.call_count == 3  # 409 is retryable inside the call before we re-check


INVENTORY = f"{BASE}/sell/inventory/v1"


def test_push_stock_is_one_bulk_update_price_quantity_with_a_status_per_sku(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    bulk = mock.post(f"{INVENTORY}/bulk_update_price_quantity").mock(
        return_value=httpx.Response(207, json={"responses": [
            {"statusCode": 200, "sku": "A", "warnings": []},
            {"statusCode": 404, "sku": "B", "errors": [{"errorId": 25702, "message": "x"}]},
        ]})
    )  # fmt: skip
    updates = [StockUpdate(i, s, s, None, None, q, None) for i, s, q in
               ((1, "A", 4), (2, "B", 1), (3, "C", -1))]  # fmt: skip
    result = connector(clock, sleeps).push_stock(updates)
    assert result.applied == [1]
    assert result.refused == {2: "404: 25702", 3: "no response for the SKU"}
    assert json.loads(bulk.calls[0].request.content) == {"requests": [
        {"sku": "A", "shipToLocationAvailability": {"quantity": 4}},
        {"sku": "B", "shipToLocationAvailability": {"quantity": 1}},
        {"sku": "C", "shipToLocationAvailability": {"quantity": 0}},
    ]}  # fmt: skip


def test_list_listings_pages_get_inventory_items(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())

    def page(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        items = [
            {
                "sku": f"S{offset + i}",
                "availability": {"shipToLocationAvailability": {"quantity": offset + i}},
            }
            for i in range(2)
        ]
        body = {"total": 3, "inventoryItems": items[: 3 - offset]}
        return httpx.Response(200, json=body)

    route = mock.get(f"{INVENTORY}/inventory_item").mock(side_effect=page)
    listings = list(connector(clock, sleeps).list_listings())
    assert [(x.sku, x.quantity) for x in listings] == [("S0", 0), ("S1", 1), ("S2", 2)]
    assert [c.request.url.params["offset"] for c in route.calls] == ["0", "2"]


def test_test_connection_reports_the_order_count(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    mock.post(TOKEN).mock(return_value=token_ok())
    route = mock.get(ORDERS).mock(
        return_value=httpx.Response(200, json={"total": 42, "limit": 1, "offset": 0, "orders": []})
    )
    assert "42 orders" in connector(clock, sleeps).test_connection()
    assert "filter" not in route.calls[0].request.url.params


def test_missing_credentials_are_an_auth_error_naming_the_keys() -> None:
    account = AccountConfig(name="x", channel="ebay", credentials={"client_id": "a"})
    with pytest.raises(AuthError, match=r"client_secret.*refresh_token"):
        EbayConnector(account)


def test_credentials_never_show_in_reprs(clock: Clock, sleeps: list[float]) -> None:
    ebay = connector(clock, sleeps)
    for text in (repr(ebay), repr(ebay.client), repr(ebay.account)):
        for secret in CREDS.values():
            assert secret not in text


def test_credentials_and_tokens_never_reach_the_logs(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        mock.post(TOKEN).mock(return_value=token_ok())
        mock.get(ORDERS).mock(
            side_effect=[
                httpx.Response(429, json=TOO_MANY, headers={"Retry-After": "1"}),
                paged([make_order(1)], 200),
            ]
        )
        list(connector(clock, sleeps).fetch_updated_orders(T0 - dt.timedelta(days=1)))
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr()
    logged = out.out + out.err
    assert "operation=getOrders" in logged  # the logs were captured at all
    for secret in (
        *CREDS.values(),
        "v^1.1#i^1#USER",
        base64.b64encode(b"App-ID-1:Cert-SECRET-42").decode(),
    ):
        assert secret not in logged


def test_concurrent_callers_share_one_token_refresh(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    gate = threading.Barrier(8)
    token = mock.post(TOKEN).mock(return_value=token_ok())
    client = connector(clock, sleeps).client
    tokens: list[str] = []

    def call() -> None:
        gate.wait()
        tokens.append(client.access_token())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert token.call_count == 1
    assert tokens == ["v^1.1#i^1#USER"] * 8


def test_a_shipment_ships_only_its_line_items(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    order_id = "27-13905-71642"
    mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(f"{ORDERS}/{order_id}/shipping_fulfillment").mock(
        return_value=httpx.Response(200, json={"fulfillments": [], "total": 0})
    )
    mock.get(f"{ORDERS}/{order_id}").mock(
        return_value=httpx.Response(200, json=load("order.us_not_started.json"))
    )
    create = mock.post(f"{ORDERS}/{order_id}/shipping_fulfillment").mock(
        return_value=httpx.Response(201, json={})
    )

    connector(clock, sleeps).push_fulfillment(
        order_id, tracking_number="9400111899224", carrier="USPS", idempotency_key="s:2",
        lines=[("10071239283202", 1)], last=False,
    )  # fmt: skip

    assert json.loads(create.calls[0].request.content)["lineItems"] == [
        {"lineItemId": "10071239283202", "quantity": 1}
    ]


def test_push_cancellation_asks_for_a_seller_cancellation_unless_one_is_there(
    mock: respx.MockRouter, clock: Clock, sleeps: list[float]
) -> None:
    order_id = "27-13905-71642"
    order = load("order.us_not_started.json")
    cancelled = copy.deepcopy(order) | {"cancelStatus": {"cancelState": "CANCELED",
                                                         "cancelRequests": []}}  # fmt: skip
    mock.post(TOKEN).mock(return_value=token_ok())
    mock.get(f"{ORDERS}/{order_id}").mock(
        side_effect=[httpx.Response(200, json=order), httpx.Response(200, json=cancelled)]
    )
    create = mock.post(f"{BASE}/post-order/v2/cancellation").mock(
        return_value=httpx.Response(201, json={"cancelId": "5000000001"})
    )

    for _ in range(2):
        connector(clock, sleeps).push_cancellation(order_id, reason="r", idempotency_key="c:1")

    assert create.call_count == 1
    # the buyer paid: eBay refunds them with the cancellation (CreateCancelRequest)
    assert json.loads(create.calls[0].request.content) == {
        "legacyOrderId": order_id, "cancelReason": "OUT_OF_STOCK_OR_CANNOT_FULFILL",
        "buyerPaid": True, "buyerPaidDate": {"value": "2026-01-01T09:14:29.000Z"},
    }  # fmt: skip
