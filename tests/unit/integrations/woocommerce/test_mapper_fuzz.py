"""Fuzzing the WooCommerce mapper: whatever the payload, a valid order or a PayloadError."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.canonical import CanonicalOrder
from domain.errors import PayloadError
from integrations.woocommerce.mapper import map_order
from tests.unit.integrations.woocommerce.official import load

BASES = [
    load("order.retrieve.json"),
    load("orders.list.json")[1],
    *load("orders.batch.json")["create"],
]

ORDER_KEYS = sorted({k for b in BASES for k in b})
LINE_KEYS = sorted(BASES[0]["line_items"][0])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**80),  # huge ids
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),  # unicode
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "12.50",
            "1e400",
            "NaN",
            "  ",
            "2017-03-22T19:28:08",
            "2017-03-22T19:28:08Z",
            "processing",
            "completed",
            "ÉUR",
            "usd",
        ]
    ),
)


def _mutations() -> st.SearchStrategy[list[tuple[str, str, Any]]]:
    op = st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(ORDER_KEYS), st.none()),
        st.tuples(st.just("set"), st.sampled_from(ORDER_KEYS), scalars),
        st.tuples(st.just("as_string"), st.sampled_from(ORDER_KEYS), st.none()),
        st.tuples(st.just("line_drop"), st.sampled_from(LINE_KEYS), st.none()),
        st.tuples(st.just("line_set"), st.sampled_from(LINE_KEYS), scalars),
        st.tuples(st.just("line_as_string"), st.sampled_from(LINE_KEYS), st.none()),
    )
    return st.lists(op, max_size=6)


def _apply(payload: dict[str, Any], ops: list[tuple[str, str, Any]]) -> dict[str, Any]:
    for kind, key, value in ops:
        target = payload
        if kind.startswith("line_"):
            if not isinstance(payload.get("line_items"), list) or not payload["line_items"]:
                continue
            target = payload["line_items"][0]
            if not isinstance(target, dict):
                continue
            kind = kind.removeprefix("line_")
        if kind == "drop":
            target.pop(key, None)
        elif kind == "set":
            target[key] = value
        elif kind == "as_string" and key in target and not isinstance(target[key], dict | list):
            target[key] = "" if target[key] is None else str(target[key])
    return payload


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), ops=_mutations())
def test_mapper_returns_a_valid_order_or_a_payload_error(
    base: dict[str, Any], ops: list[tuple[str, str, Any]]
) -> None:
    payload = _apply(copy.deepcopy(base), ops)
    try:
        order = map_order(payload, "shop-1")
    except PayloadError as exc:
        assert "@" not in str(exc)  # never a customer e-mail in the message
        return
    assert isinstance(order, CanonicalOrder)
    assert order.updated_at.utcoffset() is not None and not order.updated_at.utcoffset()
    assert isinstance(order.total, Decimal) and order.total.is_finite()
    assert order.raw == payload
    assert all(line.quantity >= 0 for line in order.lines)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=15,
    )
)
def test_arbitrary_json_never_raises_anything_but_payload_error(value: Any) -> None:
    try:
        map_order(value, "shop-1")
    except PayloadError:
        pass
