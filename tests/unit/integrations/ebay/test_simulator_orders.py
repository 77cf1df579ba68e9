"""The eBay simulator's orders have the spec's shapes and map cleanly (no HTTP needed)."""

from __future__ import annotations

from decimal import Decimal

from integrations.ebay.mapper import map_order
from sandbox.ebay import EbaySimulator
from tests.unit.integrations.ebay.spec_schema import schema_errors


def test_generated_orders_match_the_spec_order_schema_and_add_up() -> None:
    sim = EbaySimulator(seed=11, skus=("A-1", "B-2", "C-3"))
    ids = sim.add_orders(25)
    orders = sim.orders
    assert len(set(ids)) == 25
    for order_id in ids:
        raw = orders[order_id]
        assert schema_errors(raw, "Order") == []
        order = map_order(raw, "sandbox")
        assert {line.sku for line in order.lines} <= {"A-1", "B-2", "C-3"}
        assert order.subtotal - order.discount_total + order.shipping_total + order.tax_total == (
            order.total
        )
        assert sum((line.total + line.tax for line in order.lines), Decimal(0)) == (
            order.total - order.shipping_total
        )


def test_the_same_seed_builds_the_same_orders() -> None:
    first, second = EbaySimulator(seed=5), EbaySimulator(seed=5)
    assert first.add_orders(3) == second.add_orders(3)
    skus = [[line["sku"] for line in o["lineItems"]] for o in first.orders.values()]
    assert skus == [[line["sku"] for line in o["lineItems"]] for o in second.orders.values()]


def test_touch_and_cancel_change_the_order_and_its_modification_date() -> None:
    sim = EbaySimulator(seed=1)
    a, b = sim.add_orders(2)
    before = sim.orders
    sim.touch_order(a)
    sim.cancel_order(b)
    after = sim.orders
    assert after[a]["orderFulfillmentStatus"] == "IN_PROGRESS"
    assert after[a]["lastModifiedDate"] >= before[a]["lastModifiedDate"]
    assert after[b]["cancelStatus"]["cancelState"] == "CANCELED"
    assert schema_errors(after[a], "Order") == [] and schema_errors(after[b], "Order") == []
