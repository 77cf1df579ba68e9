"""Amazon SP-API order → ``CanonicalOrder``, for both Orders API versions.

``map_order(payload, account)`` takes ONE order:

- Orders v0: the ``Order`` object of ``getOrders``/``getOrder`` with the items of
  ``getOrderItems`` merged in as ``"OrderItems": [...]`` (all pages; v0 returns items from a
  separate call). Without ``OrderItems`` the order maps with no lines.
- Orders 2026-01-01: the ``order`` object of ``searchOrders``/``getOrder`` (items embedded as
  ``orderItems``).

A single-order envelope (``{"payload": {...}}`` from v0 ``getOrder``, ``{"order": {...}}`` from
2026 ``getOrder``) is unwrapped. Anything that cannot be mapped raises ``PayloadError`` naming
the field paths, never their values (payloads carry buyer PII).

Money: v0 ``ItemPrice`` is unit price x quantity, so the unit price is derived; a ``Pending``
order has no ``OrderTotal``, so the total is derived from the items (0 without items). Amazon
collects the buyer's payment on every order, so ``payment_collected_by_marketplace`` is True.

Fulfilment: an order Amazon ships from its own warehouse (FBA: v0 ``FulfillmentChannel: "AFN"``,
2026-01-01 ``fulfillment.fulfilledBy: "AMAZON"``) maps with ``fulfilled_by_marketplace`` True;
merchant-fulfilled ones (``MFN`` / ``MERCHANT``, or the field missing) with False.
https://developer-docs.amazon.com/sp-api/docs/orders-api-v0-reference#orderitem
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

import pydantic

from domain.canonical import Address, CanonicalLine, CanonicalOrder
from domain.errors import PayloadError
from domain.states import OrderState
from integrations.amazon.payloads import (
    NewAddress,
    NewMoney,
    NewOrder,
    NewOrderItem,
    V0Address,
    V0Money,
    V0Order,
    V0OrderItem,
)

__all__ = ["MARKETPLACE_CURRENCY", "map_order"]

ZERO = Decimal(0)

#: marketplace id → its currency, for orders that carry no money at all (Pending, no items).
#: https://developer-docs.amazon.com/sp-api/docs/marketplace-ids
MARKETPLACE_CURRENCY = {
    "ATVPDKIKX0DER": "USD",  # US
    "A2EUQ1WTGCTBG2": "CAD",  # CA
    "A1AM78C64UM0Y8": "MXN",  # MX
    "A2Q3Y263D00KWC": "BRL",  # BR
    "A1F83G8C2ARO7P": "GBP",  # UK
    "A1PA6795UKMFR9": "EUR",  # DE
    "A1RKKUPIHCS9HS": "EUR",  # ES
    "A13V1IB3VIYZZH": "EUR",  # FR
    "APJ6JRA9NG5V4": "EUR",  # IT
    "A1805IZSGTT6HS": "EUR",  # NL
    "AMEN7PMS3EDWL": "EUR",  # BE
    "A1C3SOZRARQ6R3": "PLN",  # PL
    "A2NODRKZP88ZB9": "SEK",  # SE
    "A33AVAJ2PDY3EV": "TRY",  # TR
    "A2VIGQ35RCS4UG": "AED",  # AE
    "A17E79C6D8DWNP": "SAR",  # SA
    "ARBP9OOSHTCHU": "EGP",  # EG
    "AE08WJ6YKNBMC": "ZAR",  # ZA
    "A21TJRUUN4KGV": "INR",  # IN
    "A19VAU5U5O7RUS": "SGD",  # SG
    "A39IBJ37TRP1C6": "AUD",  # AU
    "A1VC38T7YXB528": "JPY",  # JP
}

# v0 OrderStatus → (our state, financial status, fulfillment status). Shopify's words for the
# last two, so staff read one vocabulary. Unknown statuses map like Unshipped (kept verbatim in
# ``marketplace_status``).
_V0_STATUS: dict[str, tuple[OrderState, str, str | None]] = {
    "PendingAvailability": (OrderState.NEW, "pending", "unfulfilled"),  # pre-order, not paid
    "Pending": (OrderState.NEW, "pending", "unfulfilled"),  # payment not authorised yet
    "Unshipped": (OrderState.NEW, "paid", "unfulfilled"),
    "PartiallyShipped": (OrderState.NEW, "paid", "partial"),
    "Shipped": (OrderState.NEW, "paid", "fulfilled"),
    "InvoiceUnconfirmed": (OrderState.NEW, "paid", "fulfilled"),  # shipped, invoice pending
    "Canceled": (OrderState.CANCELLED, "voided", None),
    "Unfulfillable": (OrderState.NEW, "paid", "unfulfillable"),  # AFN only
}
_NEW_STATUS: dict[str, str] = {
    "PENDING_AVAILABILITY": "PendingAvailability",
    "PENDING": "Pending",
    "UNSHIPPED": "Unshipped",
    "PARTIALLY_SHIPPED": "PartiallyShipped",
    "SHIPPED": "Shipped",
    "CANCELLED": "Canceled",
    "UNFULFILLABLE": "Unfulfillable",
}


class _Mismatch(Exception):
    """A money field in another currency than the order's (a path, never a value)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _paths(exc: pydantic.ValidationError) -> str:
    locs = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
    return ", ".join(locs[:10]) or "(root)"


