"""The REST / webhook mapper on every official Shopify order fixture."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from domain.errors import PayloadError
from domain.states import OrderState
from integrations.shopify.mapper import map_order
from tests.unit.integrations.shopify.fixtures import all_orders, order

D = Decimal
Line = tuple[str | None, int, D, D, D, D]
Expected = tuple[D, D, D, D, D, list[Line]]

# label → (total, subtotal, tax, shipping, discount, [(sku, qty, unit, tax, discount, total)])
EXPECTED: dict[str, Expected] = {
    "order.json": (
        D("409.94"),
        D("398.00"),
        D("11.94"),
        D("0.00"),
        D("0.00"),
        [
            ("IPOD2008GREEN", 1, D("199.00"), D(0), D(0), D("199.00")),
            ("IPOD2008RED", 1, D("199.00"), D(0), D(0), D("199.00")),
            ("IPOD2008BLACK", 1, D("199.00"), D(0), D(0), D("199.00")),
        ],
    ),
    "ruby-order.json": (
        D("409.94"),
        D("398.00"),
        D("11.94"),
        D("0.00"),
        D("0.00"),
        [
            ("IPOD2008GREEN", 1, D("199.00"), D(0), D(0), D("199.00")),
            ("IPOD2008RED", 1, D("199.00"), D(0), D(0), D("199.00")),
            ("IPOD2008BLACK", 1, D("199.00"), D(0), D(0), D("199.00")),
        ],
    ),
    "ruby-order_with_properties.json": (
        D("409.94"),
        D("398.00"),
        D("11.94"),
        D("0.00"),
        D("0.00"),
        [
            (None, 1, D("45.00"), D(0), D(0), D("45.00")),  # "sku": "" means no SKU
            (None, 1, D("24.00"), D(0), D(0), D("24.00")),
        ],
    ),
    "orders.json[0]": (D("598.94"), D("597.00"), D("11.94"), D("0.00"), D("10.00"), []),
}
_MODERN: Expected = (
    D("598.94"),
    D("597.00"),
    D("11.94"),
    D("0.00"),
    D("10.00"),
    [
        ("IPOD2008GREEN", 1, D("199.00"), D("3.98"), D("3.34"), D("195.66")),
        ("IPOD2008RED", 1, D("199.00"), D("3.98"), D("3.33"), D("195.67")),
        ("IPOD2008BLACK", 1, D("199.00"), D("3.98"), D("3.33"), D("195.67")),
    ],
)
for _label in (
    "rest-2026-07/order.get.json",
    "rest-2026-07/order.close.json",
    "rest-2026-07/orders.list.json[0]",
):
    EXPECTED[_label] = _MODERN

FIXTURES = all_orders()


def test_every_fixture_order_has_an_expectation() -> None:
    assert sorted(label for label, _ in FIXTURES) == sorted(EXPECTED)


@pytest.mark.parametrize(("label", "payload"), FIXTURES, ids=[label for label, _ in FIXTURES])
def test_maps_totals_lines_tax_shipping_and_discounts(label: str, payload: dict[str, Any]) -> None:
    # given
    total, subtotal, tax, shipping, discount, lines = EXPECTED[label]

    # when
    result = map_order(payload, "shop-1")

    # then
    assert result.channel == "shopify"
    assert result.account == "shop-1"
    assert result.external_id == "450789469"
    assert result.external_number == "#1001"
    assert result.currency == "USD"
    assert (result.total, result.subtotal, result.tax_total) == (total, subtotal, tax)
    assert (result.shipping_total, result.discount_total) == (shipping, discount)
    got = [
        (ln.sku, ln.quantity, ln.unit_price, ln.tax, ln.discount, ln.total) for ln in result.lines
    ]
    assert got == lines
    assert all(isinstance(v, Decimal) for v in (result.total, result.subtotal, result.tax_total))
    assert result.updated_at.tzinfo is dt.UTC
    assert result.raw == payload
    assert result.status is OrderState.NEW  # none of the official samples is cancelled


def test_keeps_ids_above_2_to_the_32_as_strings() -> None:
    result = map_order(order("ruby-order_with_properties.json"), "a")

    assert [line.external_id for line in result.lines] == ["466157049", "641254555689"]


def test_converts_local_offsets_to_utc() -> None:
    result = map_order(order("rest-2026-07/order.get.json"), "a")

    assert result.updated_at == dt.datetime(2008, 1, 10, 16, 0, tzinfo=dt.UTC)
    assert result.created_at == dt.datetime(2008, 1, 10, 16, 0, tzinfo=dt.UTC)


def test_reads_statuses_buyer_and_address() -> None:
    result = map_order(order("rest-2026-07/order.get.json"), "a")

    assert result.financial_status == "partially_refunded"
    assert result.fulfillment_status == "unfulfilled"  # null in the payload
    assert result.marketplace_status == "open"
    assert result.payment_collected_by_marketplace is True
    assert result.buyer_name == "Bob Norman"
    assert result.buyer_email == "bob.norman@mail.example.com"
    assert result.shipping_address is not None
    assert (result.shipping_address.city, result.shipping_address.region) == ("Louisville", "KY")
    assert result.shipping_address.line2 is None  # "" in the payload


def test_an_authorized_order_still_needs_capturing() -> None:
    result = map_order(order("order.json"), "a")

    assert result.financial_status == "authorized"
    assert result.payment_collected_by_marketplace is False


def test_a_closed_order_is_not_cancelled() -> None:
    result = map_order(order("rest-2026-07/order.close.json"), "a")

    assert result.status is OrderState.NEW
    assert result.marketplace_status == "closed"
    assert result.updated_at == dt.datetime(2025, 7, 2, 16, 30, 51, tzinfo=dt.UTC)


@pytest.mark.parametrize(("label", "payload"), FIXTURES, ids=[label for label, _ in FIXTURES])
def test_a_cancelled_order_maps_to_cancelled(label: str, payload: dict[str, Any]) -> None:
    # given: the fixture as Shopify sends it after orderCancel (orders/cancelled body)
    cancelled = copy.deepcopy(payload)
    cancelled["cancelled_at"] = "2025-07-03T09:15:00-04:00"
    cancelled["cancel_reason"] = "customer"

    # when
    result = map_order(cancelled, "a")

    # then
    assert result.status is OrderState.CANCELLED
    assert result.marketplace_status == "cancelled"
    assert result.cancelled_at == dt.datetime(2025, 7, 3, 13, 15, tzinfo=dt.UTC)
    assert result.total == EXPECTED[label][0]


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda o: o.pop("total_price"), "total_price"),
        (lambda o: o.update(currency=None), "currency"),
        (lambda o: o.update(updated_at="yesterday"), "updated_at"),
        (lambda o: o["line_items"][1].update(quantity=-1), "line_items.1.quantity"),
        (lambda o: o["line_items"][0].update(price="abc"), "line_items.0.price"),
        (lambda o: o.update(id=True), "id"),
        (lambda o: o.update(currency="US"), "canonical.currency"),
    ],
)
def test_a_bad_payload_raises_payload_error_naming_the_field(mutate: Any, path: str) -> None:
    # given
    payload = copy.deepcopy(order("rest-2026-07/order.get.json"))
    mutate(payload)

    # when
    with pytest.raises(PayloadError) as caught:
        map_order(payload, "a")

    # then: the path is named, the customer's data is not
    assert path in str(caught.value)
    assert "Bob" not in str(caught.value) and "Chestnut" not in str(caught.value)


def test_a_naive_timestamp_is_refused() -> None:
    payload = copy.deepcopy(order("order.json"))
    payload["updated_at"] = "2008-01-10T11:00:00"

    with pytest.raises(PayloadError, match="updated_at"):
        map_order(payload, "a")


def test_a_non_object_payload_is_refused() -> None:
    with pytest.raises(PayloadError):
        map_order(["not", "an", "order"], "a")  # type: ignore[arg-type]
