"""The Amazon mapper on every official order fixture (Orders v0 and 2026-01-01)."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from domain.errors import PayloadError
from domain.states import OrderState
from integrations.amazon.mapper import map_order
from tests.unit.integrations.amazon.fixtures import load, new_orders, order_items, v0_orders

V0 = v0_orders()
NEW = new_orders()


def test_the_fixture_set_is_the_one_we_expect() -> None:
    # given the official files: 5 v0 orders (4 getOrders + 3 getOrder) and 8 2026 orders
    assert len(V0) == 8
    assert len(NEW) == 8


@pytest.mark.parametrize(("label", "order"), V0, ids=[label for label, _ in V0])
def test_every_v0_order_fixture_maps(label: str, order: dict[str, Any]) -> None:
    mapped = map_order(order, "acct")

    assert mapped.channel == "amazon"
    assert mapped.external_id == order["AmazonOrderId"]
    assert mapped.marketplace_status == order["OrderStatus"]
    assert mapped.payment_collected_by_marketplace is True
    assert mapped.updated_at.tzinfo is not None
    assert mapped.updated_at.utcoffset() == dt.timedelta(0)
    assert isinstance(mapped.total, Decimal)
    if "OrderTotal" in order:
        assert mapped.total == Decimal(order["OrderTotal"]["Amount"])
        assert mapped.currency == order["OrderTotal"]["CurrencyCode"]
    assert mapped.raw == order


@pytest.mark.parametrize(("label", "order"), NEW, ids=[label for label, _ in NEW])
def test_every_2026_order_fixture_maps_with_its_embedded_items(
    label: str, order: dict[str, Any]
) -> None:
    mapped = map_order(order, "acct")

    assert mapped.external_id == order["orderId"]
    assert [line.external_id for line in mapped.lines] == [
        item["orderItemId"] for item in order["orderItems"]
    ]
    assert [line.sku for line in mapped.lines] == [
        item["product"].get("sellerSku") for item in order["orderItems"]
    ]
    assert mapped.total == Decimal(order["proceeds"]["grandTotal"]["amount"])
    assert mapped.currency == order["proceeds"]["grandTotal"]["currencyCode"]
    assert mapped.payment_collected_by_marketplace is True
    assert mapped.updated_at.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("envelope_file", "key"),
    [("getOrder.200.sandbox-1.json", "payload"), ("2026-01-01.getOrder.200.example.json", "order")],
)
def test_single_order_envelopes_are_unwrapped(envelope_file: str, key: str) -> None:
    body = load(envelope_file)

    assert map_order(body, "acct") == map_order(body[key], "acct")


def test_v0_order_with_its_items_keeps_leading_zero_ids_and_derives_money() -> None:
    # given the sandbox getOrder and the getOrderItems answer for the same order
    order = load("getOrder.200.sandbox-1.json")["payload"]
    items = order_items("getOrderItems.200.sandbox-1.json")

    mapped = map_order({**order, "OrderItems": items}, "acct")

    (line,) = mapped.lines
    assert line.external_id == "05015851154158"  # not 5015851154158
    assert line.sku == "NABetaASINB00551Q3CS"
    assert (line.quantity, line.unit_price, line.tax, line.total) == (
        1,
        Decimal("10.00"),
        Decimal("1.01"),
        Decimal("10.00"),
    )
    assert mapped.subtotal == Decimal("10.00")
    assert mapped.tax_total == Decimal("1.01")
    assert mapped.total == Decimal("11.01")
    assert mapped.status is OrderState.NEW
    assert mapped.fulfillment_status == "unfulfilled"
    # the sandbox's 1970 dates are still aware UTC timestamps
    assert mapped.created_at == dt.datetime(1970, 1, 19, 3, 58, 30, tzinfo=dt.UTC)


def test_pending_order_without_order_total_derives_the_total_from_its_items() -> None:
    # given a Pending order (no OrderTotal) and two JPY items, one of quantity 2
    order = load("getOrder.200.example.json")["payload"]
    assert "OrderTotal" not in order
    items = order_items("getOrderItems.200.example.json")

    mapped = map_order({**order, "OrderItems": items}, "acct")

    assert mapped.currency == "JPY"
    assert mapped.financial_status == "pending"
    assert mapped.subtotal == Decimal("43.94")  # 25.99 + 17.95
    assert mapped.shipping_total == Decimal("1.26")
    assert mapped.total == Decimal("45.20")
    # ItemPrice is price x quantity: the unit price is derived exactly
    assert mapped.lines[1].quantity == 2
    assert mapped.lines[1].unit_price == Decimal("8.975")
    assert mapped.lines[1].total == Decimal("17.95")
    assert mapped.buyer_email == "user@example.com"
    assert mapped.shipping_address is not None
    assert mapped.shipping_address.postal_code == "48817"


def test_pending_order_without_items_or_total_is_zero_in_the_marketplace_currency() -> None:
    order = load("getOrders.200.example.json")["payload"]["Orders"][0]

    mapped = map_order(order, "acct")

    assert (mapped.total, mapped.currency, mapped.status) == (Decimal(0), "USD", OrderState.NEW)
    assert mapped.lines == []


def test_string_booleans_in_items_are_accepted() -> None:
    items = order_items("getOrderItems.200.sandbox-1.json")
    assert items[0]["IsGift"] == "false"
    order = load("getOrder.200.sandbox-1.json")["payload"]

    assert map_order({**order, "OrderItems": items}, "acct").lines[0].quantity == 1


@pytest.mark.parametrize(
    ("status", "state", "fulfillment"),
    [
        ("Pending", OrderState.NEW, "unfulfilled"),
        ("Unshipped", OrderState.NEW, "unfulfilled"),
        ("PartiallyShipped", OrderState.NEW, "partial"),
        ("Shipped", OrderState.NEW, "fulfilled"),
        ("Canceled", OrderState.CANCELLED, None),
    ],
)
def test_v0_status_mapping(status: str, state: OrderState, fulfillment: str | None) -> None:
    order = load("getOrder.200.sandbox-1.json")["payload"] | {"OrderStatus": status}

    mapped = map_order(order, "acct")

    assert (mapped.status, mapped.fulfillment_status) == (state, fulfillment)
    assert (mapped.cancelled_at is not None) is (state is OrderState.CANCELLED)


def test_2026_cancelled_order_maps_to_cancelled() -> None:
    order = load("2026-01-01.getOrder.200.sandbox-3.json")["order"]
    order["fulfillment"]["fulfillmentStatus"] = "CANCELLED"

    mapped = map_order(order, "acct")

    assert mapped.status is OrderState.CANCELLED
    assert mapped.cancelled_at == mapped.updated_at


def test_2026_order_uses_breakdowns_and_seller_alias() -> None:
    order = load("2026-01-01.getOrder.200.example.json")["order"]

    mapped = map_order(order, "acct")

    assert mapped.external_number == "UK-MERCHANT-ORDER-2024-001"
    assert (mapped.subtotal, mapped.shipping_total, mapped.tax_total, mapped.total) == (
        Decimal("89.97"),
        Decimal("10.00"),
        Decimal("4.00"),
        Decimal("103.97"),
    )
    (line,) = mapped.lines
    assert (line.quantity, line.unit_price, line.total) == (3, Decimal("29.99"), Decimal("89.97"))
    assert mapped.fulfillment_status == "fulfilled"
    assert mapped.shipping_address is not None
    assert mapped.shipping_address.line2 == "Unit 4B"  # the empty addressLine3 is dropped
    assert mapped.buyer_name == "James Wilson"


def test_2026_order_without_buyer_and_recipient_blocks_maps_without_pii() -> None:
    order = load("2026-01-01.searchOrders.200.sandbox-1.json")["orders"][0]
    del order["buyer"], order["recipient"]

    mapped = map_order(order, "acct")

    assert (mapped.buyer_name, mapped.buyer_email, mapped.shipping_address) == (None, None, None)


def test_epoch_string_timestamps_are_read_as_utc() -> None:
    order = load("getOrder.200.sandbox-1.json")["payload"]
    order["LastUpdateDate"] = "1.569521782042E9"  # the sandbox's CreatedBefore format

    mapped = map_order(order, "acct")

    assert mapped.updated_at == dt.datetime.fromtimestamp(1569521782.042, dt.UTC)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o.pop("AmazonOrderId"), "AmazonOrderId"),
        (lambda o: o.update(LastUpdateDate="yesterday"), "LastUpdateDate"),
        (lambda o: o.update(LastUpdateDate="2024-01-01T00:00:00"), "LastUpdateDate"),
        (lambda o: o["OrderTotal"].update(Amount="eleven"), "OrderTotal.Amount"),
        (lambda o: o.update(AmazonOrderId=902), "AmazonOrderId"),
        (lambda o: o.update(OrderItems=[{"OrderItemId": "1"}]), "OrderItems.0.QuantityOrdered"),
    ],
)
def test_unmappable_v0_payloads_raise_payload_error_naming_the_field(
    mutate: Any, field: str
) -> None:
    order = load("getOrder.200.sandbox-1.json")["payload"]
    order["ShippingAddress"] = {"Name": "Secret Person", "PostalCode": "SECRET-ZIP"}
    mutate(order)

    with pytest.raises(PayloadError) as caught:
        map_order(order, "acct")

    assert field in str(caught.value)
    assert "Secret" not in str(caught.value) and "eleven" not in str(caught.value)


def test_item_in_another_currency_than_the_order_total_is_a_payload_error() -> None:
    order = load("getOrder.200.sandbox-1.json")["payload"]  # USD
    items = order_items("getOrderItems.200.example.json")  # JPY

    with pytest.raises(PayloadError, match=r"OrderItems\.0\.ItemPrice"):
        map_order({**order, "OrderItems": items}, "acct")


@pytest.mark.parametrize("payload", [[], "order", None, {"order": "x"}])
def test_non_object_payloads_raise_payload_error(payload: Any) -> None:
    with pytest.raises(PayloadError):
        map_order(payload, "acct")


def test_v0_restricted_address_and_buyer_map_in_full() -> None:
    # given an order as getOrders answers it to a Restricted Data Token
    order = load("getOrders.200.sandbox-1.json")["payload"]["Orders"][0]
    order["ShippingAddress"] = {
        "Name": "Jane Roe",
        "CompanyName": "Roe LLC",
        "AddressLine1": "1200 Maple Ave",
        "AddressLine2": "Apt 4B",
        "AddressLine3": "Building C",
        "City": "Seattle",
        "StateOrRegion": "WA",
        "PostalCode": "98121-2778",
        "CountryCode": "US",
        "Phone": "+1 206-555-0142",
        "AddressType": "Residential",
    }
    order["BuyerInfo"] = {"BuyerEmail": "abc123@marketplace.amazon.com", "BuyerName": "Jane Roe"}

    mapped = map_order(order, "acct")

    address = mapped.shipping_address
    assert address is not None
    assert address.model_dump() == {
        "name": "Jane Roe",
        "company": "Roe LLC",
        "line1": "1200 Maple Ave",
        "line2": "Apt 4B, Building C",
        "city": "Seattle",
        "region": "WA",
        "postal_code": "98121-2778",
        "country_code": "US",
        "phone": "+1 206-555-0142",
    }
    assert (mapped.buyer_name, mapped.buyer_email) == ("Jane Roe", "abc123@marketplace.amazon.com")


def test_v0_order_without_rdt_maps_the_public_address_fields_only() -> None:
    # given what the plain LWA token gets: no name/street/phone, an empty BuyerInfo
    order = load("getOrders.200.sandbox-1.json")["payload"]["Orders"][0]
    order["ShippingAddress"] = {
        "City": "Seattle",
        "StateOrRegion": "WA",
        "PostalCode": "98121",
        "CountryCode": "US",
    }
    order["BuyerInfo"] = {}

    mapped = map_order(order, "acct")

    address = mapped.shipping_address
    assert address is not None
    assert (address.name, address.line1, address.line2, address.phone) == (None,) * 4
    assert (address.city, address.region, address.postal_code) == ("Seattle", "WA", "98121")
    assert (mapped.buyer_name, mapped.buyer_email) == (None, None)


# ---------------------------------------------------------------- fulfilled by Amazon (FBA)


def test_v0_afn_order_is_fulfilled_by_the_marketplace() -> None:
    # given the official sandbox getOrder of an order Amazon fulfils (FulfillmentChannel AFN)
    order = load("getOrder.200.sandbox-2.json")["payload"]
    assert order["FulfillmentChannel"] == "AFN"

    mapped = map_order(order, "acct")

    assert mapped.fulfilled_by_marketplace is True
    assert mapped.payment_collected_by_marketplace is True


def test_2026_fulfilled_by_amazon_order_is_fulfilled_by_the_marketplace() -> None:
    # given the official sandbox searchOrders answer: one order with fulfilledBy AMAZON
    (order,) = load("2026-01-01.searchOrders.200.sandbox-1.json")["orders"]
    assert order["fulfillment"]["fulfilledBy"] == "AMAZON"

    mapped = map_order(order, "acct")

    assert mapped.fulfilled_by_marketplace is True
    assert [line.sku for line in mapped.lines] == [
        "ECHO-DOT-4-JP-CHARCOAL",
        "FIRE-TV-4K-MAX-JP",
    ]


@pytest.mark.parametrize(("label", "order"), V0 + NEW, ids=[label for label, _ in V0 + NEW])
def test_only_afn_and_fulfilled_by_amazon_orders_are_fulfilled_by_the_marketplace(
    label: str, order: dict[str, Any]
) -> None:
    # every official fixture: MFN / MERCHANT orders stay ours to ship
    fulfilment = order.get("FulfillmentChannel") or order.get("fulfillment", {}).get("fulfilledBy")
    assert fulfilment in {"AFN", "MFN", "AMAZON", "MERCHANT"}

    mapped = map_order(order, "acct")

    assert mapped.fulfilled_by_marketplace is (fulfilment in {"AFN", "AMAZON"})


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda o: o.pop("FulfillmentChannel"), False),  # optional in the v0 schema
        (lambda o: o.update(FulfillmentChannel="afn"), True),
        (lambda o: o.update(FulfillmentChannel="MFN"), False),
    ],
    ids=["v0-missing", "v0-lowercase-afn", "v0-mfn"],
)
def test_v0_fulfillment_channel_variants(mutate: Any, expected: bool) -> None:
    order = load("getOrder.200.sandbox-2.json")["payload"]
    mutate(order)

    assert map_order(order, "acct").fulfilled_by_marketplace is expected


def test_2026_order_without_fulfillment_block_or_fulfilled_by_is_ours_to_ship() -> None:
    (order,) = load("2026-01-01.searchOrders.200.sandbox-1.json")["orders"]
    without_by = copy.deepcopy(order)
    del without_by["fulfillment"]["fulfilledBy"]
    del order["fulfillment"]

    assert map_order(order, "acct").fulfilled_by_marketplace is False
    assert map_order(without_by, "acct").fulfilled_by_marketplace is False
