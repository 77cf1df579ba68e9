"""What the mappers read of the money, from the official payloads: Shopify's refund (its refund
line items, restock types and refund transactions), the refunds an order body carries, the
payment facts of an authorized order; WooCommerce's Stripe gateway authorization."""

from __future__ import annotations

import copy
from decimal import Decimal

from integrations.shopify.mapper import map_order, map_refund
from integrations.woocommerce.mapper import map_order as map_woo_order
from tests.unit.integrations.shopify.fixtures import load, order
from tests.unit.integrations.woocommerce.official import load as load_woo

ORDER = load_woo("order.retrieve.json")


def test_shopify_refund_maps_its_line_items_restock_and_the_money_that_went_back() -> None:
    refund = map_refund(load("rest-2026-07/refund.get.json")["refund"], "shop")

    assert (refund.external_id, refund.order_external_id) == ("509562969", "450789469")
    # legacy_restock puts the units back; subtotal and tax as Shopify computed them
    assert [
        (x.line_external_id, x.quantity, x.restock, x.subtotal, x.tax) for x in refund.lines
    ] == [
        ("703073504", 1, True, Decimal("195.66"), Decimal("3.98")),
        ("466157049", 1, True, Decimal("195.67"), Decimal("3.98")),
    ]
    assert (refund.amount, refund.currency) == (Decimal("209.00"), "USD")


def test_a_no_restock_refund_line_and_an_order_bodys_refunds_are_read() -> None:
    payload = copy.deepcopy(order("rest-2026-07/order.get.json"))
    payload["refunds"][0]["refund_line_items"][0]["restock_type"] = "no_restock"

    mapped = map_order(payload, "shop")

    (refund,) = mapped.refunds
    assert refund.external_id == str(payload["refunds"][0]["id"])
    assert [line.restock for line in refund.lines] == [False, True]


def test_an_authorized_shopify_order_says_shopify_holds_the_authorization() -> None:
    payload = dict(order("rest-2026-07/order.get.json"), financial_status="authorized")

    mapped = map_order(payload, "shop")

    assert mapped.payment is not None
    assert (mapped.payment.held_by, mapped.payment.gateway) == ("marketplace", "bogus")
    assert not mapped.payment_collected_by_marketplace
    paid = map_order(dict(payload, financial_status="paid"), "shop")
    assert paid.payment is not None and paid.payment.held_by is None


def test_a_woocommerce_stripe_order_on_hold_holds_its_payment_intent_at_the_provider() -> None:
    meta = [{"id": 1, "key": "_stripe_intent_id", "value": "pi_3Mtw"},
            {"id": 2, "key": "_stripe_charge_captured", "value": "no"}]  # fmt: skip
    payload = dict(copy.deepcopy(ORDER), status="on-hold", payment_method="stripe",
                   meta_data=meta, date_paid=None, date_paid_gmt=None)  # fmt: skip

    mapped = map_woo_order(payload, "woo")

    assert mapped.payment is not None
    assert (mapped.payment.held_by, mapped.payment.authorization_id) == ("provider", "pi_3Mtw")
    assert not mapped.payment_collected_by_marketplace
    captured = dict(payload, status="processing", date_paid_gmt="2026-07-01T10:00:00",
                    meta_data=[meta[0], {"id": 2, "key": "_stripe_charge_captured",
                                         "value": "yes"}])  # fmt: skip
    after = map_woo_order(captured, "woo")
    assert after.payment is not None and after.payment.held_by is None
    assert after.payment.authorization_id == "pi_3Mtw"  # kept: a capture in doubt is found by it
    assert after.payment_collected_by_marketplace
