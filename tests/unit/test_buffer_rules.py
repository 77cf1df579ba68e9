"""Buffer rules (domain/buffer.py): properties over every rule and quantity, and examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.buffer import BufferRule, pushed_quantity

rules = st.builds(
    BufferRule,
    keep_percent=st.integers(0, 100),
    max_quantity=st.none() | st.integers(0, 10_000),
    zero_at_or_below=st.integers(0, 1_000),
)
quantities = st.integers(-1_000, 1_000_000)


@given(rules, quantities)
def test_the_pushed_quantity_is_never_above_available_nor_negative(
    rule: BufferRule, available: int
) -> None:
    pushed = pushed_quantity(available, rule)
    assert 0 <= pushed <= max(0, available)


@given(rules, quantities, st.integers(0, 1_000))
def test_more_available_never_pushes_less(rule: BufferRule, available: int, more: int) -> None:
    assert pushed_quantity(available + more, rule) >= pushed_quantity(available, rule)


@given(rules, quantities)
def test_the_cap_and_the_zero_threshold_hold(rule: BufferRule, available: int) -> None:
    pushed = pushed_quantity(available, rule)
    if rule.max_quantity is not None:
        assert pushed <= rule.max_quantity
    if available <= rule.zero_at_or_below:
        assert pushed == 0


@given(st.integers(0, 1_000_000))
def test_no_rule_pushes_exactly_what_is_available(available: int) -> None:
    assert pushed_quantity(available, BufferRule()) == available


@pytest.mark.parametrize(
    ("available", "rule", "expected"),
    [
        (10, BufferRule(keep_percent=15), 8),  # 8.5 rounded down
        (10, BufferRule(keep_percent=10), 9),
        (1, BufferRule(keep_percent=10), 0),  # 0.9 rounded down: never oversell the last one
        (500, BufferRule(max_quantity=50), 50),
        (3, BufferRule(zero_at_or_below=3), 0),
        (4, BufferRule(zero_at_or_below=3), 4),
        (100, BufferRule(keep_percent=20, max_quantity=70, zero_at_or_below=5), 70),
    ],
)
def test_examples_a_merchant_would_check(available: int, rule: BufferRule, expected: int) -> None:
    assert pushed_quantity(available, rule) == expected


def test_a_listing_overrides_only_what_it_sets() -> None:
    default = BufferRule(keep_percent=10, max_quantity=100, zero_at_or_below=2)
    mine = BufferRule.over(default, max_quantity=5)
    assert mine == BufferRule(keep_percent=10, max_quantity=5, zero_at_or_below=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_percent": 101},
        {"keep_percent": -1},
        {"max_quantity": -1},
        {"zero_at_or_below": -2},
    ],
)
def test_a_rule_that_cannot_work_is_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"must be|cannot be"):
        BufferRule(**kwargs)