def _unwrap(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise PayloadError("amazon order: payload is not a JSON object")
    for key in ("payload", "order"):
        inner = payload.get(key)
        if len(payload) == 1 and isinstance(inner, dict):
            return inner
    return payload


def map_order(payload: dict[str, Any], account: str) -> CanonicalOrder:
    """Map one v0 (with merged ``OrderItems``) or 2026-01-01 order; ``PayloadError`` if not."""
    body = _unwrap(payload)
    is_new = "orderId" in body and "AmazonOrderId" not in body
    version = "2026-01-01" if is_new else "v0"
    try:
        order: V0Order | NewOrder = (
            NewOrder.model_validate(body) if is_new else V0Order.model_validate(body)
        )
    except pydantic.ValidationError as exc:
        raise PayloadError(f"amazon {version} order: invalid {_paths(exc)}") from None
    try:
        if isinstance(order, V0Order):
            return _map_v0(order, account, body)
        return _map_new(order, account, body)
    except _Mismatch as exc:
        raise PayloadError(f"amazon {version} order: currency differs at {exc.path}") from None
    except pydantic.ValidationError as exc:
        raise PayloadError(f"amazon {version} order: unmappable {_paths(exc)}") from None
    except (ArithmeticError, InvalidOperation, ValueError, OverflowError) as exc:
        raise PayloadError(f"amazon {version} order: bad amount ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------- helpers


def _unit_price(line_total: Decimal, quantity: int) -> Decimal:
    """Unit price from a quantity x price amount; exact when it divides, else to 1/10000."""
    if quantity <= 0:
        return line_total
    unit = line_total / quantity
    if unit * quantity != line_total:
        unit = unit.quantize(Decimal("0.0001"))
    return unit


def _join(*parts: str | None) -> str | None:
    text = ", ".join(p.strip() for p in parts if p and p.strip())
    return text or None


# ---------------------------------------------------------------------------- v0


def _v0_amount(money: V0Money | None, currency: str, path: str) -> Decimal:
    if money is None:
        return ZERO
    if money.CurrencyCode.upper() != currency:
        raise _Mismatch(path)
    return money.Amount


def _v0_currency(order: V0Order) -> str:
    if order.OrderTotal is not None:
        return order.OrderTotal.CurrencyCode.upper()
    for item in order.OrderItems:
        if item.ItemPrice is not None:
            return item.ItemPrice.CurrencyCode.upper()
    currency = MARKETPLACE_CURRENCY.get(order.MarketplaceId or "")
    if currency is None:
        raise PayloadError(
            "amazon v0 order: no currency in OrderTotal, OrderItems or MarketplaceId"
        )
    return currency


def _v0_address(addr: V0Address | None) -> Address | None:
    if addr is None:
        return None
    return Address(
        name=addr.Name or None,
        company=addr.CompanyName or None,
        line1=addr.AddressLine1 or None,
        line2=_join(addr.AddressLine2, addr.AddressLine3),
        city=addr.City or None,
        region=addr.StateOrRegion or addr.County or None,
        postal_code=addr.PostalCode or None,
        country_code=addr.CountryCode or None,
        phone=addr.Phone or None,
    )


def _v0_line(
    item: V0OrderItem, index: int, currency: str
) -> tuple[CanonicalLine, dict[str, Decimal]]:
    path = f"OrderItems.{index}"
    price = _v0_amount(item.ItemPrice, currency, f"{path}.ItemPrice")
    tax = _v0_amount(item.ItemTax, currency, f"{path}.ItemTax")
    promo = _v0_amount(item.PromotionDiscount, currency, f"{path}.PromotionDiscount")
    sums = {
        "shipping": _v0_amount(item.ShippingPrice, currency, f"{path}.ShippingPrice"),
        "shipping_tax": _v0_amount(item.ShippingTax, currency, f"{path}.ShippingTax"),
        "shipping_discount": _v0_amount(
            item.ShippingDiscount, currency, f"{path}.ShippingDiscount"
        ),
        "discount_tax": _v0_amount(
            item.ShippingDiscountTax, currency, f"{path}.ShippingDiscountTax"
        )
        + _v0_amount(item.PromotionDiscountTax, currency, f"{path}.PromotionDiscountTax"),
    }
    line = CanonicalLine(
        external_id=item.OrderItemId,
        sku=item.SellerSKU or None,
        title=item.Title or "",
        quantity=item.QuantityOrdered,
        unit_price=_unit_price(price, item.QuantityOrdered),
        tax=tax,
        discount=promo,
        total=price - promo,
    )
    return line, sums


def _map_v0(order: V0Order, account: str, raw: dict[str, Any]) -> CanonicalOrder:
    currency = _v0_currency(order)
    lines: list[CanonicalLine] = []
    shipping = ship_tax = ship_discount = discount_tax = ZERO
    for index, item in enumerate(order.OrderItems):
        line, sums = _v0_line(item, index, currency)
        lines.append(line)
        shipping += sums["shipping"]
        ship_tax += sums["shipping_tax"]
        ship_discount += sums["shipping_discount"]
        discount_tax += sums["discount_tax"]
    subtotal = sum((line.total + line.discount for line in lines), ZERO)
    discount = sum((line.discount for line in lines), ZERO) + ship_discount
    tax_total = sum((line.tax for line in lines), ZERO) + ship_tax - discount_tax
    if order.OrderTotal is not None:
        total = _v0_amount(order.OrderTotal, currency, "OrderTotal")
    else:  # Pending: Amazon sends no OrderTotal; derive it from the items (0 without items)
        total = subtotal + shipping + tax_total - discount
    state, financial, fulfillment = _V0_STATUS.get(
        order.OrderStatus, (OrderState.NEW, "paid", "unfulfilled")
    )
    buyer = order.BuyerInfo
    return CanonicalOrder(
        channel="amazon",
        account=account,
        external_id=order.AmazonOrderId,
        external_number=order.SellerOrderId or order.AmazonOrderId,
        status=state,
        marketplace_status=order.OrderStatus,
        financial_status=financial,
        fulfillment_status=fulfillment,
        currency=currency,
        subtotal=subtotal,
        tax_total=tax_total,
        shipping_total=shipping,
        discount_total=discount,
        total=total,
        lines=lines,
        shipping_address=_v0_address(order.ShippingAddress),
        buyer_name=(buyer.BuyerName or None) if buyer else None,
        buyer_email=(buyer.BuyerEmail or None) if buyer else None,
        payment_collected_by_marketplace=True,
        fulfilled_by_marketplace=(order.FulfillmentChannel or "").strip().upper() == "AFN",
        created_at=order.PurchaseDate,
        updated_at=order.LastUpdateDate,
        # v0 has no cancellation time; the last update is when the status became Canceled
        cancelled_at=order.LastUpdateDate if state is OrderState.CANCELLED else None,
        raw=raw,
    )


# ---------------------------------------------------------------------------- 2026-01-01


def _new_amount(money: NewMoney | None, currency: str, path: str) -> Decimal:
    if money is None:
        return ZERO
    if money.currencyCode.upper() != currency:
        raise _Mismatch(path)
    return money.amount


def _new_currency(order: NewOrder) -> str:
    if order.proceeds is not None and order.proceeds.grandTotal is not None:
        return order.proceeds.grandTotal.currencyCode.upper()
    for item in order.orderItems:
        price = item.product.price
        if price is not None and price.unitPrice is not None:
            return price.unitPrice.currencyCode.upper()
    currency = MARKETPLACE_CURRENCY.get(order.salesChannel.marketplaceId or "")
    if currency is None:
        raise PayloadError(
            "amazon 2026-01-01 order: no currency in proceeds.grandTotal, orderItems or "
            "salesChannel.marketplaceId"
        )
    return currency


def _breakdown(proceeds: Any, kind: str, currency: str, path: str) -> Decimal | None:
    if proceeds is None:
        return None
    found = [
        _new_amount(b.subtotal, currency, f"{path}.breakdowns.{i}.subtotal")
        for i, b in enumerate(proceeds.breakdowns)
        if b.type.upper() == kind
    ]
    return sum(found, ZERO) if found else None


def _new_address(addr: NewAddress | None) -> Address | None:
    if addr is None:
        return None
    return Address(
        name=addr.name or None,
        company=addr.companyName or None,
        line1=addr.addressLine1 or None,
        line2=_join(addr.addressLine2, addr.addressLine3),
        city=addr.city or None,
        region=addr.stateOrRegion or addr.districtOrCounty or None,
        postal_code=addr.postalCode or None,
        country_code=addr.countryCode or None,
        phone=addr.phone or None,
    )


def _new_line(item: NewOrderItem, index: int, currency: str) -> CanonicalLine:
    path = f"orderItems.{index}"
    qty = item.quantityOrdered
    price = item.product.price
    unit = _new_amount(
        price.unitPrice if price is not None else None, currency, f"{path}.product.price.unitPrice"
    )
    gross = _breakdown(item.proceeds, "ITEM", currency, f"{path}.proceeds")
    if gross is None:
        gross = unit * qty
    elif price is None or price.unitPrice is None:
        unit = _unit_price(gross, qty)
    # the DISCOUNT breakdown's sign is not documented; a discount is a positive reduction here
    discount = abs(_breakdown(item.proceeds, "DISCOUNT", currency, f"{path}.proceeds") or ZERO)
    return CanonicalLine(
        external_id=item.orderItemId,
        sku=item.product.sellerSku or None,
        title=item.product.title or "",
        quantity=qty,
        unit_price=unit,
        tax=_breakdown(item.proceeds, "TAX", currency, f"{path}.proceeds") or ZERO,
        discount=discount,
        total=gross - discount,
    )


def _map_new(order: NewOrder, account: str, raw: dict[str, Any]) -> CanonicalOrder:
    currency = _new_currency(order)
    lines = [_new_line(item, i, currency) for i, item in enumerate(order.orderItems)]
    items = [item.proceeds for item in order.orderItems]

    def order_level(kind: str) -> Decimal:
        """The order's own breakdown when present, else the sum over its items."""
        value = _breakdown(order.proceeds, kind, currency, "proceeds")
        if value is not None:
            return value
        per_item = (
            _breakdown(p, kind, currency, f"orderItems.{i}.proceeds") for i, p in enumerate(items)
        )
        return sum((v for v in per_item if v is not None), ZERO)

    subtotal = sum((line.total + line.discount for line in lines), ZERO)
    shipping = order_level("SHIPPING")
    tax_total = order_level("TAX")
    discount = abs(order_level("DISCOUNT"))
    grand = order.proceeds.grandTotal if order.proceeds is not None else None
    if grand is not None:
        total = _new_amount(grand, currency, "proceeds.grandTotal")
    else:  # pending orders carry no proceeds yet: derive from the items
        total = subtotal + shipping + tax_total - discount
    fulfillment_raw = order.fulfillment.fulfillmentStatus if order.fulfillment else "PENDING"
    status = _NEW_STATUS.get(fulfillment_raw.upper(), fulfillment_raw)
    state, financial, fulfillment = _V0_STATUS.get(status, (OrderState.NEW, "paid", "unfulfilled"))
    seller_alias = next(
        (a.aliasId for a in order.orderAliases if a.aliasType == "SELLER_ORDER_ID" and a.aliasId),
        None,
    )
    buyer = order.buyer
    recipient = order.recipient
    return CanonicalOrder(
        channel="amazon",
        account=account,
        external_id=order.orderId,
        external_number=seller_alias or order.orderId,
        status=state,
        marketplace_status=fulfillment_raw,
        financial_status=financial,
        fulfillment_status=fulfillment,
        currency=currency,
        subtotal=subtotal,
        tax_total=tax_total,
        shipping_total=shipping,
        discount_total=discount,
        total=total,
        lines=lines,
        shipping_address=_new_address(recipient.deliveryAddress if recipient else None),
        buyer_name=(buyer.buyerName or None) if buyer else None,
        buyer_email=(buyer.buyerEmail or None) if buyer else None,
        payment_collected_by_marketplace=True,
        fulfilled_by_marketplace=_fulfilled_by_amazon(order),
        created_at=order.createdTime,
        updated_at=order.lastUpdatedTime,
        cancelled_at=_cancelled_at(order, state),
        raw=raw,
    )


def _cancelled_at(order: NewOrder, state: OrderState) -> dt.datetime | None:
    return order.lastUpdatedTime if state is OrderState.CANCELLED else None


def _fulfilled_by_amazon(order: NewOrder) -> bool:
    by = order.fulfillment.fulfilledBy if order.fulfillment is not None else None
    return (by or "").strip().upper() == "AMAZON"
