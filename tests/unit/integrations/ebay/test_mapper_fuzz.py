"""Fuzzing the eBay mapper: whatever arrives, it returns a valid order or raises PayloadError."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.canonical import CanonicalOrder
from domain.errors import PayloadError
from integrations.ebay.mapper import map_order
from tests.unit.integrations.ebay.conftest import EXAMPLES, load

SEEDS = [load(name) for name in EXAMPLES]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "NaN",
            "-0",
            "1e999999",
            "12.345",
            "USD",
            "CANCELED",
            "FULFILLED",
            "2026-01-01T00:00:00.000Z",
            "2026-01-01T00:00:00",
            "9" * 80,
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_orders(draw: st.DrawFn) -> Any:
    """A real example with a few of its values replaced by junk or deleted."""
    order = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    paths = _paths(order)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(paths))
        parent: Any = order
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()):
                parent[path[-1]] = draw(json_values)
            elif isinstance(parent, dict):
                del parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this branch
    return order


def _check(payload: Any) -> None:
    try:
        order = map_order(payload, "fuzz")
    except PayloadError:
        return
    assert isinstance(order, CanonicalOrder)
    assert order.external_id and order.updated_at.tzinfo is not None
    assert len(order.currency) == 3
    CanonicalOrder.model_validate(order.model_dump())  # a whole, valid order, not half of one


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_orders())
def test_a_mutated_order_maps_or_raises_payload_error(payload: Any) -> None:
    _check(payload)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_arbitrary_json_maps_or_raises_payload_error(payload: Any) -> None:
    _check(payload)
