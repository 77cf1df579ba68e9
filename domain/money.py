"""Money: ``Decimal`` amounts parsed from a marketplace's strings or JSON numbers, never through
float arithmetic, with a currency code beside them wherever they are stored."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["MoneyField", "to_decimal"]


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


#: a pydantic field holding money: accepts ``"598.94"``, ``3`` or ``0.06`` and keeps a Decimal
MoneyField = Annotated[Decimal, BeforeValidator(to_decimal)]
