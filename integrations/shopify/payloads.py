"""Pydantic shapes of Shopify's order payloads (the fields we read; the rest stays in ``raw``).

Two shapes of one order:

- REST / webhook JSON (``orders/*`` webhook bodies have the REST order shape): snake_case, ids
  are JSON integers above 2^32 (kept as strings), money is a decimal string, ``null`` is common
  (``fulfillment_status: null`` = unfulfilled), timestamps carry local offsets.
- GraphQL Admin API ``Order`` nodes: camelCase, ids are GIDs (``gid://shopify/Order/450789469``)
  with ``legacyResourceId`` the REST id, money in ``MoneyBag`` objects
  (``totalPriceSet.shopMoney.amount``), statuses as upper-case enums.
  https://shopify.dev/docs/api/admin-graphql/2026-07/objects/Order
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from domain.canonical import MoneyField, to_decimal

__all__ = [
    "GqlLineItem",
    "GqlMoneyBag",
    "GqlOrder",
    "GqlRefund",
    "ShopifyAddress",
    "ShopifyLineItem",
    "ShopifyOrder",
    "ShopifyRefund",
    "ShopifyTaxLine",
]


def _id_str(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("id must be a number or string")
    return str(value) if isinstance(value, int) else value


def _opt_money(value: Any) -> Decimal | None:
    return None if value is None or value == "" else to_decimal(value)


IdStr = Annotated[str, BeforeValidator(_id_str), Field(min_length=1, max_length=64)]
OptMoney = Annotated[Decimal | None, BeforeValidator(_opt_money)]


class _Lenient(BaseModel):
    #: fields we do not read are let through and not kept (the whole payload is kept as the
    #: order's ``raw``): keeping them cost a copy of each in every nested object
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# --- REST / webhook shape ---------------------------------------------------------------


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


class ShopifyRefundLineItem(_Lenient):
    line_item_id: IdStr
    quantity: int = Field(ge=0)
    #: return / cancel / legacy_restock put the units back; no_restock does not
    restock_type: str | None = None
    subtotal: OptMoney = None
    total_tax: OptMoney = None


class ShopifyRefundTransaction(_Lenient):
    kind: str | None = None
    status: str | None = None
    amount: OptMoney = None
    currency: str | None = None


class ShopifyOrderAdjustment(_Lenient):
    kind: str | None = None
    amount: OptMoney = None
    tax_amount: OptMoney = None


class ShopifyRefund(_Lenient):
    """A REST refund (``refunds/create`` webhook body, or an entry of an order's ``refunds``).
    https://shopify.dev/docs/api/admin-rest/2026-07/resources/refund"""

    id: IdStr
    order_id: IdStr
    created_at: dt.datetime | None = None
    refund_line_items: list[ShopifyRefundLineItem] = Field(default_factory=list)
    transactions: list[ShopifyRefundTransaction] = Field(default_factory=list)
    order_adjustments: list[ShopifyOrderAdjustment] = Field(default_factory=list)
    refund_shipping_lines: list[dict[str, Any]] = Field(default_factory=list)


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
    payment_gateway_names: list[str] = Field(default_factory=list)
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
    refunds: list[ShopifyRefund] = Field(default_factory=list)


# --- GraphQL Admin API shape ------------------------------------------------------------


class GqlMoney(_Lenient):
    amount: MoneyField
    currencyCode: str | None = None


class GqlMoneyBag(_Lenient):
    shopMoney: GqlMoney


class GqlTaxLine(_Lenient):
    priceSet: GqlMoneyBag
    rate: Decimal | None = None
    title: str | None = None


class GqlDiscountAllocation(_Lenient):
    allocatedAmountSet: GqlMoneyBag


class GqlLineItem(_Lenient):
    id: str = Field(min_length=1, max_length=128)
    sku: str | None = None
    name: str | None = None
    title: str | None = None
    variantTitle: str | None = None
    quantity: int = Field(ge=0)
    originalUnitPriceSet: GqlMoneyBag
    taxLines: list[GqlTaxLine] = Field(default_factory=list)
    discountAllocations: list[GqlDiscountAllocation] = Field(default_factory=list)


class GqlPageInfo(_Lenient):
    hasNextPage: bool = False
    endCursor: str | None = None


class GqlLineItemConnection(_Lenient):
    nodes: list[GqlLineItem] = Field(default_factory=list)
    pageInfo: GqlPageInfo = Field(default_factory=GqlPageInfo)


class GqlAddress(_Lenient):
    name: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    company: str | None = None
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    province: str | None = None
    provinceCode: str | None = None
    zip: str | None = None
    countryCodeV2: str | None = None
    phone: str | None = None


class GqlCustomer(_Lenient):
    firstName: str | None = None
    lastName: str | None = None


class GqlLineItemRef(_Lenient):
    id: str = Field(min_length=1, max_length=128)


class GqlRefundLineItem(_Lenient):
    lineItem: GqlLineItemRef
    quantity: int = Field(ge=0)
    #: RETURN / CANCEL / LEGACY_RESTOCK put the units back; NO_RESTOCK does not
    restockType: str | None = None
    subtotalSet: GqlMoneyBag | None = None
    totalTaxSet: GqlMoneyBag | None = None


class GqlRefundLineItemConnection(_Lenient):
    nodes: list[GqlRefundLineItem] = Field(default_factory=list)
    pageInfo: GqlPageInfo = Field(default_factory=GqlPageInfo)


class GqlRefundShippingLine(_Lenient):
    subtotalAmountSet: GqlMoneyBag | None = None
    taxAmountSet: GqlMoneyBag | None = None


class GqlRefundShippingLineConnection(_Lenient):
    nodes: list[GqlRefundShippingLine] = Field(default_factory=list)


class GqlTransaction(_Lenient):
    kind: str | None = None
    status: str | None = None
    amountSet: GqlMoneyBag | None = None


class GqlTransactionConnection(_Lenient):
    nodes: list[GqlTransaction] = Field(default_factory=list)


class GqlRefund(_Lenient):
    """An entry of the order's ``refunds`` (``queries.ORDER_REFUNDS``).
    https://shopify.dev/docs/api/admin-graphql/2026-07/objects/Refund"""

    id: str = Field(min_length=1, max_length=128)
    legacyResourceId: IdStr | None = None
    createdAt: dt.datetime | None = None
    refundLineItems: GqlRefundLineItemConnection = Field(
        default_factory=GqlRefundLineItemConnection
    )
    refundShippingLines: GqlRefundShippingLineConnection = Field(
        default_factory=GqlRefundShippingLineConnection
    )
    transactions: GqlTransactionConnection = Field(default_factory=GqlTransactionConnection)


class GqlOrder(_Lenient):
    id: str = Field(min_length=1, max_length=128)
    legacyResourceId: IdStr | None = None
    name: str | None = None
    email: str | None = None
    currencyCode: str
    subtotalPriceSet: GqlMoneyBag | None = None
    totalPriceSet: GqlMoneyBag
    totalTaxSet: GqlMoneyBag | None = None
    totalDiscountsSet: GqlMoneyBag | None = None
    totalShippingPriceSet: GqlMoneyBag | None = None
    displayFinancialStatus: str | None = None
    paymentGatewayNames: list[str] = Field(default_factory=list)
    displayFulfillmentStatus: str | None = None
    cancelledAt: dt.datetime | None = None
    cancelReason: str | None = None
    closedAt: dt.datetime | None = None
    createdAt: dt.datetime | None = None
    updatedAt: dt.datetime
    test: bool = False
    lineItems: GqlLineItemConnection = Field(default_factory=GqlLineItemConnection)
    shippingAddress: GqlAddress | None = None
    customer: GqlCustomer | None = None
    totalRefundedSet: GqlMoneyBag | None = None
    #: filled by the client from ``ORDER_REFUNDS`` when the order has refunds
    refunds: list[GqlRefund] = Field(default_factory=list)
