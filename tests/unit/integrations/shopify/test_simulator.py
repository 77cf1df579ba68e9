"""The Shopify simulator's own rules: the cost bucket, idempotent inventory sets, updates."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sandbox.shopify import ShopifySimulator
from tests.unit.integrations.shopify.fixtures import order


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def page(sim: ShopifySimulator, first: int = 100) -> tuple[int, dict[str, Any]]:
    return sim.execute("OrdersUpdatedSince", "", {"first": first, "after": None, "query": ""})


def test_the_bucket_throttles_then_restores() -> None:
    # given: 300 points, 10 restored per second
    clock = Clock()
    sim = ShopifySimulator(bucket_max=300.0, restore_rate=10.0, clock=clock)
    sim.add_orders(3)

    # when: each page requests 102 and costs 2 + 3 actual
    statuses = [page(sim)[0] for _ in range(3)]
    clock.now += 10.0  # +100 points, capped at the bucket's 300

    # then
    assert statuses == [200, 200, 200]
    status, body = page(sim, first=250)  # requests 252 of 300
    assert status == 200
    assert body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 295
    sim.spend(255)  # another app: 40 left
    status, body = page(sim)  # requests 102
    assert status == 429
    assert body["errors"][0]["extensions"]["code"] == "THROTTLED"
    assert body["extensions"]["cost"]["actualQueryCost"] is None
    assert body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 40
    assert "data" not in body
    clock.now += 6.5  # +65 points: 105 available
    assert page(sim)[0] == 200


def test_a_query_above_the_whole_bucket_is_refused() -> None:
    sim = ShopifySimulator(bucket_max=1000.0)

    status, body = sim.execute("OrdersByIds", "", {"ids": ["x"] * 20, "lineItemsFirst": 10})

    assert status == 200
    assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"


def test_every_response_reports_its_cost() -> None:
    sim = ShopifySimulator()
    [external_id] = sim.add_orders(1)

    _, body = sim.execute(
        "OrdersByIds", "", {"ids": [f"gid://shopify/Order/{external_id}"], "lineItemsFirst": 10}
    )

    cost = body["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 15 + 2 + 10 * 9
    assert 0 < cost["actualQueryCost"] < cost["requestedQueryCost"]
    assert cost["throttleStatus"]["currentlyAvailable"] == 1000 - cost["actualQueryCost"]


def set_input(quantity: int, **extra: Any) -> dict[str, Any]:
    item = {
        "inventoryItemId": "gid://shopify/InventoryItem/49148385000",
        "locationId": "gid://shopify/Location/655441491",
        "quantity": quantity,
        **extra,
    }
    return {"name": "available", "reason": "correction", "quantities": [item]}


MUTATION = "mutation InventorySetQuantities { inventorySetQuantities @idempotent(key: $k) }"


def test_inventory_sets_need_the_idempotent_directive_and_change_from_quantity() -> None:
    sim = ShopifySimulator()

    _, no_key = sim.execute("InventorySetQuantities", "mutation X { x }", {"input": set_input(1)})
    _, no_cas = sim.execute(
        "InventorySetQuantities", MUTATION, {"input": set_input(1), "idempotencyKey": "k"}
    )

    assert no_key["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert no_cas["errors"][0]["extensions"]["code"] == "INVALID_FIELD_ARGUMENTS"
    assert sim.inventory["SKU-RED-S"] == 100 and not sim.inventory_sets


def test_a_repeated_idempotency_key_applies_once() -> None:
    sim = ShopifySimulator()
    variables = {"input": set_input(5, changeFromQuantity=None), "idempotencyKey": "k-1"}

    first = sim.execute("InventorySetQuantities", MUTATION, variables)
    sim.inventory["SKU-RED-S"] = 4  # a sale in the meantime
    again = sim.execute("InventorySetQuantities", MUTATION, variables)
    other = sim.execute(
        "InventorySetQuantities",
        MUTATION,
        {"input": set_input(6, changeFromQuantity=None), "idempotencyKey": "k-1"},
    )

    assert first[1]["data"] == again[1]["data"]
    assert sim.inventory["SKU-RED-S"] == 4  # the replay did not set it again
    errors = other[1]["data"]["inventorySetQuantities"]["userErrors"]
    assert errors[0]["code"] == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"


def test_touching_an_order_makes_it_strictly_newer() -> None:
    moment = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)
    sim = ShopifySimulator(now=lambda: moment)
    [external_id] = sim.add_orders(1)
    before = sim.orders[external_id]["updated_at"]

    sim.touch_order(external_id)
    sim.touch_order(external_id, cancel=True)

    after = sim.orders[external_id]
    assert before == "2026-07-01T08:00:00-04:00"
    assert after["updated_at"] == "2026-07-01T08:00:02-04:00"
    assert after["cancelled_at"] and after["cancel_reason"] == "customer"


def test_orders_have_the_official_rest_shape() -> None:
    sim = ShopifySimulator()
    [external_id] = sim.add_orders(1)
    official = order("rest-2026-07/order.get.json")
    built = sim.orders[external_id]

    assert set(official) <= set(built)
    assert set(official["line_items"][0]) <= set(built["line_items"][0])
    assert set(official["shipping_address"]) <= set(built["shipping_address"])


def test_the_same_seed_builds_the_same_orders() -> None:
    moment = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
    a = ShopifySimulator(seed=4, now=lambda: moment)
    b = ShopifySimulator(seed=4, now=lambda: moment)

    assert a.add_orders(5) == b.add_orders(5)
    assert a.orders == b.orders


def _read_all(sim: ShopifySimulator, query: str = "", between: Any = None) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        variables = {"first": 7, "after": after, "query": query}
        _, body = sim.execute("OrdersUpdatedSince", "", variables)
        sim.spend(-1e9)  # never throttled here
        orders = body["data"]["orders"]
        ids += [node["id"].rsplit("/", 1)[-1] for node in orders["nodes"]]
        if between is not None:
            between()
        if not orders["pageInfo"]["hasNextPage"]:
            return ids
        after = orders["pageInfo"]["endCursor"]


def test_pages_follow_updated_at_and_an_order_updated_after_it_was_read_comes_again() -> None:
    # given: 30 orders created at different times
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    sim = ShopifySimulator(now=lambda: now[0])
    ids = []
    for _ in range(30):
        ids += sim.add_orders(1)
        now[0] += dt.timedelta(seconds=5)
    touched: list[str] = []

    def touch_an_order_already_read() -> None:
        if not touched:
            sim.touch_order(ids[0])  # read on the first page: now the newest
            touched.append(ids[0])

    # when: read in pages of 7 while one order read before is updated
    seen = _read_all(sim, between=touch_an_order_already_read)

    # then: every order once in (updated_at, id) order, the touched one again at the end
    assert seen == [*ids, ids[0]]
    # and a window: updated_at >= the 10th's, < the 20th's
    lower = sim.orders[ids[9]]["updated_at"]
    upper = sim.orders[ids[19]]["updated_at"]
    window = _read_all(sim, f"updated_at:>='{lower}' AND updated_at:<'{upper}'")
    assert window == ids[9:19]


def test_a_page_looks_at_its_own_orders_only_whatever_the_number_of_orders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the index, not a sort per page: reading every page of n orders parses each order's
    # times a fixed number of times (a sort per page would parse all n for each of n / 7 pages)
    import sandbox.shopify as simulator

    parsed = [0]
    real = simulator._parse_time

    def counting(value: str) -> dt.datetime:
        parsed[0] += 1
        return real(value)

    per_order = []
    for n in (700, 7_000):
        sim = ShopifySimulator()
        sim.add_orders(n)
        monkeypatch.setattr(simulator, "_parse_time", counting)
        parsed[0] = 0
        seen = _read_all(sim)
        monkeypatch.setattr(simulator, "_parse_time", real)
        assert len(seen) == n
        per_order.append(parsed[0] / n)

    # the same few parses an order at 700 as at 7,000 (a sort per page: 100 and 1,000)
    assert max(per_order) < 4 and per_order[1] < per_order[0] * 1.1, per_order


def _with_status(sim: ShopifySimulator, financial: str) -> str:
    """An order of the simulator whose checkout ended ``financial`` (paid / authorized)."""
    while True:
        [external_id] = sim.add_orders(1)
        if sim.orders[external_id]["financial_status"] == financial:
            return external_id


def test_an_admin_cancel_of_a_paid_order_refunds_every_unit_and_the_shipping() -> None:
    from decimal import Decimal

    sim = ShopifySimulator(seed=3)
    external_id = _with_status(sim, "paid")
    total = Decimal(sim.orders[external_id]["total_price"])

    sim.touch_order(external_id, cancel=True)

    cancelled = sim.orders[external_id]
    (refund,) = cancelled["refunds"]
    assert cancelled["financial_status"] == "refunded" and cancelled["cancelled_at"]
    assert [Decimal(t["amount"]) for t in refund["transactions"]] == [total]
    parts = sum(
        (Decimal(str(i["subtotal"])) + Decimal(str(i["total_tax"]))
         for i in refund["refund_line_items"]), Decimal(0),
    ) + sum((Decimal(s["subtotal_amount_set"]["shop_money"]["amount"])
             for s in refund["refund_shipping_lines"]), Decimal(0))  # fmt: skip
    assert parts == total  # the lines, their tax and the shipping: the money that went back
    assert {i["restock_type"] for i in refund["refund_line_items"]} == {"cancel"}
    assert {i["line_item_id"]: i["quantity"] for i in refund["refund_line_items"]} == {
        li["id"]: li["quantity"] for li in cancelled["line_items"]
    }
    kinds = [t["kind"] for t in sim.transactions[external_id]]
    assert kinds == ["SALE", "REFUND"]


def test_an_edit_after_a_partial_refund_charges_the_buyer_the_difference() -> None:
    """Found by the chaos suite (webhook_storm): an order refunded in part and then edited
    was left with its status paid-ish but no SALE for what the edit added."""
    from decimal import Decimal

    sim = ShopifySimulator(seed=3)
    external_id = _with_status(sim, "paid")
    sim.refund_line(external_id, 0, 1)
    before = Decimal(sim.orders[external_id]["total_price"])
    sku = next(iter(sim.prices))

    sim.edit_add_line(external_id, sku, 1)

    after = Decimal(sim.orders[external_id]["total_price"])
    sale = sim.transactions[external_id][-1]
    assert sim.orders[external_id]["financial_status"] == "partially_refunded"
    assert sale["kind"] == "SALE" and after > before
    assert Decimal(sale["amountSet"]["presentmentMoney"]["amount"]) == after - before


def test_an_admin_cancel_voids_an_authorization_which_then_cannot_be_captured() -> None:
    sim = ShopifySimulator(seed=3)
    external_id = _with_status(sim, "authorized")
    auth = sim.transactions[external_id][0]

    sim.touch_order(external_id, cancel=True)

    assert sim.orders[external_id]["financial_status"] == "voided"
    assert not sim.orders[external_id].get("refunds")  # nothing was taken: nothing goes back
    _, body = sim.execute(
        "OrderCapture",
        "mutation OrderCapture($input: OrderCaptureInput!) @idempotent(key: $key) { x }",
        {"key": "k1", "idempotencyKey": "k1", "input": {
            "id": f"gid://shopify/Order/{external_id}", "parentTransactionId": auth["id"],
            "amount": sim.orders[external_id]["total_price"], "currency": "USD"}},
    )  # fmt: skip
    errors = body["data"]["orderCapture"]["userErrors"]
    assert [e["message"] for e in errors] == ["The authorization has been voided"]
