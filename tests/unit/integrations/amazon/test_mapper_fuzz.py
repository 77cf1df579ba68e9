"""Fuzzing the Amazon mapper: whatever arrives, it returns a valid order or raises PayloadError."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.canonical import CanonicalOrder
from domain.errors import PayloadError
from integrations.amazon.mapper import map_order
from tests.unit.integrations.amazon.fixtures import load, new_orders, order_items, v0_orders

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "",
            "1e999999",
            "NaN",
            "-0",
            "1.569521782042E9",
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "false",
            "USD",
            "Canceled",
            "0012",
        ]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

merged_v0 = {
    **load("getOrder.200.sandbox-1.json")["payload"],
    "OrderItems": order_items("getOrderItems.200.sandbox-1.json"),
}
SEEDS = [order for _, order in v0_orders() + new_orders()] + [merged_v0]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


@st.composite
def mutated_orders(draw: st.DrawFn) -> dict[str, Any]:
    order: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(order)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = order
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(json_values)
    return order


def _check(payload: Any) -> None:
    try:
        mapped = map_order(payload, "acct")
    except PayloadError:
        return
    assert isinstance(mapped, CanonicalOrder)
    assert isinstance(mapped.total, Decimal) and mapped.total.is_finite()
    assert all(isinstance(line.external_id, str) for line in mapped.lines)
    assert mapped.updated_at.tzinfo is not None
    assert len(mapped.currency) == 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_orders())
def test_mutated_fixture_orders_map_or_raise_payload_error(order: dict[str, Any]) -> None:
    _check(order)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_arbitrary_json_maps_or_raises_payload_error(payload: Any) -> None:
    _check(payload)


money = st.decimals(min_value=-(10**6), max_value=10**6, places=2).map(str)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "OrderItemId": st.from_regex(r"\A[0-9]{1,14}\Z"),
                "QuantityOrdered": st.integers(min_value=0, max_value=50),
                "ItemPrice": st.fixed_dictionaries(
                    {"CurrencyCode": st.just("USD"), "Amount": money}
                ),
                "IsGift": st.sampled_from(["true", "false", True, False]),
            }
        ),
        max_size=5,
    )
)
def test_generated_v0_items_keep_ids_and_sum_to_the_subtotal(items: list[dict[str, Any]]) -> None:
    order = {**load("getOrder.200.example.json")["payload"], "OrderItems": items}  # no OrderTotal

    mapped = map_order(order, "acct")

    assert [line.external_id for line in mapped.lines] == [i["OrderItemId"] for i in items]
    assert mapped.subtotal == sum((Decimal(i["ItemPrice"]["Amount"]) for i in items), Decimal(0))
    assert mapped.total == mapped.subtotal  # no tax, shipping or discount in these items
