"""Fuzz both mappers: whatever the payload, the answer is a valid order or ``PayloadError``."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.canonical import CanonicalOrder
from domain.errors import PayloadError
from integrations.shopify.mapper import map_graphql_order, map_order
from sandbox.shopify import graphql_order
from tests.unit.integrations.shopify.fixtures import order

REST = order("rest-2026-07/order.get.json")
GRAPHQL = graphql_order(REST)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "1e999999", "NaN", "-0", "12.345", "2026-07-01T10:00:00Z", "sNaN"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _paths(child, (*prefix, i))
    return found


def _mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    paths = _paths(base)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        payload = copy.deepcopy(base)
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            path = draw(st.sampled_from(paths))
            parent: Any = payload
            try:
                for step in path[:-1]:
                    parent = parent[step]
                if draw(st.booleans()) and isinstance(parent, dict):
                    parent.pop(path[-1], None)
                else:
                    parent[path[-1]] = draw(json_values)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation replaced an ancestor
        return payload

    return build()


def _check(mapper: Any, payload: Any) -> None:
    try:
        result = mapper(payload, "fuzz")
    except PayloadError as exc:
        assert "Norman" not in str(exc)  # never the customer's data
        return
    assert isinstance(result, CanonicalOrder)
    CanonicalOrder.model_validate(result.model_dump())  # a whole, valid order


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(_mutated(REST))
def test_rest_mapper_on_mutated_fixture(payload: dict[str, Any]) -> None:
    _check(map_order, payload)


@FUZZ
@given(_mutated(GRAPHQL))
def test_graphql_mapper_on_mutated_nodes(payload: dict[str, Any]) -> None:
    _check(map_graphql_order, payload)


@FUZZ
@given(json_values)
def test_both_mappers_on_arbitrary_json(payload: Any) -> None:
    _check(map_order, payload)
    _check(map_graphql_order, payload)
