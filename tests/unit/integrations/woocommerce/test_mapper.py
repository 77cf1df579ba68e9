"""Every official WooCommerce order sample maps with the right money, lines and status."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from domain.errors import PayloadError
from domain.states import OrderState
from integrations.woocommerce.mapper import map_order
from tests.unit.integrations.woocommerce.official import load


def _all_orders() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for name in (
        "order.create.json",
        "order.retrieve.json",
        "order.update.json",
        "order.delete.json",
    ):
        found.append((name, load(name)))
    for i, order in enumerate(load("orders.list.json")):
        found.append((f"orders.list.json[{i}]", order))
    for part, orders in load("orders.batch.json").items():
        for i, order in enumerate(orders):
            found.append((f"orders.batch.json:{part}[{i}]", order))
    return found


ALL = _all_orders()

# fixture → (id, status, financial, fulfillment, subtotal, tax, shipping, discount, total, skus)
EXPECTED: dict[str, tuple[str, OrderState, str, str, str, str, str, str, str, list[str | None]]]
EXPECTED = {
    "order.retrieve.json": (
        "727",
        OrderState.NEW,
        "paid",
        "unfulfilled",
        "18.00",
        "1.35",
        "10.00",
        "0.00",
        "29.35",
        [None, "Bar3"],
    ),
    "order.update.json": (
        "727",
        OrderState.NEW,
        "paid",
        "fulfilled",
        "18.00",
        "1.35",
        "10.00",
        "0.00",
        "29.35",
        [None, "Bar3"],
    ),
    "orders.list.json[1]": (
        "723",
        OrderState.NEW,
        "partially_refunded",
        "fulfilled",
        "29.00",
        "0.00",
        "10.00",
        "0.00",
        "39.00",
        [None, None],
    ),
    "orders.batch.json:create[0]": (
        "728",
        OrderState.NEW,
        "unpaid",
        "unfulfilled",
        "30.00",
        "2.25",
        "30.00",
        "0.00",
        "62.25",
        [None, None, "Bar3"],
    ),
    "orders.batch.json:create[1]": (
        "729",
        OrderState.NEW,
        "paid",
        "unfulfilled",
        "32.00",
        "2.40",
        "20.00",
        "0.00",
        "54.40",
        ["Bar3", None],
    ),
}


@pytest.mark.parametrize(("name", "payload"), ALL, ids=[n for n, _ in ALL])
def test_every_official_order_maps_with_consistent_totals(
    name: str, payload: dict[str, Any]
) -> None:
    # when
    order = map_order(payload, "shop-1")

    # then
    assert order.channel == "woocommerce"
    assert order.external_id == str(payload["id"])
    assert order.external_number == payload["number"]
    assert order.currency == "USD"
    assert order.total == Decimal(payload["total"])
    assert order.subtotal + order.shipping_total + order.tax_total == order.total
    assert len(order.lines) == len(payload["line_items"])
    assert [line.sku for line in order.lines] == [i["sku"] or None for i in payload["line_items"]]
    assert sum(line.total for line in order.lines) == order.subtotal  # no fee lines here
    # Woo rounds tax per order, not per line: order 728's lines sum to 2.26 against 2.25
    line_tax = sum(line.tax for line in order.lines)
    assert abs(line_tax - Decimal(payload["cart_tax"])) <= Decimal("0.01") * len(order.lines)
    # *_gmt read as UTC, never the shop-local twin
    gmt = dt.datetime.fromisoformat(payload["date_modified_gmt"]).replace(tzinfo=dt.UTC)
    assert order.updated_at == gmt
    assert order.updated_at.utcoffset() == dt.timedelta(0)
    assert order.created_at is not None
    assert order.created_at.isoformat().startswith(payload["date_created_gmt"])
    assert order.raw == payload


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_official_orders_map_to_the_expected_values(name: str) -> None:
    # given
    payload = dict(ALL)[name]
    oid, state, financial, fulfillment, sub, tax, ship, disc, total, skus = EXPECTED[name]

    # when
    order = map_order(payload, "shop-1")

    # then
    assert order.external_id == oid
    assert order.status is state
    assert order.marketplace_status == payload["status"]
    assert order.financial_status == financial
    assert order.fulfillment_status == fulfillment
    assert (order.subtotal, order.tax_total, order.shipping_total, order.discount_total) == (
        Decimal(sub),
        Decimal(tax),
        Decimal(ship),
        Decimal(disc),
    )
    assert order.total == Decimal(total)
    assert [line.sku for line in order.lines] == skus


def test_line_prices_come_from_string_subtotals_next_to_a_numeric_price() -> None:
    # given: line 315 is qty 2, subtotal "6.00", price 3 (a JSON number)
    order = map_order(load("order.retrieve.json"), "shop-1")

    # then
    first, second = order.lines
    assert (first.external_id, first.quantity, first.unit_price) == ("315", 2, Decimal("3.00"))
    assert (first.total, first.tax, first.discount) == (
        Decimal("6.00"),
        Decimal("0.45"),
        Decimal("0"),
    )
    assert first.title == "Woo Single #1"
    assert (second.external_id, second.sku, second.unit_price) == ("316", "Bar3", Decimal("12"))


def test_processing_with_date_paid_was_collected_by_the_shop_gateway() -> None:
    order = map_order(load("order.retrieve.json"), "shop-1")
    assert order.payment_collected_by_marketplace is True
    assert order.buyer_email == "john.doe@example.com"
    assert order.buyer_name == "John Doe"
    assert order.shipping_address is not None
    assert order.shipping_address.line2 is None  # "" means missing
    assert order.shipping_address.country_code == "US"
    assert order.shipping_address.region == "CA"
    assert order.shipping_address.phone == "(555) 555-5555"  # billing phone as fallback


def test_pending_order_is_new_and_unpaid_and_not_collected() -> None:
    order = map_order(load("orders.batch.json")["create"][0], "shop-1")
    assert order.marketplace_status == "pending"
    assert order.payment_collected_by_marketplace is False


def test_unicode_address_survives() -> None:
    order = map_order(load("orders.list.json")[1], "shop-1")
    assert order.shipping_address is not None
    assert order.shipping_address.name == "João Silva"
    assert order.shipping_address.country_code == "BR"


def test_update_is_newer_than_retrieve_of_the_same_order() -> None:
    before = map_order(load("order.retrieve.json"), "shop-1")
    after = map_order(load("order.update.json"), "shop-1")
    assert after.updated_at - before.updated_at == dt.timedelta(minutes=2, seconds=27)


@pytest.mark.parametrize(
    ("woo_status", "state", "financial"),
    [
        ("pending", OrderState.NEW, "unpaid"),
        ("on-hold", OrderState.NEW, "unpaid"),
        ("processing", OrderState.NEW, "paid"),
        ("completed", OrderState.NEW, "paid"),
        ("cancelled", OrderState.CANCELLED, "voided"),
        ("failed", OrderState.CANCELLED, "unpaid"),
        ("refunded", OrderState.CANCELLED, "refunded"),
        ("checkout-draft", OrderState.NEW, None),
    ],
)
def test_status_table(woo_status: str, state: OrderState, financial: str | None) -> None:
    # given
    payload = copy.deepcopy(load("orders.batch.json")["create"][0])  # pending, unpaid
    payload["status"] = woo_status

    # when
    order = map_order(payload, "shop-1")

    # then
    assert order.status is state
    assert order.financial_status == financial
    assert (order.cancelled_at is not None) is (state is OrderState.CANCELLED)
    assert order.payment_collected_by_marketplace is False


def test_discounts_and_fees_are_counted() -> None:
    # given: a 10% coupon on line 315 and a 2.50 fee
    payload = copy.deepcopy(load("order.retrieve.json"))
    payload["line_items"][0]["total"] = "5.40"
    payload["discount_total"] = "0.60"
    payload["fee_lines"] = [{"id": 1, "name": "Gift wrap", "total": "2.50", "total_tax": "0.00"}]
    payload["total"] = "31.25"

    # when
    order = map_order(payload, "shop-1")

    # then
    assert order.lines[0].discount == Decimal("0.60")
    assert order.lines[0].unit_price == Decimal("3.00")
    assert order.discount_total == Decimal("0.60")
    assert order.subtotal == Decimal("19.90")
    assert order.subtotal + order.shipping_total + order.tax_total == order.total


def test_zone_less_timestamps_use_the_gmt_twin_not_the_local_one() -> None:
    payload = copy.deepcopy(load("order.retrieve.json"))
    payload["date_modified"] = "1999-01-01T00:00:00"  # shop-local: must be ignored
    order = map_order(payload, "shop-1")
    assert order.updated_at == dt.datetime(2017, 3, 22, 19, 28, 8, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda p: p.pop("date_modified_gmt"), "date_modified_gmt"),
        (lambda p: p.__setitem__("total", "abc"), "total"),
        (lambda p: p["line_items"][0].__setitem__("quantity", -1), "line_items.0.quantity"),
        (lambda p: p.__setitem__("currency", ""), "currency"),
        (lambda p: p.pop("id"), "id"),
    ],
)
def test_unusable_payload_is_a_payload_error_naming_the_field_not_the_value(
    mutate: Callable[[dict[str, Any]], object], path: str
) -> None:
    # given
    payload = copy.deepcopy(load("order.retrieve.json"))
    payload["billing"]["email"] = "secret.person@example.com"
    mutate(payload)

    # when / then
    with pytest.raises(PayloadError) as info:
        map_order(payload, "shop-1")
    assert path in str(info.value)
    assert "secret.person" not in str(info.value)
    assert "abc" not in str(info.value)


def test_non_object_body_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        map_order([], "shop-1")  # type: ignore[arg-type]


# --- refunds ---------------------------------------------------------------------------------


def _refunded_order(restocked: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """order.retrieve.json with two refunds of one unit of line 315 each (its body lists the
    summaries, ``/orders/727/refunds`` has them whole); Woo put ``restocked`` units back."""
    order = load("order.retrieve.json")
    line = order["line_items"][0]
    line["meta_data"] = [{"id": 9, "key": "_restock_refunded_items", "value": str(restocked)}]
    order["refunds"] = [{"id": 731, "reason": "", "total": "-3.45"},
                        {"id": 730, "reason": "", "total": "-3.45"}]  # fmt: skip

    def whole(refund_id: int) -> dict[str, Any]:
        item = {"id": refund_id + 100, "name": line["name"], "quantity": -1, "subtotal": "-3.00",
                "subtotal_tax": "-0.45", "total": "-3.00", "total_tax": "-0.45",
                "meta_data": [{"id": 1, "key": "_refunded_item_id", "value": "315"}]}
        return {"id": refund_id, "date_created_gmt": "2017-03-23T10:00:00", "amount": "3.45",
                "line_items": [item], "shipping_lines": []}  # fmt: skip

    return order, [whole(731), whole(730)]


def test_refunds_fetched_whole_are_credited_per_line_and_restocked_as_woo_restocked() -> None:
    # given two refunds of one unit each, of which Woo restocked one unit (the first refund's)
    order, details = _refunded_order(restocked=1)

    refunds = map_order(order, "shop", details).refunds

    assert [(r.external_id, r.amount, r.itemized) for r in refunds] == [
        ("731", Decimal("3.45"), True), ("730", Decimal("3.45"), True)]  # fmt: skip
    by_id = {r.external_id: r.lines for r in refunds}
    (first,) = by_id["730"]  # the older one
    assert (first.line_external_id, first.quantity, first.subtotal, first.tax, first.restock) == (
        "315", 1, Decimal("3.00"), Decimal("0.45"), True)  # fmt: skip
    assert [line.restock for line in by_id["731"]] == [False]


def test_refunds_the_body_only_summarises_are_amounts_to_fetch() -> None:
    order, _ = _refunded_order(restocked=0)

    refunds = map_order(order, "shop").refunds

    assert [(r.external_id, r.amount, r.lines, r.itemized) for r in refunds] == [
        ("731", Decimal("3.45"), [], False), ("730", Decimal("3.45"), [], False)]  # fmt: skip


def test_a_refund_line_that_names_no_order_line_is_a_payload_error() -> None:
    order, details = _refunded_order(restocked=0)
    details[0]["line_items"][0]["meta_data"] = []

    with pytest.raises(PayloadError, match="_refunded_item_id"):
        map_order(order, "shop", details)
