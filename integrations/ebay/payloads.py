"""Pydantic shapes of eBay Sell Fulfillment JSON (the fields we read; the rest stays in ``raw``).

Source: eBay's OAS3 spec ``sell_fulfillment_v1_oas3`` v1.20.7 (``Order``, ``LineItem``,
``PricingSummary``, ``Amount``, ``FulfillmentStartInstruction`` …,
https://developer.ebay.com/api-docs/sell/fulfillment/types/sel:Order).
Quirks: money is ``{"value": "<decimal string>", "currency": "USD"}``; the spec marks nothing as
required, so every field is optional here and the mapper decides what it cannot do without;
discounts (``priceDiscount``, ``deliveryDiscount``) are documented as negative numbers;
timestamps are UTC with milliseconds (``2015-08-04T19:09:02.768Z``).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from domain.canonical import to_decimal

__all__ = [
    "EbayAddress",
    "EbayAmount",
    "EbayBuyer",
    "EbayCancelStatus",
    "EbayContact",
    "EbayFulfillmentStartInstruction",
    "EbayLineItem",
    "EbayOrder",
    "EbayOrderPage",
    "EbayPricingSummary",
    "EbayShippingFulfillment",
    "EbayShippingFulfillmentPage",
    "EbayTax",
]

IdStr = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _amount(value: Any) -> Decimal:
    # any ArithmeticError (a Decimal trap) becomes a ValueError, which pydantic reports as a
    # field error, so the mapper can name the field instead of crashing
    try:
        return to_decimal(value)
    except ArithmeticError:
        raise ValueError("not a decimal amount") from None


Money = Annotated[Decimal, BeforeValidator(_amount)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class EbayAmount(_Lenient):
    value: Money
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3)]
    convertedFromValue: str | None = None
    convertedFromCurrency: str | None = None


class EbayTax(_Lenient):
    amount: EbayAmount | None = None  # "only returned if tax applies" even when the entry exists
    taxType: str | None = None


class EbayAppliedPromotion(_Lenient):
    promotionId: str | None = None
    description: str | None = None
    discountAmount: EbayAmount | None = None


class EbayDeliveryCost(_Lenient):
    shippingCost: EbayAmount | None = None
    discountAmount: EbayAmount | None = None
    handlingCost: EbayAmount | None = None


class EbayLineItem(_Lenient):
    lineItemId: IdStr
    sku: str | None = None
    title: str | None = None
    quantity: int = Field(ge=0)
    lineItemCost: EbayAmount
    discountedLineItemCost: EbayAmount | None = None
    total: EbayAmount | None = None
    deliveryCost: EbayDeliveryCost | None = None
    appliedPromotions: list[EbayAppliedPromotion] = Field(default_factory=list)
    taxes: list[EbayTax] = Field(default_factory=list)
    lineItemFulfillmentStatus: str | None = None


class EbayPricingSummary(_Lenient):
    priceSubtotal: EbayAmount | None = None
    priceDiscount: EbayAmount | None = None
    deliveryCost: EbayAmount | None = None
    deliveryDiscount: EbayAmount | None = None
    tax: EbayAmount | None = None
    fee: EbayAmount | None = None
    adjustment: EbayAmount | None = None
    total: EbayAmount


class EbayAddress(_Lenient):
    addressLine1: str | None = None
    addressLine2: str | None = None
    city: str | None = None
    county: str | None = None
    stateOrProvince: str | None = None
    postalCode: str | None = None
    countryCode: str | None = None


class EbayPhone(_Lenient):
    phoneNumber: str | None = None


class EbayContact(_Lenient):
    """The spec's ``ExtendedContact`` (``shipTo``, ``buyerRegistrationAddress``)."""

    fullName: str | None = None
    companyName: str | None = None
    contactAddress: EbayAddress | None = None
    primaryPhone: EbayPhone | None = None
    email: str | None = None


class EbayShippingStep(_Lenient):
    shippingCarrierCode: str | None = None
    shippingServiceCode: str | None = None
    shipTo: EbayContact | None = None


class EbayFulfillmentStartInstruction(_Lenient):
    fulfillmentInstructionsType: str | None = None
    shippingStep: EbayShippingStep | None = None


class EbayBuyer(_Lenient):
    username: str | None = None
    buyerRegistrationAddress: EbayContact | None = None


class EbayCancelStatus(_Lenient):
    cancelState: str | None = None
    cancelledDate: dt.datetime | None = None
    cancelRequests: list[dict[str, Any]] = Field(default_factory=list)


class EbayOrder(_Lenient):
    orderId: IdStr
    creationDate: dt.datetime | None = None
    lastModifiedDate: dt.datetime
    orderFulfillmentStatus: str | None = None
    orderPaymentStatus: str | None = None
    salesRecordReference: str | None = None
    buyer: EbayBuyer | None = None
    pricingSummary: EbayPricingSummary
    cancelStatus: EbayCancelStatus | None = None
    fulfillmentStartInstructions: list[EbayFulfillmentStartInstruction] = Field(
        default_factory=list
    )
    lineItems: list[EbayLineItem] = Field(default_factory=list)


class EbayOrderPage(_Lenient):
    """``OrderSearchPagedCollection``: one ``getOrders`` page (offset pagination)."""

    href: str | None = None
    limit: int | None = None
    offset: int | None = None
    total: int | None = None
    next: str | None = None
    prev: str | None = None
    orders: list[dict[str, Any]] = Field(default_factory=list)  # mapped one by one


class EbayShippingFulfillment(_Lenient):
    fulfillmentId: str | None = None
    shipmentTrackingNumber: str | None = None
    shippingCarrierCode: str | None = None
    shippedDate: str | None = None
    lineItems: list[dict[str, Any]] = Field(default_factory=list)


class EbayShippingFulfillmentPage(_Lenient):
    fulfillments: list[EbayShippingFulfillment] = Field(default_factory=list)
    total: int | None = None
