"""Minor units and Stripe's form encoding, as pure functions."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrations.payments.payloads import (
    Refund,
    currency_exponent,
    form_pairs,
    from_minor,
    refund_from_object,
    to_minor,
)

EXPONENTS = {"USD": 2, "EUR": 2, "JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3}


@pytest.mark.parametrize(("currency", "exponent"), sorted(EXPONENTS.items()))
def test_each_currency_has_its_documented_number_of_decimals(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent
    assert currency_exponent(currency.lower()) == exponent


@given(
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
    minor=st.integers(min_value=-(10**15), max_value=10**15),
)
def test_minor_units_round_trip_through_decimal(currency: str, minor: int) -> None:
    amount = from_minor(minor, currency)
    assert to_minor(amount, currency) == minor
    # the Decimal carries exactly the currency's places: 10.50, 500, 5.120
    assert amount.as_tuple().exponent == -currency_exponent(currency)


@given(
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
    data=st.data(),
)
def test_amounts_with_the_currencys_decimals_round_trip_through_minor_units(
    currency: str, data: st.DataObject
) -> None:
    places = currency_exponent(currency)
    amount = data.draw(
        st.decimals(
            min_value=Decimal("-1e9"),
            max_value=Decimal("1e9"),
            places=places,
            allow_nan=False,
            allow_infinity=False,
        )
    )
    assert from_minor(to_minor(amount, currency), currency) == amount


@given(
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
    minor=st.integers(min_value=-(10**12), max_value=10**12),
    extra=st.integers(min_value=1, max_value=9),
)
def test_an_amount_finer_than_the_minor_unit_is_refused_not_rounded(
    currency: str, minor: int, extra: int
) -> None:
    too_fine = from_minor(minor, currency) + Decimal(extra).scaleb(-currency_exponent(currency) - 1)
    with pytest.raises(ValueError):
        to_minor(too_fine, currency)


def test_trailing_zeros_beyond_the_minor_unit_are_fine() -> None:
    assert to_minor(Decimal("500.000"), "JPY") == 500
    assert to_minor(Decimal("10.5000"), "USD") == 1050
    assert to_minor(Decimal("1E+2"), "USD") == 10000


@pytest.mark.parametrize("bad", ["US", "usd1", "", "12$"])
def test_something_that_is_not_a_currency_code_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        currency_exponent(bad)


def test_non_finite_and_non_integer_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        to_minor(Decimal("NaN"), "USD")
    with pytest.raises(ValueError):
        from_minor(True, "USD")  # bool passes as int for mypy; from_minor refuses it


def test_nested_params_are_written_with_brackets_and_stripe_booleans() -> None:
    pairs = form_pairs(
        {
            "amount": 1050,
            "confirm": True,
            "metadata": {"order_ref": "order:1"},
            "payment_method_types": ["card", "link"],
            "description": None,
        }
    )
    assert pairs == [
        ("amount", "1050"),
        ("confirm", "true"),
        ("metadata[order_ref]", "order:1"),
        ("payment_method_types[0]", "card"),
        ("payment_method_types[1]", "link"),
    ]


def test_a_refund_object_becomes_a_refund_in_major_units() -> None:
    body = {
        "id": "re_1",
        "object": "refund",
        "amount": 1500,
        "currency": "jpy",
        "payment_intent": "pi_1",
        "status": "pending",
    }

    assert refund_from_object(body, replayed=True) == Refund(
        id="re_1",
        payment_intent="pi_1",
        amount=Decimal("1500"),
        currency="JPY",
        status="pending",
        replayed=True,
    )
    assert not refund_from_object(body).succeeded


@pytest.mark.parametrize(
    "body",
    [
        {"object": "payment_intent", "id": "pi_1"},
        {"object": "refund", "id": "re_1", "currency": "usd", "payment_intent": "pi_1"},
        {"object": "refund", "id": "re_1", "amount": "10", "currency": "usd",
         "payment_intent": "pi_1", "status": "succeeded"},
    ],
)  # fmt: skip
def test_something_that_is_not_a_refund_object_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        refund_from_object(body)
