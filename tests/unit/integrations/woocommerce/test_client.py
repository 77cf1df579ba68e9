"""The WooCommerce client and connector against respx mocks shaped like the official samples."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from typing import Any

import httpx
import pytest
import respx

from domain.errors import (
    AuthError,
    NotFound,
    RateLimited,
    ServerError,
    ValidationError,
)
from domain.listings import StockUpdate
from integrations.base import AccountConfig, ConnectorSeams
from integrations.ratelimit import MemoryRateLimiter
from integrations.woocommerce.client import WooCommerceClient
from integrations.woocommerce.connector import FULFILLMENT_META_KEY, WooCommerceConnector
from tests.unit.integrations.woocommerce.official import load

SITE = "https://shop.example.com"
BASE = SITE + "/wp-json/wc/v3"
KEY, SECRET = "ck_test_0123456789", "cs_test_abcdefghij"
SINCE = dt.datetime(2017, 3, 21, 0, 0, tzinfo=dt.UTC)
UNTIL = dt.datetime(2017, 3, 23, 0, 0, 0, 500000, tzinfo=dt.UTC)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def connector(router: respx.MockRouter, sleeps: Sleeps) -> WooCommerceConnector:
    account = AccountConfig(
        name="shop-1",
        channel="woocommerce",
        shop="shop.example.com",
        credentials={"consumer_key": KEY, "consumer_secret": SECRET},
    )
    seams = ConnectorSeams(transport=httpx.MockTransport(router.handler), sleep=sleeps)
    return WooCommerceConnector(account, seams)


def _orders(n: int, start: int = 1000) -> list[dict[str, Any]]:
    template = load("order.retrieve.json")
    out = []
    for i in range(n):
        order = copy.deepcopy(template)
        order["id"], order["number"] = start + i, str(start + i)
        order["date_modified_gmt"] = f"2017-03-22T19:{i // 60:02d}:{i % 60:02d}"
        out.append(order)
    return out


def _page(items: list[dict[str, Any]], total: int, pages: int) -> httpx.Response:
    headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
    return httpx.Response(200, json=items, headers=headers)


def _error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    body = {"code": code, "message": message, "data": {"status": status}}
    return httpx.Response(status, json=body, headers=headers)


# -- polling -------------------------------------------------------------------------------


def test_poll_follows_x_wp_totalpages_to_the_last_page(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    # given: 250 orders over three pages
    orders = _orders(250)
    route = router.get("/orders").mock(
        side_effect=[
            _page(orders[:100], 250, 3),
            _page(orders[100:200], 250, 3),
            _page(orders[200:], 250, 3),
        ]
    )

    # when
    got = list(connector.fetch_updated_orders(SINCE, UNTIL))

    # then
    assert [o.external_id for o in got] == [str(1000 + i) for i in range(250)]
    assert route.call_count == 3
    params = [dict(call.request.url.params) for call in route.calls]
    assert [p["page"] for p in params] == ["1", "2", "3"]
    assert params[0] == {
        "modified_after": "2017-03-20T23:59:59",  # strict ">" on Woo's side: one second back
        "modified_before": "2017-03-23T00:00:01",  # until rounded up to a whole second
        "dates_are_gmt": "true",
        "orderby": "modified",
        "order": "asc",
        "per_page": "100",
        "page": "1",
    }


def test_poll_sends_basic_auth_and_never_keys_in_the_url(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    route = router.get("/orders").mock(return_value=_page([], 0, 0))
    list(connector.fetch_updated_orders(SINCE, UNTIL))
    request = route.calls.last.request
    expected = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert KEY not in str(request.url) and SECRET not in str(request.url)


def test_poll_restarts_from_page_one_when_an_order_leaves_the_window(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    # given: order 1000 is modified during the poll, so page 2 starts one order later
    orders = _orders(150)
    route = router.get(
        "/orders"
    ).mock(
        side_effect=[
            _page(orders[:100], 150, 2),
            _page(orders[101:150], 149, 2),  # total shrank: 1100 would have been skipped
            _page(orders[1:101], 149, 2),
            _page(orders[101:150], 149, 2),
        ]
    )

    # when
    ids = [o.external_id for o in connector.fetch_updated_orders(SINCE, UNTIL)]

    # then: every order exactly once, including the one at the page boundary
    assert sorted(ids) == sorted(str(o["id"]) for o in orders)
    assert len(ids) == len(set(ids)) == 150
    assert route.call_count == 4


def test_poll_without_until_uses_the_clock_as_a_fixed_end(
    router: respx.MockRouter, sleeps: Sleeps
) -> None:
    now = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    account = AccountConfig(
        name="a",
        channel="woocommerce",
        api_base_url=SITE,
        credentials={"consumer_key": KEY, "consumer_secret": SECRET},
    )
    seams = ConnectorSeams(transport=httpx.MockTransport(router.handler), clock=lambda: now)
    route = router.get("/orders").mock(return_value=_page([], 0, 0))
    list(WooCommerceConnector(account, seams).fetch_updated_orders(SINCE))
    assert route.calls.last.request.url.params["modified_before"] == "2024-05-01T12:00:00"


def test_get_order_maps_the_official_sample(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    router.get("/orders/727").mock(
        return_value=httpx.Response(200, json=load("order.retrieve.json"))
    )
    order = connector.get_order("727")
    assert (order.external_id, str(order.total)) == ("727", "29.35")


# -- errors --------------------------------------------------------------------------------


def test_429_is_retried_after_retry_after_then_succeeds(
    router: respx.MockRouter, connector: WooCommerceConnector, sleeps: Sleeps
) -> None:
    router.get("/orders/727").mock(
        side_effect=[
            _error(429, "rate_limit_exceeded", "Too many requests.", **{"Retry-After": "7"}),
            httpx.Response(200, json=load("order.retrieve.json")),
        ]
    )
    assert connector.get_order("727").external_id == "727"
    assert 7.0 in sleeps


def test_429_that_persists_is_rate_limited_and_retryable(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    route = router.get("/orders/727").mock(
        return_value=_error(
            429, "rate_limit_exceeded", "Too many requests.", **{"Retry-After": "1"}
        )
    )
    with pytest.raises(RateLimited) as info:
        connector.get_order("727")
    assert info.value.retryable and info.value.retry_after == 1.0
    assert route.call_count == 3  # max_attempts


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_a_retryable_server_error(
    router: respx.MockRouter, connector: WooCommerceConnector, status: int
) -> None:
    route = router.get("/orders/727").mock(return_value=_error(status, "internal", "Oops"))
    with pytest.raises(ServerError) as info:
        connector.get_order("727")
    assert info.value.retryable and info.value.status == status
    assert route.call_count == 3


def test_401_is_permanent_and_not_retried_and_leaks_no_key(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    route = router.get("/orders/727").mock(
        return_value=_error(
            401, "woocommerce_rest_authentication_error", "Consumer key is invalid."
        )
    )
    with pytest.raises(AuthError) as info:
        connector.get_order("727")
    assert not info.value.retryable
    assert info.value.code == "woocommerce_rest_authentication_error"
    assert route.call_count == 1
    assert KEY not in str(info.value) and SECRET not in repr(connector.client)


def test_404_is_permanent_not_found(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    route = router.get("/orders/9").mock(
        return_value=_error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
    )
    with pytest.raises(NotFound) as info:
        connector.get_order("9")
    assert info.value.code == "woocommerce_rest_shop_order_invalid_id"
    assert route.call_count == 1


def test_order_ids_that_are_not_integers_never_reach_the_path(
    connector: WooCommerceConnector,
) -> None:
    with pytest.raises(ValidationError):
        connector.get_order("727/notes")


def test_ratelimit_remaining_zero_pauses_the_bucket(
    router: respx.MockRouter, sleeps: Sleeps
) -> None:
    # given: a host that announces its window is spent for 4 more seconds
    clock = [100.0]
    limiter = MemoryRateLimiter(clock=lambda: clock[0], headroom=1.0, margin_s=0.0)
    client = WooCommerceClient(
        SITE,
        KEY,
        SECRET,
        transport=httpx.MockTransport(router.handler),
        limiter=limiter,
        sleep=sleeps,
    )
    router.get("/orders/727").mock(
        return_value=httpx.Response(
            200,
            json=load("order.retrieve.json"),
            headers={"RateLimit-Remaining": "0", "RateLimit-Retry-After": "4"},
        )
    )

    # when
    client.get_order("727")
    client.get_order("727")

    # then: the second call waited for the window instead of drawing a 429
    assert sleeps and sleeps[-1] == pytest.approx(4.0, abs=0.3)


# -- stock ---------------------------------------------------------------------------------


def _product(pid: int, sku: str, parent: int = 0) -> dict[str, Any]:
    return {
        "id": pid,
        "sku": sku,
        "type": "variation" if parent else "simple",
        "parent_id": parent,
        "manage_stock": True,
        "stock_quantity": 0,
    }


def _batch_echo(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(200, json={"update": [dict(u) for u in body["update"]]})


def _stock(i: int, pid: int, parent: str | None = None, qty: int = 1) -> StockUpdate:
    return StockUpdate(listing_id=i, sku=f"SKU-{i}", external_id=str(pid), parent_id=parent,
                       location_id=None, quantity=qty, expected=None)  # fmt: skip


def test_push_stock_sends_simple_products_and_each_parents_variations_in_their_batches(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    batch = router.post("/products/batch").mock(side_effect=_batch_echo)
    variations = router.post("/products/9000/variations/batch").mock(side_effect=_batch_echo)
    updates = [_stock(i, 5000 + i, qty=i) for i in range(97)]
    updates += [_stock(100 + i, 9100 + i, parent="9000", qty=-1) for i in range(3)]

    result = connector.push_stock(updates)

    assert sorted(result.applied) == sorted(u.listing_id for u in updates)
    sent = json.loads(batch.calls.last.request.content)["update"]
    assert len(sent) == 97 and batch.call_count == 1
    assert sent[3] == {"id": 5003, "manage_stock": True, "stock_quantity": 3}
    assert json.loads(variations.calls.last.request.content)["update"] == [
        {"id": 9100 + i, "manage_stock": True, "stock_quantity": 0} for i in range(3)
    ]  # never negative


def test_push_stock_refuses_the_items_woo_refused_and_applies_the_others(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    invalid = {"id": 0, "error": {"code": "woocommerce_rest_product_invalid_id",
                                  "message": "Invalid ID.", "data": {"status": 400}}}  # fmt: skip
    router.post("/products/batch").mock(
        return_value=httpx.Response(200, json={"update": [{"id": 1, "stock_quantity": 5}, invalid]})
    )
    result = connector.push_stock([_stock(1, 1, qty=5), _stock(2, 2, qty=5)])
    assert result.applied == [1]
    assert result.refused == {2: "woocommerce_rest_product_invalid_id"}


def test_list_listings_reads_products_and_the_variations_of_variable_ones(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    simple = {**_product(1, "A"), "stock_quantity": 4}
    variable = {"id": 9000, "sku": "", "type": "variable", "parent_id": 0, "manage_stock": False}
    unmanaged = {**_product(2, "B"), "manage_stock": False, "stock_quantity": None}
    router.get("/products").mock(return_value=_page([simple, variable, unmanaged], 3, 1))
    router.get("/products/9000/variations").mock(
        return_value=_page([{**_product(9100, "V1", parent=9000), "stock_quantity": 2}], 1, 1)
    )
    listings = list(connector.list_listings())
    assert [(x.sku, x.external_id, x.parent_id, x.quantity) for x in listings] == [
        ("A", "1", None, 4), ("V1", "9100", "9000", 2), ("B", "2", None, None)]  # fmt: skip


# -- fulfillment ---------------------------------------------------------------------------


def test_push_fulfillment_adds_a_tracking_note_then_completes_once(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    # given
    state = copy.deepcopy(load("order.retrieve.json"))
    notes: list[dict[str, Any]] = []

    def put(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        state["status"] = body["status"]
        state["meta_data"] = state["meta_data"] + body["meta_data"]
        return httpx.Response(200, json=state)

    def add_note(request: httpx.Request) -> httpx.Response:
        note = {"id": len(notes) + 1, **json.loads(request.content)}
        notes.append(note)
        return httpx.Response(201, json=note)

    router.get("/orders/727").mock(side_effect=lambda r: httpx.Response(200, json=state))
    router.get("/orders/727/notes").mock(side_effect=lambda r: httpx.Response(200, json=notes))
    note_route = router.post("/orders/727/notes").mock(side_effect=add_note)
    put_route = router.put("/orders/727").mock(side_effect=put)

    # when: pushed twice with one key (a task retried after the work was done)
    for _ in range(2):
        connector.push_fulfillment(
            "727", tracking_number="1Z999AA10123456784", carrier="UPS", idempotency_key="ful:42"
        )

    # then
    assert note_route.call_count == 1 and put_route.call_count == 1
    assert notes[0]["customer_note"] is True and "1Z999AA10123456784" in notes[0]["note"]
    assert state["status"] == "completed"
    assert {"key": FULFILLMENT_META_KEY, "value": "ful:42"} in state["meta_data"]


def test_push_fulfillment_after_a_crash_between_note_and_status_adds_no_second_note(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    router.get("/orders/727").mock(
        return_value=httpx.Response(200, json=load("order.retrieve.json"))
    )
    router.get("/orders/727/notes").mock(
        return_value=httpx.Response(200, json=[{"id": 5, "note": "shipped, tracking TRK1"}])
    )
    note_route = router.post("/orders/727/notes").mock(return_value=httpx.Response(201, json={}))
    put_route = router.put("/orders/727").mock(
        return_value=httpx.Response(200, json=load("order.update.json"))
    )
    connector.push_fulfillment("727", tracking_number="TRK1", carrier="DHL", idempotency_key="k")
    assert note_route.call_count == 0 and put_route.call_count == 1


def test_push_fulfillment_refuses_a_cancelled_order(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    order = load("order.retrieve.json") | {"status": "cancelled"}
    router.get("/orders/727").mock(return_value=httpx.Response(200, json=order))
    with pytest.raises(ValidationError):
        connector.push_fulfillment("727", tracking_number="T", carrier="UPS", idempotency_key="k")


def test_missing_credentials_are_an_auth_error() -> None:
    account = AccountConfig(name="a", channel="woocommerce", shop="s.example.com")
    with pytest.raises(AuthError):
        WooCommerceConnector(account)


def test_test_connection_reports_the_order_count(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    router.get("/orders").mock(return_value=_page(load("orders.list.json")[:1], 2, 2))
    assert "2 orders" in connector.test_connection()


def test_a_shipment_that_is_not_the_last_adds_its_note_and_leaves_the_status(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    router.get("/orders/727").mock(
        return_value=httpx.Response(200, json=load("order.retrieve.json"))
    )
    router.get("/orders/727/notes").mock(return_value=httpx.Response(200, json=[]))
    note_route = router.post("/orders/727/notes").mock(return_value=httpx.Response(201, json={}))
    put_route = router.put("/orders/727")

    connector.push_fulfillment("727", tracking_number="TRK2", carrier="DHL",
                               idempotency_key="fulfill:1:s2", last=False)  # fmt: skip

    assert note_route.call_count == 1 and not put_route.called
    assert "TRK2" in json.loads(note_route.calls[0].request.content)["note"]


def test_push_cancellation_sets_the_status_and_refunds_the_gateway_once(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    # the official order: processing, paid by bank transfer at checkout (the shop's gateway)
    state = copy.deepcopy(load("order.retrieve.json"))

    def put(request: httpx.Request) -> httpx.Response:
        state.update(status=json.loads(request.content)["status"])
        return httpx.Response(200, json=state)

    def refund(request: httpx.Request) -> httpx.Response:
        amount = json.loads(request.content)["amount"]
        state["refunds"].append({"id": 731, "reason": "", "total": f"-{amount}"})
        return httpx.Response(201, json={"id": 731, "amount": amount})

    router.get("/orders/727").mock(side_effect=lambda r: httpx.Response(200, json=state))
    put_route = router.put("/orders/727").mock(side_effect=put)
    refund_route = router.post("/orders/727/refunds").mock(side_effect=refund)

    for _ in range(2):  # a retry after the answer was lost
        connector.push_cancellation("727", reason="buyer asked", idempotency_key="cancel:9")

    assert put_route.call_count == 1 and state["status"] == "cancelled"
    sent = json.loads(put_route.calls[0].request.content)
    assert sent["meta_data"] == [{"key": "_ordersync_cancellation", "value": "cancel:9"}]
    assert refund_route.call_count == 1
    assert json.loads(refund_route.calls[0].request.content) == {
        "amount": state["total"], "reason": "cancelled: buyer asked", "api_refund": True
    }  # fmt: skip


def test_push_cancellation_of_a_stripe_authorization_we_captured_refunds_nothing_in_woo(
    router: respx.MockRouter, connector: WooCommerceConnector
) -> None:
    state = copy.deepcopy(load("order.retrieve.json"))
    state["meta_data"] = [{"id": 1, "key": "_stripe_intent_id", "value": "pi_1"},
                          {"id": 2, "key": "_stripe_charge_captured", "value": "no"}]  # fmt: skip
    router.get("/orders/727").mock(return_value=httpx.Response(200, json=state))
    router.put("/orders/727").mock(
        return_value=httpx.Response(200, json=state | {"status": "cancelled"})
    )
    refund_route = router.post("/orders/727/refunds")

    connector.push_cancellation("727", reason="buyer asked", idempotency_key="cancel:9")

    assert not refund_route.called  # our refund at the provider gives that money back
