"""Pydantic shapes of WooCommerce REST v3 order JSON (the fields we read; the rest stays in
``raw``). An ``order.*`` webhook body is the same REST order resource.

Quirks (see fixtures/official/SOURCES.md and
https://woocommerce.github.io/woocommerce-rest-api-docs/#order-properties):

- ``id`` is a JSON integer, ``number`` a string (``"727"``): both kept as strings;
- money is a decimal string (``"29.35"``) except ``line_items[].price``, a JSON number (``3``);
- ``""`` stands for a missing value (``sku``, ``address_2``, ``transaction_id``) and ``null``
  for missing dates (``date_paid``, ``date_completed``);
- ``date_*`` are shop-local times WITHOUT a zone; only the ``date_*_gmt`` twins are usable,
  and they carry no ``Z`` either: read them as UTC;
- ``refunds[].total`` is negative (``"-10.00"``).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from domain.canonical import to_decimal

__all__ = [
    "WooAddress",
    "WooFeeLine",
    "WooLineItem",
    "WooOrder",
    "WooRefundSummary",
    "WooShippingLine",
]


def _id_str(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("id must be a number or string")
    return str(value) if isinstance(value, int) else value


def _blank_to_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _money(value: Any) -> Decimal:
    try:
        return to_decimal(value)
    except ArithmeticError as exc:  # decimal.InvalidOperation: pydantic only catches ValueError
        raise ValueError("not a decimal amount") from exc


def _optional_money(value: Any) -> Decimal | None:
    value = _blank_to_none(value)
    return None if value is None else _money(value)


def _gmt(value: Any) -> Any:
    """A ``*_gmt`` timestamp: naive text means UTC (Woo never adds the ``Z``)."""
    value = _blank_to_none(value)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("timestamp must be a string")
    parsed = dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


IdStr = Annotated[str, BeforeValidator(_id_str), Field(min_length=1, max_length=64)]
OptStr = Annotated[str | None, BeforeValidator(_blank_to_none)]
Money = Annotated[Decimal, BeforeValidator(_money)]
OptMoney = Annotated[Decimal | None, BeforeValidator(_optional_money)]
GmtTimestamp = Annotated[dt.datetime | None, BeforeValidator(_gmt)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class WooLineItem(_Lenient):
    id: IdStr
    name: OptStr = None
    product_id: int | None = None
    variation_id: int | None = None
    quantity: int = Field(ge=0)
    sku: OptStr = None
    subtotal: OptMoney = None  # before coupons, excluding tax
    subtotal_tax: OptMoney = None
    total: Money  # after coupons, excluding tax
    total_tax: OptMoney = None
    price: OptMoney = None  # a JSON number: total / quantity


class WooShippingLine(_Lenient):
    total: Money
    total_tax: OptMoney = None
    method_title: OptStr = None


class WooFeeLine(_Lenient):
    total: Money
    total_tax: OptMoney = None


class WooRefundSummary(_Lenient):
    id: IdStr | None = None
    total: Money  # negative


class WooAddress(_Lenient):
    first_name: OptStr = None
    last_name: OptStr = None
    company: OptStr = None
    address_1: OptStr = None
    address_2: OptStr = None
    city: OptStr = None
    state: OptStr = None
    postcode: OptStr = None
    country: OptStr = None
    email: OptStr = None
    phone: OptStr = None


class WooOrder(_Lenient):
    id: IdStr
    number: Annotated[str | None, BeforeValidator(lambda v: _blank_to_none(_id_str(v)))] = None
    status: str = Field(min_length=1)
    currency: str
    date_created_gmt: GmtTimestamp = None
    date_modified_gmt: Annotated[dt.datetime, BeforeValidator(_gmt)]
    date_paid: OptStr = None  # shop-local; only read to tell "paid" when the _gmt twin is absent
    date_paid_gmt: GmtTimestamp = None
    date_completed_gmt: GmtTimestamp = None
    discount_total: OptMoney = None
    shipping_total: OptMoney = None
    total: Money
    total_tax: OptMoney = None
    prices_include_tax: bool = False
    billing: WooAddress | None = None
    shipping: WooAddress | None = None
    payment_method: OptStr = None
    transaction_id: OptStr = None
    meta_data: list[dict[str, Any]] = Field(default_factory=list)
    line_items: list[WooLineItem] = Field(default_factory=list)
    shipping_lines: list[WooShippingLine] = Field(default_factory=list)
    fee_lines: list[WooFeeLine] = Field(default_factory=list)
    refunds: list[WooRefundSummary] = Field(default_factory=list)
