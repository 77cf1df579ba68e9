"""The GraphQL ``Order`` mapper, on nodes the simulator derives from the official fixtures."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from domain.errors import PayloadError
from domain.states import OrderState
from integrations.shopify.mapper import gid_to_id, map_graphql_order, map_order
from sandbox.shopify import ShopifySimulator, graphql_order, graphql_refund
from tests.unit.integrations.shopify.fixtures import all_orders, order

FIXTURES = all_orders()


@pytest.mark.parametrize(("label", "payload"), FIXTURES, ids=[label for label, _ in FIXTURES])
def test_graphql_and_rest_mappers_agree_on_every_fixture(
    label: str, payload: dict[str, Any]
) -> None:
    # given: the same order as the REST JSON and as the GraphQL node, with its refunds as the
    # client adds them (OrderRefunds)
    node = graphql_order(payload)
    node["refunds"] = [graphql_refund(r, payload["currency"]) for r in payload.get("refunds") or []]

    # when
    from_graphql = map_graphql_order(node, "shop-1")
    from_rest = map_order(payload, "shop-1")

    # then: everything but the raw payload is the same, refunds included (one refund whether a
    # webhook or a poll brings it)
    assert from_graphql.model_dump(exclude={"raw"}) == from_rest.model_dump(exclude={"raw"})
    assert from_graphql.raw == node


def test_reads_money_bags_with_graphql_decimal_text() -> None:
    node = graphql_order(order("rest-2026-07/order.get.json"))
    assert node["totalPriceSet"]["shopMoney"]["amount"] == "598.94"
    assert node["lineItems"]["nodes"][0]["originalUnitPriceSet"]["shopMoney"]["amount"] == "199.0"

    result = map_graphql_order(node, "a")

    assert result.total == Decimal("598.94")
    assert [line.unit_price for line in result.lines] == [Decimal("199.00")] * 3
    assert [line.external_id for line in result.lines] == ["466157049", "518995019", "703073504"]
    assert result.fulfillment_status == "unfulfilled"
    assert result.financial_status == "partially_refunded"


def test_a_cancelled_graphql_order_maps_to_cancelled() -> None:
    node = graphql_order(order("rest-2026-07/order.get.json"))
    node["cancelledAt"] = "2025-07-03T13:15:00Z"
    node["cancelReason"] = "CUSTOMER"

    result = map_graphql_order(node, "a")

    assert result.status is OrderState.CANCELLED
    assert result.marketplace_status == "cancelled"


def test_simulated_orders_add_up() -> None:
    # given
    sim = ShopifySimulator(seed=7)
    ids = sim.add_orders(40)

    for external_id in ids:
        # when
        result = map_graphql_order(graphql_order(sim.orders[external_id]), "a")

        # then
        assert result.external_id == external_id
        assert int(external_id) > 2**32
        assert result.subtotal == sum((line.total for line in result.lines), Decimal(0))
        assert result.total == result.subtotal + result.shipping_total + result.tax_total
        assert result.tax_total == sum((line.tax for line in result.lines), Decimal(0))
        assert result.discount_total == sum((line.discount for line in result.lines), Decimal(0))
        assert result.lines and all(line.sku for line in result.lines)


def test_an_incomplete_line_item_page_is_refused() -> None:
    node = graphql_order(order("rest-2026-07/order.get.json"))
    node["lineItems"]["pageInfo"]["hasNextPage"] = True

    with pytest.raises(PayloadError, match="lineItems"):
        map_graphql_order(node, "a")


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda n: n.pop("totalPriceSet"), "totalPriceSet"),
        (
            lambda n: n["totalTaxSet"]["shopMoney"].update(amount="x"),
            "totalTaxSet.shopMoney.amount",
        ),
        (lambda n: n.update(updatedAt=None), "updatedAt"),
        (
            lambda n: n["lineItems"]["nodes"][2].update(quantity="many"),
            "lineItems.nodes.2.quantity",
        ),
        (lambda n: n.update(currencyCode="US"), "canonical.currency"),
        (  # the GID is long enough for the payload, its id too long for ours (64): which line
            lambda n: n["lineItems"]["nodes"][1].update(id="gid://shopify/LineItem/" + "9" * 65),
            "canonical.lines.1.external_id (too_long)",
        ),
        (
            lambda n: n["shippingAddress"].update(city=["Ottawa"]),
            "shippingAddress.city",
        ),
    ],
)
def test_a_bad_node_raises_payload_error_naming_the_field(mutate: Any, path: str) -> None:
    node = copy.deepcopy(graphql_order(order("rest-2026-07/order.get.json")))
    mutate(node)

    with pytest.raises(PayloadError) as caught:
        map_graphql_order(node, "a")

    assert path in str(caught.value)
    assert "Norman" not in str(caught.value)


def test_gid_to_id() -> None:
    assert gid_to_id("gid://shopify/Order/450789469") == "450789469"
    assert gid_to_id("gid://shopify/LineItem/641254555689?foo=1") == "641254555689"
    with pytest.raises(PayloadError):
        gid_to_id("gid://shopify/Order/")
