"""Pydantic shapes of Shopify's REST / webhook order JSON (the fields we read; the rest is kept
in ``raw``). Webhook bodies for ``orders/*`` topics have the REST order shape.
Quirks: ids are JSON integers above 2^32 (kept as strings), money is a decimal string, ``null``
is common (``fulfillment_status: null`` = unfulfilled), timestamps carry local offsets.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from integrations.canonical import MoneyField

__all__ = ["ShopifyAddress", "ShopifyLineItem", "ShopifyOrder", "ShopifyTaxLine"]


def _id_str(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("id must be a number or string")
    return str(value) if isinstance(value, int) else value


IdStr = Annotated[str, BeforeValidator(_id_str), Field(min_length=1, max_length=64)]
OptMoney = Annotated[Decimal | None, BeforeValidator(lambda v: None if v in (None, "") else v)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ShopifyTaxLine(_Lenient):
    price: MoneyField
    rate: Decimal | None = None
    title: str | None = None


class ShopifyDiscountAllocation(_Lenient):
    amount: MoneyField


class ShopifyLineItem(_Lenient):
    id: IdStr
    sku: str | None = None
    name: str | None = None
    title: str | None = None
    variant_title: str | None = None
    quantity: int = Field(ge=0)
    price: MoneyField
    total_discount: OptMoney = None
    tax_lines: list[ShopifyTaxLine] = Field(default_factory=list)
    discount_allocations: list[ShopifyDiscountAllocation] = Field(default_factory=list)


class ShopifyShippingLine(_Lenient):
    price: MoneyField
    discounted_price: OptMoney = None


class ShopifyAddress(_Lenient):
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    province: str | None = None
    province_code: str | None = None
    zip: str | None = None
    country_code: str | None = None
    phone: str | None = None


class ShopifyCustomer(_Lenient):
    id: IdStr | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class ShopifyOrder(_Lenient):
    id: IdStr
    name: str | None = None
    order_number: int | None = None
    email: str | None = None
    currency: str
    subtotal_price: OptMoney = None
    total_price: MoneyField
    total_tax: OptMoney = None
    total_discounts: OptMoney = None
    total_shipping_price_set: dict[str, Any] | None = None
    financial_status: str | None = None
    fulfillment_status: str | None = None
    cancelled_at: dt.datetime | None = None
    cancel_reason: str | None = None
    closed_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime
    test: bool = False
    line_items: list[ShopifyLineItem] = Field(default_factory=list)
    shipping_lines: list[ShopifyShippingLine] = Field(default_factory=list)
    shipping_address: ShopifyAddress | None = None
    billing_address: ShopifyAddress | None = None
    customer: ShopifyCustomer | None = None
