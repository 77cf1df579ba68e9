"""eBay Order → CanonicalOrder, on our spec-validated examples (tests/fixtures/ebay)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from domain.errors import PayloadError
from domain.states import OrderState
from integrations.ebay.mapper import map_order
from tests.unit.integrations.ebay.conftest import EXAMPLES, load


def test_maps_a_paid_us_order_with_a_promotion_and_collect_and_remit_tax(
    us_order: dict[str, Any],
) -> None:
    # when
    order = map_order(us_order, "ebay-us")
    # then
    assert order.channel == "ebay"
    assert order.account == "ebay-us"
    assert order.external_id == "27-13905-71642"
    assert order.external_number == "1042"
    assert order.status is OrderState.NEW
    assert order.marketplace_status == "NOT_STARTED"
    assert order.fulfillment_status == "unfulfilled"
    assert order.financial_status == "paid"
    assert order.payment_collected_by_marketplace is True
    assert order.currency == "USD"
    assert order.subtotal == Decimal("64.48")
    assert order.discount_total == Decimal("4.00")
    assert order.shipping_total == Decimal("5.99")
    assert order.tax_total == Decimal("4.84")
    assert order.total == Decimal("71.31")
    assert order.subtotal - order.discount_total + order.shipping_total + order.tax_total == (
        order.total
    )
    assert order.created_at == dt.datetime(2026, 1, 1, 9, 14, 27, 512000, tzinfo=dt.UTC)
    assert order.updated_at == dt.datetime(2026, 1, 1, 9, 15, 2, 104000, tzinfo=dt.UTC)
    assert order.cancelled_at is None
    assert order.raw == us_order


def test_maps_lines_with_unit_price_discount_tax_and_goods_total(us_order: dict[str, Any]) -> None:
    lines = map_order(us_order, "a").lines
    assert [line.external_id for line in lines] == ["10071239283201", "10071239283202"]
    shirt, tote = lines
    assert shirt.sku == "SKU-RED-S"
    assert shirt.title == "Organic Cotton T-Shirt"
    assert shirt.quantity == 2
    assert shirt.unit_price == Decimal("19.99")
    assert shirt.discount == Decimal("4.00")
    assert shirt.tax == Decimal("2.88")
    assert shirt.total == Decimal("35.98")  # discountedLineItemCost; eBay's total adds delivery+tax
    assert (tote.unit_price, tote.discount, tote.tax, tote.total) == (
        Decimal("24.50"),
        Decimal(0),
        Decimal("1.96"),
        Decimal("24.50"),
    )


def test_maps_the_ship_to_address_and_buyer(us_order: dict[str, Any]) -> None:
    order = map_order(us_order, "a")
    address = order.shipping_address
    assert address is not None
    assert address.name == "Jane Doe"
    assert (address.line1, address.line2) == ("2145 Hamilton Ave", "Apt 4")
    assert (address.city, address.region, address.postal_code, address.country_code) == (
        "San Jose",
        "CA",
        "95125",
        "US",
    )
    assert address.phone == "4085550100"
    assert order.buyer_name == "Jane Doe"
    assert order.buyer_email == "jane.doe@example.com"


def test_a_fulfilled_order_is_new_to_us_but_marked_fulfilled() -> None:
    order = map_order(load("order.gb_fulfilled.json"), "ebay-uk")
    assert order.status is OrderState.NEW
    assert order.fulfillment_status == "fulfilled"
    assert order.marketplace_status == "FULFILLED"
    assert order.currency == "GBP"
    assert order.buyer_name == "tom.h-1984"  # only the username is left after 14 days
    assert order.buyer_email is None
    assert order.shipping_address is not None
    assert order.shipping_address.company == "Harris & Sons Ltd"
    assert order.shipping_address.region == "West Yorkshire"  # county when no state
    (line,) = order.lines
    assert (line.quantity, line.unit_price, line.total) == (3, Decimal("12.00"), Decimal("36.00"))
    assert order.tax_total == Decimal(0)
    assert order.external_number is None


def test_a_cancelled_order_is_cancelled_with_its_date_and_refund_status() -> None:
    order = map_order(load("order.de_cancelled.json"), "ebay-de")
    assert order.status is OrderState.CANCELLED
    assert order.marketplace_status == "CANCELED"
    assert order.cancelled_at == dt.datetime(2026, 1, 1, 7, 3, 18, 220000, tzinfo=dt.UTC)
    assert order.financial_status == "fully_refunded"
    assert order.shipping_total == Decimal("0.00")  # 4.90 delivery - 4.90 delivery discount
    assert order.total == Decimal("19.90")
    assert order.lines[0].sku is None  # auction line listed without SKU
    assert order.buyer_email == "katrin.mueller@example.de"


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_maps_with_totals_that_add_up(name: str) -> None:
    order = map_order(load(name), "a")
    assert order.subtotal - order.discount_total + order.shipping_total + order.tax_total == (
        order.total
    )
    assert sum((line.total for line in order.lines), Decimal(0)) == (
        order.subtotal - order.discount_total
    )


def test_a_cancel_in_progress_is_not_yet_a_cancellation(us_order: dict[str, Any]) -> None:
    us_order["cancelStatus"]["cancelState"] = "IN_PROGRESS"
    assert map_order(us_order, "a").status is OrderState.NEW


def test_a_cancelled_order_without_a_date_uses_its_last_modification(
    us_order: dict[str, Any],
) -> None:
    us_order["cancelStatus"] = {"cancelState": "CANCELED", "cancelRequests": []}
    order = map_order(us_order, "a")
    assert order.cancelled_at == order.updated_at


def test_amounts_sent_as_json_numbers_stay_exact_decimals(us_order: dict[str, Any]) -> None:
    us_order["pricingSummary"]["total"]["value"] = 71.31
    us_order["lineItems"][1]["lineItemCost"]["value"] = 24.5
    order = map_order(us_order, "a")
    assert order.total == Decimal("71.31")
    assert order.lines[1].unit_price == Decimal("24.5")


def test_an_uneven_unit_price_is_rounded_to_four_places(us_order: dict[str, Any]) -> None:
    line = us_order["lineItems"][1]
    line["lineItemCost"]["value"], line["quantity"] = "10.00", 3
    assert map_order(us_order, "a").lines[1].unit_price == Decimal("3.3333")


def test_without_price_subtotal_the_lines_make_the_subtotal(us_order: dict[str, Any]) -> None:
    del us_order["pricingSummary"]["priceSubtotal"]
    del us_order["pricingSummary"]["priceDiscount"]
    del us_order["pricingSummary"]["tax"]
    order = map_order(us_order, "a")
    assert order.subtotal == Decimal("64.48")
    assert order.discount_total == Decimal("4.00")
    assert order.tax_total == Decimal("4.84")


def _without(payload: dict[str, Any], *path: str | int) -> dict[str, Any]:
    node: Any = payload
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return payload


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (("orderId",), "orderId"),
        (("lastModifiedDate",), "lastModifiedDate"),
        (("pricingSummary", "total"), "pricingSummary.total"),
        (("pricingSummary", "total", "currency"), "pricingSummary.total.currency"),
        (("lineItems", 0, "lineItemId"), "lineItems.0.lineItemId"),
        (("lineItems", 1, "quantity"), "lineItems.1.quantity"),
        (("lineItems", 0, "lineItemCost"), "lineItems.0.lineItemCost"),
    ],
)
def test_a_missing_required_field_is_a_payload_error_naming_its_path(
    us_order: dict[str, Any], path: tuple[str | int, ...], named: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        map_order(_without(us_order, *path), "a")
    assert named in str(caught.value)


def test_payload_errors_never_carry_the_values(us_order: dict[str, Any]) -> None:
    us_order["lineItems"][0]["quantity"] = "two dozen for jane.doe@example.com"
    us_order["lastModifiedDate"] = "secret-not-a-date"
    with pytest.raises(PayloadError) as caught:
        map_order(us_order, "a")
    message = str(caught.value)
    assert "lineItems.0.quantity" in message
    assert "lastModifiedDate" in message
    assert "jane" not in message
    assert "secret" not in message
    assert caught.value.__cause__ is None  # no chained pydantic error holding the input


def test_mixed_currencies_are_refused(us_order: dict[str, Any]) -> None:
    us_order["pricingSummary"]["tax"]["currency"] = "EUR"
    with pytest.raises(PayloadError, match=r"pricingSummary\.tax\.currency"):
        map_order(us_order, "a")


def test_a_timestamp_without_zone_is_refused(us_order: dict[str, Any]) -> None:
    us_order["lastModifiedDate"] = "2026-01-01T09:15:02.104"
    with pytest.raises(PayloadError, match="lastModifiedDate has no time zone"):
        map_order(us_order, "a")


def test_a_currency_the_canonical_model_refuses_is_a_payload_error(
    us_order: dict[str, Any],
) -> None:
    for amount in us_order["pricingSummary"].values():
        amount["currency"] = "U$D"
    for line in us_order["lineItems"]:
        line["lineItemCost"]["currency"] = "U$D"
        line.pop("discountedLineItemCost", None)
        line["taxes"] = []
        line["appliedPromotions"] = []
    with pytest.raises(PayloadError, match="canonical currency"):
        map_order(us_order, "a")


def test_a_non_object_payload_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        map_order([], "a")  # type: ignore[arg-type]


def test_an_amount_that_is_not_a_number_names_its_field(us_order: dict[str, Any]) -> None:
    us_order["lineItems"][1]["taxes"][0]["amount"]["value"] = "1,96 USD"
    with pytest.raises(PayloadError, match=r"lineItems\.1\.taxes\.0\.amount\.value"):
        map_order(us_order, "a")
