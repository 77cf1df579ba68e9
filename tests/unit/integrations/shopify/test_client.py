"""The GraphQL client and connector against respx mocks built from the official fixtures:
cursor pages, the cost bucket, THROTTLED, error mapping, fulfillment, stock and cancel."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from domain.errors import (
    AuthError,
    NotFound,
    PayloadError,
    PermanentError,
    RateLimited,
    RetryableError,
    ServerError,
    ValidationError,
)
from domain.listings import StockUpdate
from integrations.base import AccountConfig, ConnectorSeams
from integrations.shopify.connector import ShopifyConnector
from integrations.shopify.mapper import map_order
from integrations.shopify.throttle import CostBucket
from sandbox.shopify import graphql_order, graphql_refund
from tests.support.fake_time import FakeTime
from tests.unit.integrations.shopify.fixtures import order

SHOP = "jsmith.myshopify.com"
TOKEN = "shpat_test_token_1234"
URL = f"https://{SHOP}/admin/api/2026-07/graphql.json"
SINCE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime(start=1000.0)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def connector(time_: FakeTime, *, maximum: float = 1000.0, **credentials: Any) -> ShopifyConnector:
    account = AccountConfig(
        name="shop-1",
        channel="shopify",
        shop=SHOP,
        credentials={"access_token": TOKEN, **credentials},
    )
    bucket = CostBucket(maximum, 50.0, clock=time_.clock)
    return ShopifyConnector(account, ConnectorSeams(sleep=time_.sleep), cost_bucket=bucket)


def cost(
    requested: float, actual: float | None, available: float, maximum: float = 1000.0
) -> dict[str, Any]:
    return {
        "cost": {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": maximum,
                "currentlyAvailable": available,
                "restoreRate": 50.0,
            },
        }
    }


def fixture_node(
    order_id: int, updated: str = "2026-07-01T10:00:00Z", *, refunded: bool = False
) -> dict[str, Any]:
    """The 2026-07 fixture order as a GraphQL node, with another id; without its refunds
    unless ``refunded`` (then the connector asks for them: ``OrderRefunds``)."""
    payload = order("rest-2026-07/order.get.json")
    if not refunded:
        payload["refunds"] = []
    node = graphql_order(payload)
    node["id"] = f"gid://shopify/Order/{order_id}"
    node["legacyResourceId"] = str(order_id)
    node["updatedAt"] = updated
    return node


def ok(data: dict[str, Any], extensions: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json={"data": data, "extensions": extensions or cost(10, 5, 990)})


def throttled(requested: float, available: float) -> httpx.Response:
    error = {"message": "Throttled", "extensions": {"code": "THROTTLED"}}
    return httpx.Response(
        200, json={"errors": [error], "extensions": cost(requested, None, available)}
    )


def gql_error(code: str) -> httpx.Response:
    return httpx.Response(200, json={"errors": [{"message": "no", "extensions": {"code": code}}]})


Handlers = dict[str, Callable[[dict[str, Any]], httpx.Response]]
Calls = list[tuple[str, dict[str, Any]]]


def by_operation(
    handlers: Handlers,
) -> tuple[Callable[[httpx.Request], httpx.Response], Calls]:
    """A respx side effect answering by ``operationName``, and the calls it saw."""
    calls: Calls = []

    def side_effect(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-Shopify-Access-Token"] == TOKEN
        body = json.loads(request.content)
        calls.append((body["operationName"], body["variables"]))
        return handlers[body["operationName"]](body["variables"])

    return side_effect, calls


# --- poll ---------------------------------------------------------------------------------


def test_poll_follows_the_cursor_to_the_last_page(mock: respx.MockRouter, time_: FakeTime) -> None:
    # given: three pages of ids, the orders themselves from the fixture
    pages = {None: ([1, 2], "c1"), "c1": ([3, 4], "c2"), "c2": ([5], None)}
    ids = {f"gid://shopify/Order/{5_700_000_000_000 + i}": i for i in range(1, 6)}

    def page(v: dict[str, Any]) -> httpx.Response:
        nums, cursor = pages[v["after"]]
        nodes = [
            {"id": f"gid://shopify/Order/{5_700_000_000_000 + n}", "updatedAt": "x"} for n in nums
        ]
        info = {"hasNextPage": cursor is not None, "endCursor": cursor or "last"}
        return ok({"orders": {"pageInfo": info, "nodes": nodes}}, cost(102, 7, 900))

    def details(v: dict[str, Any]) -> httpx.Response:
        return ok({"nodes": [fixture_node(int(g.rsplit("/", 1)[1])) for g in v["ids"]]})

    side_effect, calls = by_operation({"OrdersUpdatedSince": page, "OrdersByIds": details})
    mock.post(URL).mock(side_effect=side_effect)

    # when
    orders = list(connector(time_).fetch_updated_orders(SINCE, SINCE + dt.timedelta(days=1)))

    # then
    assert [o.external_id for o in orders] == [str(5_700_000_000_000 + i) for i in range(1, 6)]
    assert all(o.total == orders[0].total for o in orders)
    page_calls = [v for op, v in calls if op == "OrdersUpdatedSince"]
    assert [v["after"] for v in page_calls] == [None, "c1", "c2"]
    assert page_calls[0]["query"] == (
        "updated_at:>='2026-01-01T00:00:00Z' AND updated_at:<'2026-01-02T00:00:00Z'"
    )
    assert page_calls[0]["first"] >= 50
    assert sorted(g for op, v in calls if op == "OrdersByIds" for g in v["ids"]) == sorted(ids)


def test_poll_fetches_the_rest_of_long_line_item_lists(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    # given: the order's first page of line items holds one, two more follow
    full = fixture_node(11)
    lines = full["lineItems"]["nodes"]

    def page(v: dict[str, Any]) -> httpx.Response:
        info = {"hasNextPage": False, "endCursor": "e"}
        return ok({"orders": {"pageInfo": info, "nodes": [{"id": full["id"], "updatedAt": "x"}]}})

    def details(v: dict[str, Any]) -> httpx.Response:
        node = copy.deepcopy(full)
        node["lineItems"] = {
            "nodes": lines[:1],
            "pageInfo": {"hasNextPage": True, "endCursor": "l1"},
        }
        return ok({"nodes": [node]})

    def more(v: dict[str, Any]) -> httpx.Response:
        assert v["after"] == "l1"
        conn = {"nodes": lines[1:], "pageInfo": {"hasNextPage": False, "endCursor": "l3"}}
        return ok({"order": {"lineItems": conn}})

    side_effect, _ = by_operation(
        {"OrdersUpdatedSince": page, "OrdersByIds": details, "OrderLineItems": more}
    )
    mock.post(URL).mock(side_effect=side_effect)

    # when
    [result] = list(connector(time_).fetch_updated_orders(SINCE))

    # then
    assert [line.sku for line in result.lines] == ["IPOD2008GREEN", "IPOD2008RED", "IPOD2008BLACK"]


def test_a_node_deleted_between_the_two_calls_is_skipped(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    def page(v: dict[str, Any]) -> httpx.Response:
        nodes = [
            {"id": "gid://shopify/Order/1", "updatedAt": "x"},
            {"id": "gid://shopify/Order/2", "updatedAt": "x"},
        ]
        return ok(
            {"orders": {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": nodes}}
        )

    side_effect, _ = by_operation(
        {
            "OrdersUpdatedSince": page,
            "OrdersByIds": lambda v: ok({"nodes": [None, fixture_node(2)]}),
        }
    )
    mock.post(URL).mock(side_effect=side_effect)

    assert [o.external_id for o in connector(time_).fetch_updated_orders(SINCE)] == ["2"]


# --- throttling ---------------------------------------------------------------------------


def test_the_cost_bucket_waits_instead_of_hitting_throttled(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    # given: Shopify reports only 60 points left after the first query
    responses = iter(
        [
            ok({"order": fixture_node(1)}, cost(105, 40, 60)),
            ok({"order": fixture_node(1)}, cost(105, 40, 920)),
        ]
    )
    route = mock.post(URL).mock(side_effect=lambda request: next(responses))
    shopify = connector(time_)

    # when
    shopify.get_order("1")
    shopify.get_order("1")

    # then: the second query waited for 45 points (105 - 60) at 50/s before being sent
    assert route.call_count == 2
    assert time_.sleeps == [pytest.approx(0.9)]


def test_a_throttled_answer_is_retried_after_the_restore(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    # given: another client drained the bucket: 5 points left, the query requests 105
    responses = iter([throttled(105, 5), ok({"order": fixture_node(1)}, cost(105, 40, 960))])
    route = mock.post(URL).mock(side_effect=lambda request: next(responses))

    # when
    result = connector(time_).get_order("1")

    # then: waited (105 - 5) / 50 = 2 s, then succeeded
    assert result.external_id == "1"
    assert route.call_count == 2
    assert time_.sleeps == [pytest.approx(2.0)]


def test_throttled_again_and_again_becomes_rate_limited(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    route = mock.post(URL).mock(side_effect=lambda request: throttled(105, 0))

    with pytest.raises(RateLimited) as caught:
        connector(time_).get_order("1")

    assert route.call_count == 5
    assert caught.value.retry_after == pytest.approx(105 / 50)
    assert caught.value.retryable


def test_the_estimate_is_corrected_from_requested_query_cost(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    # given: Shopify says the query really requests 300 points, and 100 are left
    responses = iter(
        [
            ok({"order": fixture_node(1)}, cost(300, 40, 100)),
            ok({"order": fixture_node(1)}, cost(300, 40, 900)),
        ]
    )
    mock.post(URL).mock(side_effect=lambda request: next(responses))
    shopify = connector(time_)

    # when
    shopify.get_order("1")
    shopify.get_order("1")

    # then: the second call waited for 300, not for the client's own estimate
    assert time_.sleeps == [pytest.approx((300 - 100) / 50)]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "error", "calls"),
    [
        (
            httpx.Response(401, json={"errors": "[API] Invalid API key or access token"}),
            AuthError,
            1,
        ),
        (httpx.Response(403, json={"errors": "Forbidden"}), AuthError, 1),
        (httpx.Response(402, json={"errors": "Unavailable Shop"}), PermanentError, 1),
        (httpx.Response(423, json={"errors": "Locked"}), PermanentError, 1),
        (httpx.Response(404, json={"errors": "Not Found"}), NotFound, 1),
        (httpx.Response(503, json={"errors": "Unavailable"}), ServerError, 3),
        (gql_error("ACCESS_DENIED"), AuthError, 1),
        (gql_error("MAX_COST_EXCEEDED"), ValidationError, 1),
        (gql_error("INTERNAL_SERVER_ERROR"), ServerError, 1),
        (httpx.Response(200, text="<html>oops</html>"), PayloadError, 1),
    ],
)
def test_errors_map_to_the_tree(
    mock: respx.MockRouter,
    time_: FakeTime,
    response: httpx.Response,
    error: type[Exception],
    calls: int,
) -> None:
    route = mock.post(URL).mock(return_value=response)

    with pytest.raises(error) as caught:
        connector(time_).get_order("1")

    assert route.call_count == calls
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)


def test_permanent_and_retryable_are_told_apart(mock: respx.MockRouter, time_: FakeTime) -> None:
    mock.post(URL).mock(return_value=httpx.Response(402, json={"errors": "Unavailable Shop"}))
    with pytest.raises(PermanentError) as frozen:
        connector(time_).get_order("1")
    assert frozen.value.code == "SHOP_FROZEN" and not frozen.value.retryable

    mock.post(URL).mock(return_value=httpx.Response(502))
    with pytest.raises(RetryableError):
        connector(time_).get_order("1")


def test_a_5xx_is_retried_in_call_then_succeeds(mock: respx.MockRouter, time_: FakeTime) -> None:
    responses = iter([httpx.Response(503), ok({"order": fixture_node(9)})])
    route = mock.post(URL).mock(side_effect=lambda request: next(responses))

    assert connector(time_).get_order("9").external_id == "9"
    assert route.call_count == 2


def test_a_missing_order_is_not_found(mock: respx.MockRouter, time_: FakeTime) -> None:
    mock.post(URL).mock(return_value=ok({"order": None}))

    with pytest.raises(NotFound):
        connector(time_).get_order("404")


def test_the_token_stays_out_of_reprs(time_: FakeTime) -> None:
    shopify = connector(time_)

    assert TOKEN not in repr(shopify) and TOKEN not in repr(shopify.client)
    assert TOKEN not in repr(shopify.account)


def test_a_missing_token_is_an_auth_error() -> None:
    account = AccountConfig(name="x", channel="shopify", shop=SHOP, credentials={})

    with pytest.raises(AuthError):
        ShopifyConnector(account)


# --- fulfillment, cancel, stock -------------------------------------------------------------


def fulfillment_state(
    status: str = "OPEN", tracking: list[str] | None = None, cancelled: str | None = None
) -> httpx.Response:
    fulfillments = [
        {
            "id": "gid://shopify/Fulfillment/1",
            "status": "SUCCESS",
            "trackingInfo": [{"number": n, "company": "UPS"}],
        }
        for n in tracking or []
    ]
    return ok(
        {
            "order": {
                "id": "gid://shopify/Order/450789469",
                "cancelledAt": cancelled,
                "fulfillmentOrders": {
                    "nodes": [
                        {
                            "id": "gid://shopify/FulfillmentOrder/1046000778",
                            "status": status,
                            "assignedLocation": {
                                "location": {"id": "gid://shopify/Location/24826418"}
                            },
                        }
                    ]
                },
                "fulfillments": fulfillments,
            }
        }
    )


def test_push_fulfillment_creates_one_with_tracking(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    created = {
        "fulfillmentCreate": {
            "fulfillment": {"id": "gid://shopify/Fulfillment/2"},
            "userErrors": [],
        }
    }
    side_effect, calls = by_operation(
        {
            "OrderFulfillmentState": lambda v: fulfillment_state(),
            "FulfillmentCreate": lambda v: ok(created),
        }
    )
    mock.post(URL).mock(side_effect=side_effect)

    connector(time_).push_fulfillment(
        "450789469", tracking_number="1Z999", carrier="UPS", idempotency_key="ship:1"
    )

    [(_, variables)] = [c for c in calls if c[0] == "FulfillmentCreate"]
    assert variables["fulfillment"] == {
        "lineItemsByFulfillmentOrder": [
            {"fulfillmentOrderId": "gid://shopify/FulfillmentOrder/1046000778"}
        ],
        "notifyCustomer": True,
        "trackingInfo": {"number": "1Z999", "company": "UPS"},
    }


def test_push_fulfillment_again_does_nothing(mock: respx.MockRouter, time_: FakeTime) -> None:
    side_effect, calls = by_operation(
        {"OrderFulfillmentState": lambda v: fulfillment_state("CLOSED", ["1Z999"])}
    )
    mock.post(URL).mock(side_effect=side_effect)

    connector(time_).push_fulfillment(
        "450789469", tracking_number="1Z999", carrier="UPS", idempotency_key="ship:1"
    )

    assert [op for op, _ in calls] == ["OrderFulfillmentState"]


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (lambda: fulfillment_state("CLOSED", ["OTHER1"]), "NOTHING_TO_FULFILL"),
        (lambda: fulfillment_state(cancelled="2026-07-01T00:00:00Z"), "ORDER_CANCELLED"),
    ],
)
def test_push_fulfillment_refuses_what_cannot_be_shipped(
    mock: respx.MockRouter, time_: FakeTime, state: Any, code: str
) -> None:
    mock.post(URL).mock(side_effect=lambda request: state())

    with pytest.raises(ValidationError) as caught:
        connector(time_).push_fulfillment(
            "1", tracking_number="1Z999", carrier="UPS", idempotency_key="k"
        )

    assert caught.value.code == code


def test_user_errors_become_validation_errors(mock: respx.MockRouter, time_: FakeTime) -> None:
    failed = {
        "fulfillmentCreate": {
            "fulfillment": None,
            "userErrors": [{"field": ["fulfillment"], "message": "unfulfillable"}],
        }
    }
    side_effect, _ = by_operation(
        {
            "OrderFulfillmentState": lambda v: fulfillment_state(),
            "FulfillmentCreate": lambda v: ok(failed),
        }
    )
    mock.post(URL).mock(side_effect=side_effect)

    with pytest.raises(ValidationError, match="userErrors USER_ERROR at fulfillment"):
        connector(time_).push_fulfillment(
            "1", tracking_number="1Z", carrier="UPS", idempotency_key="k"
        )


def test_cancel_sends_order_cancel_once(mock: respx.MockRouter, time_: FakeTime) -> None:
    cancelled = {
        "orderCancel": {
            "job": {"id": "gid://shopify/Job/1", "done": False},
            "orderCancelUserErrors": [],
        }
    }
    states = iter([fulfillment_state(), fulfillment_state(cancelled="2026-07-01T00:00:00Z")])
    side_effect, calls = by_operation(
        {"OrderFulfillmentState": lambda v: next(states), "OrderCancel": lambda v: ok(cancelled)}
    )
    mock.post(URL).mock(side_effect=side_effect)
    shopify = connector(time_)

    shopify.cancel_order("450789469", reason="CUSTOMER")
    shopify.cancel_order("450789469", reason="CUSTOMER")

    cancels = [v for op, v in calls if op == "OrderCancel"]
    assert len(cancels) == 1
    assert cancels[0]["orderId"] == "gid://shopify/Order/450789469"
    assert cancels[0]["refundMethod"] == {"originalPaymentMethodsRefund": True}


def _update(i: int, quantity: int, expected: int | None) -> StockUpdate:
    return StockUpdate(listing_id=i, sku=f"SKU-{i:03d}",
                       external_id=f"gid://shopify/InventoryItem/{i}", parent_id=None,
                       location_id=None, quantity=quantity, expected=expected)  # fmt: skip


def test_push_stock_sets_available_with_change_from_and_a_key_derived_from_the_push(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    done = {"inventorySetQuantities": {"inventoryAdjustmentGroup": {"id": "g"}, "userErrors": []}}
    side_effect, calls = by_operation({"InventorySetQuantities": lambda v: ok(done)})
    mock.post(URL).mock(side_effect=side_effect)
    shopify = connector(time_, location_id="gid://shopify/Location/1")
    updates = [_update(i, 7, None if i == 0 else 3) for i in range(250)]

    result = shopify.push_stock(updates)
    shopify.push_stock(updates)  # the same push again (a retry): the same key
    shopify.push_stock([_update(0, -3, 7)])

    assert result.applied == list(range(250)) and not result.drifted and not result.refused
    sets = [v for op, v in calls if op == "InventorySetQuantities"]
    assert [len(v["input"]["quantities"]) for v in sets] == [250, 250, 1]
    assert sets[0]["input"]["name"] == "available"
    assert sets[0]["input"]["quantities"][:2] == [
        {"inventoryItemId": "gid://shopify/InventoryItem/0",
         "locationId": "gid://shopify/Location/1", "quantity": 7, "changeFromQuantity": None},
        {"inventoryItemId": "gid://shopify/InventoryItem/1",
         "locationId": "gid://shopify/Location/1", "quantity": 7, "changeFromQuantity": 3},
    ]  # fmt: skip
    assert sets[2]["input"]["quantities"][0]["quantity"] == 0  # never negative
    assert sets[0]["idempotencyKey"] == sets[1]["idempotencyKey"] != sets[2]["idempotencyKey"]
    assert sets[0]["input"]["referenceDocumentUri"].endswith(sets[0]["idempotencyKey"])


def test_a_stale_change_from_is_drift_with_the_quantity_shopify_has_and_the_rest_is_set(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    stale = {"inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": [
        {"code": "CHANGE_FROM_QUANTITY_STALE",
         "field": ["input", "quantities", "1", "changeFromQuantity"],
         "message": "The changeFromQuantity value does not match persisted value."}]}}  # fmt: skip
    gone = {"inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": [
        {"code": "INVALID_INVENTORY_ITEM",
         "field": ["input", "quantities", "1", "inventoryItemId"],
         "message": "The specified inventory item could not be found."}]}}  # fmt: skip
    done = {"inventorySetQuantities": {"inventoryAdjustmentGroup": {"id": "g"}, "userErrors": []}}
    answers: Iterator[dict[str, Any]] = iter([stale, gone, done])
    level = {"nodes": [{"id": "gid://shopify/InventoryItem/1", "inventoryLevel": {
        "quantities": [{"name": "available", "quantity": 42}]}}]}  # fmt: skip
    side_effect, calls = by_operation({
        "InventorySetQuantities": lambda v: ok(next(answers)),
        "InventoryLevels": lambda v: ok(level),
    })  # fmt: skip
    mock.post(URL).mock(side_effect=side_effect)
    shopify = connector(time_, location_id="gid://shopify/Location/1")

    result = shopify.push_stock([_update(0, 5, 4), _update(1, 5, 4), _update(2, 5, 4)])

    assert result.drifted == {1: 42}
    assert result.refused == {2: "INVALID_INVENTORY_ITEM"}
    assert result.applied == [0]
    sets = [v for op, v in calls if op == "InventorySetQuantities"]
    assert [[q["inventoryItemId"][-1] for q in v["input"]["quantities"]] for v in sets] == [
        ["0", "1", "2"], ["0", "2"], ["0"]]  # fmt: skip
    assert len({v["idempotencyKey"] for v in sets}) == 3


# --- split shipments: fulfillment orders by location ------------------------------------------

OFFICIAL = Path(__file__).resolve().parents[3] / "fixtures" / "official" / "shopify"
SECOND_LOCATION = "gid://shopify/Location/24826418"


def official_fulfillment_orders(*, split: bool) -> list[dict[str, Any]]:
    """The official fulfillment orders (REST ``ruby-fulfillment_orders.json``) in the GraphQL
    shape our query asks for; the second one's line is the order's second line item and, with
    ``split``, it is assigned to a second location."""
    raw = json.loads((OFFICIAL / "ruby-fulfillment_orders.json").read_text())
    nodes = []
    for n, fo in enumerate(raw):
        location = (
            SECOND_LOCATION
            if split and n == 1
            else (f"gid://shopify/Location/{fo['assigned_location_id']}")
        )
        lines = [
            {
                "id": f"gid://shopify/FulfillmentOrderLineItem/{item['id'] + n}",
                "remainingQuantity": item["quantity"] + n,
                "lineItem": {"id": f"gid://shopify/LineItem/{item['line_item_id'] + n}"},
            }
            for item in fo["fulfillment_order_line_items"]
        ]
        nodes.append({"id": f"gid://shopify/FulfillmentOrder/{fo['id']}",
                      "status": fo["status"].upper(),
                      "assignedLocation": {"location": {"id": location}},
                      "lineItems": {"nodes": lines}})  # fmt: skip
    return nodes


def state_with(nodes: list[dict[str, Any]], tracking: list[str] | None = None) -> httpx.Response:
    fulfillments = [
        {
            "id": "gid://shopify/Fulfillment/1",
            "status": "SUCCESS",
            "trackingInfo": [{"number": t, "company": "UPS"}],
        }
        for t in tracking or []
    ]
    return ok({"order": {"id": "gid://shopify/Order/450789469", "cancelledAt": None,
                         "fulfillmentOrders": {"nodes": nodes},
                         "fulfillments": fulfillments}})  # fmt: skip


def test_shipment_groups_are_the_open_fulfillment_order_lines_by_location(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    nodes = official_fulfillment_orders(split=True)
    side_effect, _ = by_operation(
        {"Locations": lambda v: locations(2), "OrderFulfillmentState": lambda v: state_with(nodes)}
    )
    mock.post(URL).mock(side_effect=side_effect)

    groups = connector(time_).shipment_groups("450789469")

    assert [(g.location, g.lines) for g in groups] == [
        (SECOND_LOCATION, (("466157050", 2),)),
        ("gid://shopify/Location/905684977", (("466157049", 1),)),
    ]


def locations(count: int) -> httpx.Response:
    nodes = [{"id": f"gid://shopify/Location/{n}", "name": f"L{n}"} for n in range(count)]
    return ok({"locations": {"nodes": nodes}})


def test_a_shop_with_one_location_is_asked_once_and_its_orders_ship_whole(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    side_effect, calls = by_operation({"Locations": lambda v: locations(1)})
    mock.post(URL).mock(side_effect=side_effect)
    shopify = connector(time_)

    assert shopify.shipment_groups("1") == shopify.shipment_groups("2") == []
    assert [op for op, _ in calls] == ["Locations"]


def test_a_shipment_is_one_fulfillment_create_of_its_locations_fulfillment_order_lines(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    nodes = official_fulfillment_orders(split=True)
    created = {"fulfillmentCreate": {"fulfillment": {"id": "gid://shopify/Fulfillment/2"},
                                     "userErrors": []}}  # fmt: skip
    side_effect, calls = by_operation(
        {"OrderFulfillmentState": lambda v: state_with(nodes),
         "FulfillmentCreate": lambda v: ok(created)}
    )  # fmt: skip
    mock.post(URL).mock(side_effect=side_effect)

    connector(time_).push_fulfillment(
        "450789469", tracking_number="1Z2", carrier="UPS", idempotency_key="fulfill:1:s2",
        lines=[("466157050", 2)], location=SECOND_LOCATION, last=False,
    )  # fmt: skip

    [(_, variables)] = [c for c in calls if c[0] == "FulfillmentCreate"]
    assert variables["fulfillment"]["lineItemsByFulfillmentOrder"] == [
        {"fulfillmentOrderId": "gid://shopify/FulfillmentOrder/519788022",
         "fulfillmentOrderLineItems": [
             {"id": "gid://shopify/FulfillmentOrderLineItem/519788022", "quantity": 2}]}
    ]  # fmt: skip


def test_push_delivery_is_a_delivered_event_on_the_fulfillment_with_the_tracking_number(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    nodes = official_fulfillment_orders(split=False)
    states = iter([state_with(nodes, tracking=["1Z4"])])
    event = {"id": "gid://shopify/FulfillmentEvent/1", "status": "DELIVERED"}
    made = {"fulfillmentEventCreate": {"fulfillmentEvent": event, "userErrors": []}}
    side_effect, calls = by_operation(
        {"OrderFulfillmentState": lambda v: next(states),
         "FulfillmentEventCreate": lambda v: ok(made)}
    )  # fmt: skip
    mock.post(URL).mock(side_effect=side_effect)

    connector(time_).push_delivery(
        "450789469", tracking_number="1Z4", delivered_at="2026-12-02T10:00:00Z",
        idempotency_key="d",
    )  # fmt: skip

    [(_, variables)] = [c for c in calls if c[0] == "FulfillmentEventCreate"]
    assert variables["fulfillmentEvent"] == {"fulfillmentId": "gid://shopify/Fulfillment/1",
                                             "status": "DELIVERED",
                                             "happenedAt": "2026-12-02T10:00:00Z"}  # fmt: skip


def test_a_refused_retry_of_a_fulfillment_that_landed_is_done(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    nodes = official_fulfillment_orders(split=False)
    states = iter([state_with(nodes), state_with(nodes, tracking=["1Z3"])])
    refused = {"fulfillmentCreate": {"fulfillment": None, "userErrors": [
        {"field": ["fulfillment"], "message": "unfulfillable status= closed"}]}}  # fmt: skip
    side_effect, calls = by_operation(
        {"OrderFulfillmentState": lambda v: next(states),
         "FulfillmentCreate": lambda v: ok(refused)}
    )  # fmt: skip
    mock.post(URL).mock(side_effect=side_effect)

    connector(time_).push_fulfillment(
        "450789469", tracking_number="1Z3", carrier="UPS", idempotency_key="k"
    )

    assert [op for op, _ in calls] == [
        "OrderFulfillmentState", "FulfillmentCreate", "OrderFulfillmentState"
    ]  # fmt: skip


def test_list_listings_reads_every_variant_with_its_item_and_level(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    def page(v: dict[str, Any]) -> httpx.Response:
        assert v["location"] == "gid://shopify/Location/1"
        first = v["after"] is None
        level = {"quantities": [{"name": "available", "quantity": 3}]} if first else None
        item = f"gid://shopify/InventoryItem/{1 if first else 2}"
        nodes = [
            {"sku": "A" if first else "B", "inventoryItem": {"id": item, "inventoryLevel": level}},
            {"sku": "", "inventoryItem": {"id": "gid://shopify/InventoryItem/9"}},
        ]
        info = {"hasNextPage": first, "endCursor": "c1" if first else None}
        return ok({"productVariants": {"nodes": nodes, "pageInfo": info}})  # fmt: skip

    side_effect, _ = by_operation({"ProductVariants": page})
    mock.post(URL).mock(side_effect=side_effect)
    listings = list(connector(time_, location_id="gid://shopify/Location/1").list_listings())
    assert [(x.sku, x.external_id, x.quantity) for x in listings] == [
        ("A", "gid://shopify/InventoryItem/1", 3),
        ("B", "gid://shopify/InventoryItem/2", None),
    ]
    assert {x.location_id for x in listings} == {"gid://shopify/Location/1"}


# --- refunds -------------------------------------------------------------------------------


def test_a_polled_order_with_refunds_gets_them_and_one_without_is_not_asked(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    # given two orders, the second refunded (the 2026-07 fixture's refund of two lines)
    nodes = [fixture_node(1), fixture_node(2, refunded=True)]
    payload = order("rest-2026-07/order.get.json")
    refunds = [graphql_refund(r, payload["currency"]) for r in payload["refunds"]]

    def page(v: dict[str, Any]) -> httpx.Response:
        info = {"hasNextPage": False, "endCursor": "last"}
        return ok({"orders": {"pageInfo": info, "nodes": [{"id": n["id"]} for n in nodes]}})

    side_effect, calls = by_operation({
        "OrdersUpdatedSince": page,
        "OrdersByIds": lambda v: ok({"nodes": nodes}),
        "OrderRefunds": lambda v: ok({"order": {"id": v["id"], "refunds": refunds}}),
    })  # fmt: skip
    mock.post(URL).mock(side_effect=side_effect)

    # when
    first, second = connector(time_).fetch_updated_orders(SINCE)

    # then only the refunded one was asked, and its refunds map as the REST ones do
    asked = [v for op, v in calls if op == "OrderRefunds"]
    assert asked == [{"id": "gid://shopify/Order/2", "refundsFirst": 5, "refundLinesFirst": 20}]
    assert first.refunds == []
    expected = [r.model_copy(update={"order_external_id": "2"})
                for r in map_order(payload, "shop-1").refunds]  # fmt: skip
    assert second.refunds == expected and len(expected[0].lines) == 2


class _Chunks(httpx.SyncByteStream):
    def __init__(self, body: bytes, size: int) -> None:
        self.body, self.size = body, size

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.body), self.size):
            yield self.body[start : start + self.size]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_a_bulk_result_is_split_at_newlines_only_whatever_its_strings_hold_or_its_chunks(
    mock: respx.MockRouter, time_: FakeTime, chunk: int
) -> None:
    # Shopify writes its JSONL as UTF-8 with the text unescaped: a title may hold U+2028,
    # U+2029 or U+0085 (JSON escapes only the control characters, such as \x1c), at which
    # str.splitlines (and httpx's iter_lines) breaks a line
    titles = ["Mug\u2028Blue", "Cap\x85Red", "Tee\u2029", "Sock\x1cPair", "Bag é"]
    objects = [{"id": f"gid://shopify/LineItem/{n}", "title": t} for n, t in enumerate(titles)]
    text = "\r\n".join(json.dumps(o, ensure_ascii=False) for o in objects[:2]) + "\n\n"
    text += "\n".join(json.dumps(o, ensure_ascii=False) for o in objects[2:])  # no last newline
    url = "https://storage.googleapis.com/shopify-tiers/bulk/1.jsonl"
    mock.get(url).mock(return_value=httpx.Response(200, stream=_Chunks(text.encode(), chunk)))
    client = connector(time_).client

    read = list(client.bulk_lines(url))
    resumed = [item["title"] for item, _, _ in client.bulk_lines(url, skip=3)]

    assert [item["title"] for item, _, _ in read] == titles
    assert resumed == titles[3:]  # the blank line is not an object: not counted
    # each object's line begins at the byte given with it, whatever the chunks
    body = text.encode()
    for item, _, begins in read:
        line = body[begins:].split(b"\n", 1)[0]
        assert json.loads(line) == item


def _ranged(body: bytes, honour: bool = True) -> Callable[[httpx.Request], httpx.Response]:
    """A storage server for ``body``: a ``Range: bytes=N-`` answered 206 with that part (as
    Cloud Storage does), or ignored (200, the whole file) when not ``honour``."""

    def answer(request: httpx.Request) -> httpx.Response:
        asked = request.headers.get("range")
        if asked is None or not honour:
            return httpx.Response(200, content=body)
        first = int(asked.removeprefix("bytes=").removesuffix("-"))
        return httpx.Response(
            206, content=body[first:],
            headers={"Content-Range": f"bytes {first}-{len(body) - 1}/{len(body)}"},
        )  # fmt: skip

    return answer


@pytest.mark.parametrize("honour", [True, False])
def test_a_bulk_result_resumed_at_a_byte_is_asked_from_there_and_read_the_same(
    mock: respx.MockRouter, time_: FakeTime, honour: bool
) -> None:
    # given: ten objects, a blank line among them, read through once
    objects = [{"id": f"gid://shopify/Order/{n}", "note": "é" * n} for n in range(10)]
    lines = [json.dumps(o, ensure_ascii=False) for o in objects]
    body = ("\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n").encode()
    url = "https://storage.googleapis.com/shopify-tiers/bulk/3.jsonl"
    route = mock.get(url).mock(side_effect=_ranged(body, honour))
    client = connector(time_).client
    read = list(client.bulk_lines(url))

    # when: resumed after each number of objects, from the byte given with the next one
    for skip in range(1, len(objects)):
        resumed = list(client.bulk_lines(url, skip=skip, start=read[skip][2]))

        # then: the range was asked, and the rest is what reading through gave, at the same
        # bytes (a server that ignores the range sends the whole file: counted past as before)
        assert route.calls.last.request.headers["range"] == f"bytes={read[skip][2]}-"
        assert resumed == read[skip:]
    assert "range" not in route.calls[0].request.headers  # from the start: no range


def test_a_bulk_result_that_answers_another_range_than_asked_is_refused(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    url = "https://storage.googleapis.com/shopify-tiers/bulk/4.jsonl"
    mock.get(url).mock(return_value=httpx.Response(
        206, content=b'{"id":"gid://shopify/Order/1"}\n',
        headers={"Content-Range": "bytes 0-30/31"},
    ))  # fmt: skip

    with pytest.raises(PayloadError, match="asked from byte 40"):
        list(connector(time_).client.bulk_lines(url, skip=2, start=40))


def test_a_bulk_result_line_that_is_not_utf8_is_read_with_replacement_not_dropped(
    mock: respx.MockRouter, time_: FakeTime
) -> None:
    url = "https://storage.googleapis.com/shopify-tiers/bulk/2.jsonl"
    body = b'{"id":"gid://shopify/Order/1","note":"caf\xe9"}\n'
    mock.get(url).mock(return_value=httpx.Response(200, content=body))

    [(item, may_hold, _)] = list(connector(time_).client.bulk_lines(url))

    assert item["note"] == "caf\ufffd" and may_hold is False


@pytest.mark.parametrize(
    ("size", "lanes", "least", "expected"),
    [
        (10, 3, 1, [(0, 3), (3, 6), (6, None)]),
        (5_000_000, 2, 2_000_000, [(0, 2_500_000), (2_500_000, None)]),
        (3_000_000, 4, 2_000_000, [(0, None)]),  # not two lanes' worth: one
        (9_000_000, 4, 2_000_000, [(0, 2_250_000), (2_250_000, 4_500_000),
                                   (4_500_000, 6_750_000), (6_750_000, None)]),
        (0, 2, 2_000_000, [(0, None)]),  # no size given (fileSize null)
    ],
)  # fmt: skip
def test_a_bulk_result_is_cut_in_lanes_of_at_least_the_least_bytes_covering_it_once(
    size: int, lanes: int, least: int, expected: list[tuple[int, int | None]]
) -> None:
    from integrations.shopify.connector import lane_bounds

    bounds = lane_bounds(size, lanes, least)
    assert bounds == expected
    assert [start for start, _ in bounds[1:]] == [end for _, end in bounds[:-1]]
