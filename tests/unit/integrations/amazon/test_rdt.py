"""Restricted Data Tokens: getOrders/getOrder with an RDT for buyer PII, cached, refreshed before
expiry, and the LWA-token fallback when the application lacks the restricted role."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from domain.errors import PayloadError, ServerError
from integrations.amazon.client import ORDERS_PATH
from integrations.amazon.rdt import ORDER_PII, RestrictedResource
from tests.unit.integrations.amazon.fixtures import load
from tests.unit.integrations.amazon.test_connector import (
    DENIED,
    NOW,
    ORDERS,
    Env,
    items_route,
)

SINCE = NOW - dt.timedelta(hours=1)
BULK = {
    "restrictedResources": [
        {
            "method": "GET",
            "path": "/orders/v0/orders",
            "dataElements": ["buyerInfo", "shippingAddress"],
        }
    ]
}


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.connector.close()


def example_page() -> dict[str, Any]:
    """The documented getOrders example as a last page (its NextToken dropped)."""
    body: dict[str, Any] = load("getOrders.200.example.json")
    del body["payload"]["NextToken"]
    return body


def with_pii() -> httpx.Response:
    """getOrders as Amazon answers it to an RDT (ShippingAddress and BuyerInfo complete)."""
    return httpx.Response(200, json=example_page())


def without_pii() -> httpx.Response:
    """The same order as Amazon answers it to the plain LWA token."""
    body = example_page()
    order = body["payload"]["Orders"][0]
    address = order["ShippingAddress"]
    order["ShippingAddress"] = {
        k: address[k] for k in ("City", "StateOrRegion", "PostalCode", "CountryCode")
    }
    order["BuyerInfo"] = {}
    return httpx.Response(200, json=body)


def sent_token(route: Any, index: int = -1) -> str:
    token: str = route.calls[index].request.headers["x-amz-access-token"]
    return token


# ------------------------------------------------------------------ the happy path


def test_get_orders_goes_out_with_an_rdt_for_buyer_info_and_shipping_address(env: Env) -> None:
    orders = env.router.get(ORDERS).mock(return_value=with_pii())
    items = items_route(env)

    (order,) = list(env.connector.fetch_updated_orders(SINCE))

    # the Tokens API was asked, with the LWA token, for the bulk getOrders resource
    assert env.rdt.call_count == 1
    request = env.rdt.calls[0].request
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-amz-access-token"] == "Atza|token-1"
    assert json.loads(request.content) == BULK
    # the RDT replaced the LWA token on getOrders (and only there)
    assert sent_token(orders) == "Atz.sprdt|rdt-1"
    assert sent_token(items) == "Atza|token-1"
    # and the order carries what the carrier needs
    address = order.shipping_address
    assert address is not None
    assert (address.name, address.line1, address.city, address.region) == (
        "Michigan address",
        "1 Cross St.",
        "Canton",
        "MI",
    )
    assert (address.postal_code, address.country_code) == ("48817", "US")
    assert (order.buyer_email, order.buyer_name) == ("user@example.com", "John Doe")


def test_one_rdt_serves_every_page_of_every_poll_within_its_hour(env: Env) -> None:
    names = ["getOrders.200.sandbox-2.json", "getOrders.200.sandbox-1.json"] * 2  # NextToken, last
    orders = env.router.get(ORDERS).mock(
        side_effect=[httpx.Response(200, json=load(name)) for name in names]
    )
    items_route(env)

    list(env.connector.fetch_updated_orders(SINCE))
    env.clock.now += dt.timedelta(minutes=30)
    list(env.connector.fetch_updated_orders(SINCE))

    assert orders.call_count == 4
    assert env.rdt.call_count == 1
    assert {sent_token(orders, i) for i in range(4)} == {"Atz.sprdt|rdt-1"}


def test_rdt_is_refreshed_shortly_before_it_expires(env: Env) -> None:
    orders = env.router.get(ORDERS).mock(
        return_value=httpx.Response(200, json={"payload": {"Orders": []}})
    )

    list(env.connector.fetch_updated_orders(SINCE))
    env.clock.now += dt.timedelta(seconds=3600 - 300 - 1)  # just outside the 5-minute margin
    list(env.connector.fetch_updated_orders(SINCE))
    env.clock.now += dt.timedelta(seconds=2)  # inside it
    list(env.connector.fetch_updated_orders(SINCE))
    env.clock.now += dt.timedelta(hours=2)  # long expired
    list(env.connector.fetch_updated_orders(SINCE))

    assert [sent_token(orders, i) for i in range(4)] == [
        "Atz.sprdt|rdt-1",
        "Atz.sprdt|rdt-1",
        "Atz.sprdt|rdt-2",
        "Atz.sprdt|rdt-3",
    ]
    assert [json.loads(call.request.content) for call in env.rdt.calls] == [BULK] * 3


def test_a_short_lived_rdt_is_not_refetched_on_every_call(env: Env) -> None:
    env.rdt.mock(
        side_effect=None,
        return_value=httpx.Response(
            200, json={"restrictedDataToken": "Atz.sprdt|s", "expiresIn": 120}
        ),
    )
    env.router.get(ORDERS).mock(return_value=httpx.Response(200, json={"payload": {"Orders": []}}))

    list(env.connector.fetch_updated_orders(SINCE))
    env.clock.now += dt.timedelta(seconds=59)  # margin = half the lifetime when it is shorter
    list(env.connector.fetch_updated_orders(SINCE))
    env.clock.now += dt.timedelta(seconds=2)
    list(env.connector.fetch_updated_orders(SINCE))

    assert env.rdt.call_count == 2


def test_concurrent_polls_share_one_tokens_api_call(env: Env) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.05)  # long enough for every thread to queue behind the first
        return httpx.Response(200, json={"restrictedDataToken": "Atz.sprdt|one", "expiresIn": 3600})

    env.rdt.mock(side_effect=slow)
    gate = threading.Barrier(8)
    got: list[str | None] = []
    resources = (RestrictedResource("GET", ORDERS_PATH, ORDER_PII),)

    def call() -> None:
        gate.wait()
        got.append(env.connector.client.rdt.token(resources))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert env.rdt.call_count == 1
    assert got == ["Atz.sprdt|one"] * 8


def test_get_order_asks_an_rdt_for_that_orders_path(env: Env) -> None:
    route = env.router.get(f"{ORDERS}/902-1845936-5435065").mock(
        return_value=httpx.Response(200, json=load("getOrder.200.sandbox-1.json"))
    )
    items_route(env)

    env.connector.get_order("902-1845936-5435065")

    assert json.loads(env.rdt.calls[0].request.content) == {
        "restrictedResources": [
            {
                "method": "GET",
                "path": "/orders/v0/orders/902-1845936-5435065",
                "dataElements": ["buyerInfo", "shippingAddress"],
            }
        ]
    }
    assert sent_token(route) == "Atz.sprdt|rdt-1"


def test_push_fulfillment_reads_the_status_without_an_rdt(env: Env) -> None:
    env.router.get(f"{ORDERS}/921-3175655-0452641").mock(
        return_value=httpx.Response(200, json=load("getOrder.200.sandbox-2.json"))  # Shipped
    )

    env.connector.push_fulfillment(
        "921-3175655-0452641", tracking_number="1Z", carrier="UPS", idempotency_key="ship:1"
    )

    assert env.rdt.call_count == 0


# ------------------------------------------------------------------ no PII role: fallback


def test_rdt_403_falls_back_to_the_lwa_token_and_orders_map_without_address(env: Env) -> None:
    # given an application without a restricted role: the Tokens API answers 403 Unauthorized
    env.rdt.mock(side_effect=None, return_value=httpx.Response(403, json=DENIED))
    orders = env.router.get(ORDERS).mock(return_value=without_pii())
    items_route(env)

    # when
    with capture_logs() as logs:
        (order,) = list(env.connector.fetch_updated_orders(SINCE))

    # then: asked twice (the second time with a fresh LWA token), then getOrders with LWA
    assert env.rdt.call_count == 2
    assert [sent_token(env.rdt, i) for i in range(2)] == ["Atza|token-1", "Atza|token-2"]
    assert sent_token(orders) == "Atza|token-2"
    # the order still maps: public address fields only, no buyer
    address = order.shipping_address
    assert address is not None
    assert (address.name, address.line1, address.line2, address.phone) == (None,) * 4
    assert (address.city, address.region, address.postal_code) == ("Canton", "MI", "48817")
    assert (order.buyer_email, order.buyer_name) == (None, None)
    # one warning, without a token or a buyer's data
    denied = [entry for entry in logs if entry["event"] == "amazon.rdt_denied"]
    assert len(denied) == 1 and denied[0]["log_level"] == "warning"
    text = repr(logs)
    for secret in ("Atza|", "Atz.sprdt|", "Canton", "48817", "user@example.com", "John Doe"):
        assert secret not in text
    done = [entry for entry in logs if entry["event"] == "amazon.poll_done"]
    assert done[0]["restricted_data"] is False


def test_denial_is_remembered_then_asked_again(env: Env) -> None:
    env.rdt.mock(side_effect=None, return_value=httpx.Response(403, json=DENIED))
    orders = env.router.get(ORDERS).mock(
        return_value=httpx.Response(200, json={"payload": {"Orders": []}})
    )

    list(env.connector.fetch_updated_orders(SINCE))
    env.clock.now += dt.timedelta(minutes=14)
    list(env.connector.fetch_updated_orders(SINCE))
    assert env.rdt.call_count == 2  # the first poll only (with its one retry)
    assert "no buyer PII" in env.connector.test_connection()

    # the role was granted meanwhile: after 15 minutes the Tokens API is asked again
    env.rdt.mock(
        side_effect=None,
        return_value=httpx.Response(
            200, json={"restrictedDataToken": "Atz.sprdt|ok", "expiresIn": 3600}
        ),
    )
    env.clock.now += dt.timedelta(minutes=2)
    list(env.connector.fetch_updated_orders(SINCE))

    assert env.rdt.call_count == 3
    assert sent_token(orders) == "Atz.sprdt|ok"
    assert "buyer PII via restricted data token" in env.connector.test_connection()


def test_a_403_cured_by_a_fresh_lwa_token_is_not_a_denial(env: Env) -> None:
    ok = httpx.Response(200, json={"restrictedDataToken": "Atz.sprdt|ok", "expiresIn": 3600})
    env.rdt.mock(side_effect=[httpx.Response(403, json=DENIED), ok])
    orders = env.router.get(ORDERS).mock(
        return_value=httpx.Response(200, json={"payload": {"Orders": []}})
    )

    list(env.connector.fetch_updated_orders(SINCE))

    assert env.lwa.call_count == 2  # the LWA token was exchanged again before the second try
    assert sent_token(orders) == "Atz.sprdt|ok"
    assert not env.connector.client.rdt.denied


# ------------------------------------------------------------------ other failures


def test_get_orders_403_with_an_rdt_forgets_it(env: Env) -> None:
    orders = env.router.get(ORDERS).mock(
        side_effect=[
            httpx.Response(403, json=DENIED),
            httpx.Response(200, json={"payload": {"Orders": []}}),
        ]
    )

    with pytest.raises(Exception, match="HTTP 403"):
        list(env.connector.fetch_updated_orders(SINCE))
    list(env.connector.fetch_updated_orders(SINCE))

    assert [sent_token(orders, i) for i in range(2)] == ["Atz.sprdt|rdt-1", "Atz.sprdt|rdt-2"]


def test_tokens_api_5xx_fails_the_poll_instead_of_importing_orders_without_pii(env: Env) -> None:
    env.rdt.mock(side_effect=None, return_value=httpx.Response(503))
    orders = env.router.get(ORDERS).mock(return_value=with_pii())

    with pytest.raises(ServerError):
        list(env.connector.fetch_updated_orders(SINCE))

    assert env.rdt.call_count == 3 and orders.call_count == 0
    assert not env.connector.client.rdt.denied


@pytest.mark.parametrize(
    "body",
    [
        {"expiresIn": 3600},
        {"restrictedDataToken": "Atz.sprdt|x", "expiresIn": 0},
        {"restrictedDataToken": "Atz.sprdt|x", "expiresIn": True},
        {"restrictedDataToken": "", "expiresIn": 3600},
        ["not", "an", "object"],
    ],
)
def test_malformed_rdt_answers_are_payload_errors(env: Env, body: Any) -> None:
    env.rdt.mock(side_effect=None, return_value=httpx.Response(200, json=body))
    env.router.get(ORDERS).mock(return_value=with_pii())

    with pytest.raises(PayloadError):
        list(env.connector.fetch_updated_orders(SINCE))


def test_expires_in_as_a_string_is_accepted(env: Env) -> None:
    env.rdt.mock(
        side_effect=None,
        return_value=httpx.Response(
            200, json={"restrictedDataToken": "Atz.sprdt|s", "expiresIn": "3600"}
        ),
    )
    orders = env.router.get(ORDERS).mock(
        return_value=httpx.Response(200, json={"payload": {"Orders": []}})
    )

    list(env.connector.fetch_updated_orders(SINCE))

    assert sent_token(orders) == "Atz.sprdt|s"


def test_the_tokens_api_has_its_own_documented_bucket(env: Env) -> None:
    from integrations.ratelimit import Bucket

    assert env.connector.client.rate_limits["createRestrictedDataToken"] == Bucket(1.0, 10)
