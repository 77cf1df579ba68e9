"""Pydantic shapes of Amazon SP-API order JSON (the fields we read; the rest stays in ``raw``).

Two API versions, two spellings:

- Orders v0 (``/orders/v0/...``): PascalCase, money ``{"CurrencyCode": "USD", "Amount": "11.01"}``,
  items come from a separate ``getOrderItems`` call; the mapper expects them merged into the
  order as ``OrderItems``.
- Orders 2026-01-01 (``searchOrders`` / ``getOrder``): camelCase, money
  ``{"amount": "103.97", "currencyCode": "GBP"}``, items embedded as ``orderItems``.

Quirks handled here (see ``tests/fixtures/official/SOURCES.md``): booleans sent as strings
(``"IsGift": "false"``), order-item ids with leading zeros (always strings), epoch timestamps as
scientific-notation strings in the sandbox (``"1.569521782042E9"``), fields omitted rather than
null (a ``Pending`` order has no ``OrderTotal``), PII blocks missing without restricted data.
https://developer-docs.amazon.com/sp-api/docs/orders-api-v0-reference
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from domain.canonical import to_decimal

__all__ = [
    "AmazonTimestamp",
    "NewAddress",
    "NewMoney",
    "NewOrder",
    "NewOrderItem",
    "V0Address",
    "V0Money",
    "V0Order",
    "V0OrderItem",
    "parse_timestamp",
]

_EPOCH = re.compile(r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$")


def parse_timestamp(value: Any) -> Any:
    """ISO 8601 text as is (pydantic parses it); an epoch number or epoch string → aware UTC.

    The v0 sandbox answers ``"CreatedBefore": "1.569521782042E9"``: seconds since the epoch in
    scientific notation, as a string.
    """
    if isinstance(value, bool):
        raise ValueError("not a timestamp")
    if isinstance(value, int | float) or (isinstance(value, str) and _EPOCH.match(value.strip())):
        seconds = float(value)
        if not -62_135_596_800 <= seconds <= 253_402_300_799:  # years 1..9999
            raise ValueError("epoch out of range")
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    return value


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return value.astimezone(dt.UTC)


def _money(value: Any) -> Decimal:
    # canonical.to_decimal lets decimal.InvalidOperation through (not a ValueError, so pydantic
    # would not turn it into a ValidationError with the field's path)
    try:
        return to_decimal(value)
    except InvalidOperation:
        raise ValueError("not a decimal amount") from None


def _id_str(value: Any) -> Any:
    # ids are strings in every Amazon payload; an int would already have lost leading zeros
    if not isinstance(value, str):
        raise ValueError("id must be a string")
    return value


AmazonTimestamp = Annotated[dt.datetime, BeforeValidator(parse_timestamp), AfterValidator(_aware)]
MoneyField = Annotated[Decimal, BeforeValidator(_money)]
IdStr = Annotated[str, BeforeValidator(_id_str), Field(min_length=1, max_length=64)]
Currency = Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")]
#: booleans Amazon sends as "true"/"false" strings next to real booleans
LooseBool = Annotated[
    bool | None, BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v)
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---------------------------------------------------------------- Orders v0 (PascalCase)


class V0Money(_Lenient):
    CurrencyCode: Currency
    Amount: MoneyField


class V0Address(_Lenient):
    Name: str | None = None
    CompanyName: str | None = None
    AddressLine1: str | None = None
    AddressLine2: str | None = None
    AddressLine3: str | None = None
    City: str | None = None
    County: str | None = None
    District: str | None = None
    StateOrRegion: str | None = None
    PostalCode: str | None = None
    CountryCode: str | None = None
    Phone: str | None = None


class V0BuyerInfo(_Lenient):
    BuyerEmail: str | None = None
    BuyerName: str | None = None


class V0OrderItem(_Lenient):
    OrderItemId: IdStr
    ASIN: str | None = None
    SellerSKU: str | None = None
    Title: str | None = None
    QuantityOrdered: int = Field(ge=0)
    QuantityShipped: int | None = Field(default=None, ge=0)
    ItemPrice: V0Money | None = None  # unit price x quantity (ItemPrice excludes shipping)
    ItemTax: V0Money | None = None
    ShippingPrice: V0Money | None = None
    ShippingTax: V0Money | None = None
    ShippingDiscount: V0Money | None = None
    ShippingDiscountTax: V0Money | None = None
    PromotionDiscount: V0Money | None = None
    PromotionDiscountTax: V0Money | None = None
    IsGift: LooseBool = None


class V0Order(_Lenient):
    AmazonOrderId: IdStr
    SellerOrderId: str | None = None
    PurchaseDate: AmazonTimestamp
    LastUpdateDate: AmazonTimestamp
    OrderStatus: str
    FulfillmentChannel: str | None = None  # MFN (merchant) / AFN (Amazon)
    MarketplaceId: str | None = None
    OrderTotal: V0Money | None = None  # absent on Pending orders
    ShippingAddress: V0Address | None = None  # restricted data: often absent
    BuyerInfo: V0BuyerInfo | None = None
    OrderItems: list[V0OrderItem] = Field(default_factory=list)


# ---------------------------------------------------------------- Orders 2026-01-01 (camelCase)


class NewMoney(_Lenient):
    amount: MoneyField
    currencyCode: Currency


class NewBreakdown(_Lenient):
    type: str
    subtotal: NewMoney


class NewProceeds(_Lenient):
    grandTotal: NewMoney | None = None
    proceedsTotal: NewMoney | None = None
    breakdowns: list[NewBreakdown] = Field(default_factory=list)


class NewPrice(_Lenient):
    unitPrice: NewMoney | None = None


class NewProduct(_Lenient):
    asin: str | None = None
    title: str | None = None
    sellerSku: str | None = None
    price: NewPrice | None = None


class NewOrderItem(_Lenient):
    orderItemId: IdStr
    quantityOrdered: int = Field(ge=0)
    product: NewProduct
    proceeds: NewProceeds | None = None


class NewAddress(_Lenient):
    name: str | None = None
    companyName: str | None = None
    addressLine1: str | None = None
    addressLine2: str | None = None
    addressLine3: str | None = None
    city: str | None = None
    districtOrCounty: str | None = None
    stateOrRegion: str | None = None
    postalCode: str | None = None
    countryCode: str | None = None
    phone: str | None = None


class NewRecipient(_Lenient):
    deliveryAddress: NewAddress | None = None


class NewBuyer(_Lenient):
    buyerName: str | None = None
    buyerEmail: str | None = None


class NewSalesChannel(_Lenient):
    marketplaceId: str | None = None


class NewFulfillment(_Lenient):
    fulfillmentStatus: str
    fulfilledBy: str | None = None


class NewAlias(_Lenient):
    aliasId: str
    aliasType: str | None = None


class NewOrder(_Lenient):
    orderId: IdStr
    orderAliases: list[NewAlias] = Field(default_factory=list)
    createdTime: AmazonTimestamp
    lastUpdatedTime: AmazonTimestamp
    salesChannel: NewSalesChannel
    buyer: NewBuyer | None = None
    recipient: NewRecipient | None = None
    proceeds: NewProceeds | None = None
    fulfillment: NewFulfillment | None = None
    orderItems: list[NewOrderItem]
