"""Money: ``Decimal`` amounts parsed from a marketplace's strings or JSON numbers, never through
float arithmetic, with a currency code beside them wherever they are stored."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import Field

__all__ = ["MoneyField", "minor_places", "round_money", "to_decimal"]

# ISO 4217 minor units that are not 2 (https://www.six-group.com/en/products-services/
# financial-information/data-standards.html, list one)
_ZERO_PLACES = frozenset(
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split()
)
_THREE_PLACES = frozenset("BHD IQD JOD KWD LYD OMR TND".split())


def minor_places(currency: str) -> int:
    """Decimal places of the currency's minor unit (ISO 4217): JPY 0, EUR 2, KWD 3."""
    code = currency.upper()
    if code in _ZERO_PLACES:
        return 0
    if code in _THREE_PLACES:
        return 3
    return 2


def round_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half-up to the currency's minor unit (``Decimal('1.005')`` EUR →
    ``1.01``); always with exactly that many places."""
    return amount.quantize(Decimal(1).scaleb(-minor_places(currency)), rounding=ROUND_HALF_UP)


def to_decimal(value: Any) -> Decimal:
    """A money value from a string (``"598.94"``) or a JSON number (``3``, ``0.06``)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a money amount: {value!r}")
    if isinstance(value, float):
        return Decimal(repr(value))  # the shortest text that round-trips, not the binary value
    text = str(value).strip()
    if not text:
        raise ValueError("empty money amount")
    try:
        result = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a money amount: {text[:20]!r}") from None
    if not result.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return result


#: a pydantic field holding money: accepts ``"598.94"``, ``3`` or ``0.06`` and keeps a Decimal,
#: as ``to_decimal`` reads them (a float by its shortest text, surrounding blanks let through; a
#: bool, an empty string, NaN or infinity refused), by pydantic's own decimal validator: a
#: Python validator per amount cost a quarter of validating a Shopify bulk order
#: (``tests/unit/test_money.py`` holds them to the same answers)
MoneyField = Annotated[Decimal, Field(allow_inf_nan=False)]
