"""The chaos suite's invariant checks (bench/chaos/invariants.py) on hand-made snapshots: a
healthy state passes every one, and each deliberately broken state is caught with the ids
that break it (and only by the invariant it breaks)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest

from bench.chaos.invariants import INVARIANTS, Facts, check_all


def healthy() -> Facts:
    """Two orders: one shipped and delivered (paid by us), one cancelled after its label
    (refunded, credit note, label voided)."""
    return Facts(
        sandbox_orders={("shopify", "1001"), ("woocommerce", "77")},
        orders={1: ("shopify", "1001", "delivered"), 2: ("woocommerce", "77", "cancelled")},
        transitions=[
            (1, None, "new"), (1, "new", "reserved"), (1, "reserved", "paid"),
            (1, "paid", "documented"), (1, "documented", "ready_to_ship"),
            (1, "ready_to_ship", "shipped"), (1, "shipped", "delivered"),
            (2, None, "new"), (2, "new", "reserved"), (2, "reserved", "paid"),
            (2, "paid", "documented"), (2, "documented", "ready_to_ship"),
            (2, "ready_to_ship", "cancelled"),
        ],
        payments={1: (Decimal("42.25"), False), 2: (Decimal("10.00"), False)},
        captures=[("pi_1", ("shopify", "1001"), Decimal("42.25")),
                  ("pi_2", ("woocommerce", "77"), Decimal("10.00"))],
        channel_stock={("shopify", "SKU-A"): (5, 5), ("ebay", "SKU-A"): (4, 4)},
        invoice_numbers={"INV-2026": [1, 2], "CN-2026": [1]},
        invoice_counters={"INV-2026": 3, "CN-2026": 2},
        shipments={10: (1, "delivered", "1Z1"), 11: (2, "cancelled", None)},
        labels=[(10, "1Z1", False), (11, "1Z2", True)],
        carrier_labels=[("se-1", "10", "1Z1", False), ("se-2", "11", "1Z2", True)],
        fulfilments=Counter({("shopify", "1001"): 1}),
        stock={"SKU-A": (5, 0), "SKU-B": (0, 0)},
        acknowledged={(1, "wh-1"), (2, "wh-2")},
        inbox={(1, "wh-1"): ("processed", 1), (2, "wh-2"): ("ignored", 1)},
        queued={"orders": 0, "unacked": 0},
    )  # fmt: skip


def test_a_healthy_state_holds_every_invariant() -> None:
    assert check_all(healthy()) == {name: [] for name in INVARIANTS}


def _dup_order(f: Facts) -> None:
    f.orders[3] = ("shopify", "1001", "delivered")  # the same external order twice


def _lost_order(f: Facts) -> None:
    f.sandbox_orders.add(("ebay", "12-345"))


def _stuck(f: Facts) -> None:
    f.orders[1] = ("shopify", "1001", "documented")


def _captured_twice(f: Facts) -> None:
    f.captures.append(("pi_9", ("shopify", "1001"), Decimal("42.25")))


def _wrong_amount(f: Facts) -> None:
    f.captures[0] = ("pi_1", ("shopify", "1001"), Decimal("42.00"))


def _unbalanced(f: Facts) -> None:
    f.money_mismatches = ["order 2: cancelled, yet 10.00 of the buyer's money is not refunded"]


def _channel_behind(f: Facts) -> None:
    f.channel_stock[("ebay", "SKU-A")] = (5, 4)  # a sale not pushed


def _gap(f: Facts) -> None:
    f.invoice_numbers["INV-2026"] = [1, 3]
    f.invoice_counters["INV-2026"] = 4


def _label_reused(f: Facts) -> None:
    f.shipments[11] = (2, "shipped", "1Z2")  # shipped under the voided label
    f.fulfilments[("woocommerce", "77")] += 1  # (and the marketplace was told)


def _two_labels(f: Facts) -> None:
    f.carrier_labels.append(("se-3", "10", "1Z3", False))


def _fulfilled_twice(f: Facts) -> None:
    f.fulfilments[("shopify", "1001")] += 1


def _negative(f: Facts) -> None:
    f.stock["SKU-B"] = (-1, 0)


def _unprocessed(f: Facts) -> None:
    f.inbox[(1, "wh-1")] = ("received", 0)


def _backwards(f: Facts) -> None:
    f.transitions.append((1, "delivered", "ready_to_ship"))


def _leftovers(f: Facts) -> None:
    f.lock_keys = ["ordersync:lock:capture:1"]
    f.undelivered_outbox = [7]


def _poison_looping(f: Facts) -> None:
    f.acknowledged.add((1, "bad"))
    f.poison.add((1, "bad"))
    f.inbox[(1, "bad")] = ("received", 30)


def _unreadable_lost(f: Facts) -> None:
    f.unreadable_pushed, f.dead_letters = 2, 1


@pytest.mark.parametrize(
    ("invariant", "breaks", "expected"),
    [
        ("one order per external order", _dup_order, ["shopify:1001 x2"]),
        ("one order per external order", _lost_order, ["ebay:12-345 x0"]),
        ("orders final", _stuck, ["order 1 documented"]),
        ("one capture per payment", _captured_twice, ["shopify:1001: 2 captures"]),
        ("one capture per payment", _wrong_amount, ["order 1: captured 42.00 != 42.25"]),
        ("invoiced - credited = captured - refunded", _unbalanced,
         ["order 2: cancelled, yet 10.00 of the buyer's money is not refunded"]),
        ("channel stock = buffered available", _channel_behind,
         ["ebay/SKU-A: shows 5, should show 4"]),
        ("invoice numbers contiguous", _gap, ["INV-2026-2 missing"]),
        ("one label per shipment", _label_reused, ["shipment 11: shipped under voided label 1Z2"]),
        ("one label per shipment", _two_labels, ["shipment 10: 2 live labels"]),
        ("one fulfilment per shipment", _fulfilled_twice,
         ["shopify:1001 2 fulfilments for 1 shipments"]),
        ("no negative stock", _negative, ["SKU-B: on hand -1, reserved 0"]),
        ("2xx webhooks processed", _unprocessed, ["1/wh-1: received"]),
        ("no order moved backwards", _backwards, ["order 1: delivered->ready_to_ship"]),
        ("nothing left behind", _leftovers, ["lock ordersync:lock:capture:1", "outbox 7"]),
        ("poison dead-lettered", _poison_looping, ["1/bad: received after 30 attempts"]),
        ("poison dead-lettered", _unreadable_lost, ["2 unreadable queue items, 1 set aside"]),
    ],
)  # fmt: skip
def test_a_broken_state_is_caught_by_its_invariant_with_the_ids(
    invariant: str, breaks: Callable[[Facts], None], expected: list[str]
) -> None:
    facts = healthy()
    breaks(facts)
    broken = check_all(facts)
    assert broken[invariant] == expected
    # the state is broken in one way only: no other invariant speaks up
    assert [name for name, ids in broken.items() if ids] == [invariant]


def test_a_shopify_capture_counts_with_the_edit_the_buyer_paid_after_it() -> None:
    """Shopify holds our capture and the edit's SALE; our payment follows that total
    (orders.edits), so the ledger the capture invariant reads counts both."""
    from types import SimpleNamespace

    from bench.chaos.harness import _ledger_captures
    from sandbox.shopify import ShopifySimulator

    sim = ShopifySimulator(seed=3)
    external_id = next(i for i in sim.add_orders(20) if sim.orders[i]["financial_status"]
                       == "authorized")  # fmt: skip
    auth = sim.transactions[external_id][0]
    captured = sim.orders[external_id]["total_price"]
    sim.execute(
        "OrderCapture",
        "mutation OrderCapture($input: OrderCaptureInput!) @idempotent(key: $key) { x }",
        {"key": "k1", "idempotencyKey": "k1", "input": {
            "id": f"gid://shopify/Order/{external_id}", "parentTransactionId": auth["id"],
            "amount": captured, "currency": "USD"}},
    )  # fmt: skip
    sim.edit_add_line(external_id, sim.skus[0], 1)  # the buyer pays the difference (SALE)
    world = SimpleNamespace(payments=SimpleNamespace(captures=[]), shopify=sim)

    ((_, order, amount),) = _ledger_captures(world)

    assert order == ("shopify", external_id)
    assert amount == Decimal(sim.orders[external_id]["total_price"]) > Decimal(captured)
