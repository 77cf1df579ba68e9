"""Our hand-built eBay order examples are valid against eBay's own published OAS3 schemas."""

from __future__ import annotations

import pytest

from tests.unit.integrations.ebay.conftest import EXAMPLES, load
from tests.unit.integrations.ebay.spec_schema import SPEC_PATH, schema_errors, spec


def test_the_official_spec_is_the_vendored_v1_20_7() -> None:
    assert SPEC_PATH.is_file()
    assert spec()["info"]["version"] == "v1.20.7"


def test_there_are_examples_to_validate() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_order_matches_the_spec_order_schema(name: str) -> None:
    assert schema_errors(load(name), "Order") == []


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_has_the_fields_the_spec_says_are_always_returned(name: str) -> None:
    order = load(name)
    # "This field is always returned" (orderId, cancelStatus.cancelState); the rest we rely on
    assert order["orderId"]
    assert order["cancelStatus"]["cancelState"]
    assert order["lastModifiedDate"].endswith("Z")
    assert order["pricingSummary"]["total"]["currency"]


def test_the_validator_rejects_wrong_types_and_invented_fields() -> None:
    # given an order with a number id, a string quantity and a field eBay never sends
    bad = {"orderId": 1, "lineItems": [{"quantity": "2", "colour": "red"}]}
    # when / then
    assert schema_errors(bad, "Order") == [
        "Order.orderId: expected string, got int",
        "Order.lineItems[0].quantity: expected integer, got str",
        "Order.lineItems[0].colour: not in the schema",
    ]


def test_a_page_of_examples_matches_the_search_collection_schema() -> None:
    page = {
        "href": "https://api.ebay.com/sell/fulfillment/v1/order?limit=2&offset=0",
        "limit": 2,
        "offset": 0,
        "total": 3,
        "next": "https://api.ebay.com/sell/fulfillment/v1/order?limit=2&offset=2",
        "orders": [load(name) for name in EXAMPLES[:2]],
    }
    assert schema_errors(page, "OrderSearchPagedCollection") == []
