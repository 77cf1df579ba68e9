"""``MoneyField`` (pydantic's decimal validator) reads money as ``to_decimal`` does."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from domain.money import MoneyField, to_decimal

_MONEY = TypeAdapter(MoneyField)


def _as_to_decimal(value: Any) -> Decimal | None:
    try:
        return to_decimal(value)
    except ValueError:
        return None


def _as_field(value: Any) -> Decimal | None:
    try:
        return _MONEY.validate_python(value)
    except ValidationError:
        return None


_TEXT = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.from_regex(r"\A\s?[+-]?\d{0,6}(\.\d{0,4})?([eE][+-]?\d{1,3})?\s?\Z"),
    st.sampled_from(["", " ", "NaN", "sNaN", "-Infinity", "inf", "1,5", "0x10", "1_000", "abc"]),
    st.text(max_size=8),
)
_ANY = st.one_of(
    _TEXT,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.decimals(allow_nan=False, allow_infinity=False),
)


@given(_ANY)
def test_a_money_field_reads_what_to_decimal_reads_and_refuses_what_it_refuses(value: Any) -> None:
    expected = _as_to_decimal(value)
    found = _as_field(value)
    assert found == expected
    if expected is not None:  # the same digits and exponent, not only an equal number
        assert found is not None and found.as_tuple() == expected.as_tuple()


@pytest.mark.parametrize("value", ["598.94", " 3 ", 3, 0.06, 1e20, "1E+2", Decimal("1.10")])
def test_amounts_in_every_shape_the_marketplaces_send(value: Any) -> None:
    assert _MONEY.validate_python(value) == to_decimal(value)


@pytest.mark.parametrize("value", [True, None, "", "NaN", "Infinity", float("nan"), "1,50"])
def test_what_is_not_an_amount_is_refused(value: Any) -> None:
    with pytest.raises(ValidationError):
        _MONEY.validate_python(value)
