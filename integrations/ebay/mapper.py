"""eBay Sell Fulfillment ``Order`` → ``CanonicalOrder``.

What means what (https://developer.ebay.com/api-docs/sell/fulfillment/types/sel:PricingSummary):

- ``subtotal`` = ``pricingSummary.priceSubtotal`` (all units of all lines, *before* discounts);
  ``discount_total`` = |``priceDiscount``| (eBay documents it as a negative number);
  ``shipping_total`` = ``deliveryCost`` - |``deliveryDiscount``|; ``tax_total`` = ``tax``;
  ``total`` = ``pricingSummary.total``. The connector asks for ``fieldGroups=TAX_BREAKDOWN`` so
  that eBay Collect-and-Remit tax is inside the totals (the spec says it is left out otherwise).
- A line's ``lineItemCost`` is unit price * quantity; its canonical ``total`` is the goods after
  the line's promotions (``discountedLineItemCost``), like the other channels' line totals.
  eBay's own ``lineItems[].total`` also holds delivery and tax; it stays in ``raw``.
- Status: ``cancelStatus.cancelState == CANCELED`` → ``cancelled``, anything else → ``new``;
  ``orderFulfillmentStatus`` NOT_STARTED / IN_PROGRESS / FULFILLED → ``fulfillment_status``
  unfulfilled / partial / fulfilled (the vocabulary the dashboard already shows for Shopify).
  An order fulfilled on eBay is still ``new`` to us: our own pipeline decides what happens next.
- eBay managed payments collects the buyer's money, so ``payment_collected_by_marketplace`` is
  always true; ``orderPaymentStatus`` (PAID, PENDING, FAILED, FULLY_REFUNDED,
  PARTIALLY_REFUNDED) becomes ``financial_status`` in lower case.

Anything that cannot be mapped raises ``PayloadError`` naming field paths, never their values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from domain.canonical import Address, CanonicalLine, CanonicalOrder
from domain.errors import PayloadError
from domain.states import OrderState
from integrations.ebay.payloads import EbayAmount, EbayContact, EbayLineItem, EbayOrder

__all__ = ["map_order"]

_FULFILLMENT_STATUS = {
    "NOT_STARTED": "unfulfilled",
    "IN_PROGRESS": "partial",
    "FULFILLED": "fulfilled",
}
_UNIT_PRICE_PLACES = Decimal("0.0001")  # when lineItemCost / quantity is not exact


def _fields(exc: ValidationError, prefix: str = "") -> str:
    """``lineItems.0.quantity (int_parsing)``: where and what kind, never the input value."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:10]:
        loc = ".".join(str(p) for p in error["loc"])
        parts.append(f"{prefix}{loc} ({error['type']})")
    return ", ".join(parts)


def _money(amount: EbayAmount | None, currency: str, path: str) -> Decimal:
    if amount is None:
        return Decimal(0)
    if amount.currency.upper() != currency:
        raise PayloadError(f"eBay order: {path}.currency differs from pricingSummary.total")
    return amount.value


def _sum(values: Iterable[Decimal]) -> Decimal:
    return sum(values, Decimal(0))


def _aware(value: dt.datetime | None, path: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise PayloadError(f"eBay order: {path} has no time zone")
    return value


def _address(contact: EbayContact | None) -> Address | None:
    if contact is None:
        return None
    addr = contact.contactAddress
    return Address(
        name=contact.fullName or None,
        company=contact.companyName or None,
        line1=(addr.addressLine1 or None) if addr else None,
        line2=(addr.addressLine2 or None) if addr else None,
        city=(addr.city or None) if addr else None,
        region=(addr.stateOrProvince or addr.county or None) if addr else None,
        postal_code=(addr.postalCode or None) if addr else None,
        country_code=(addr.countryCode or None) if addr else None,
        phone=(contact.primaryPhone.phoneNumber or None) if contact.primaryPhone else None,
    )


def _line(item: EbayLineItem, index: int, currency: str) -> CanonicalLine:
    path = f"lineItems.{index}"
    cost = _money(item.lineItemCost, currency, f"{path}.lineItemCost")
    if item.discountedLineItemCost is not None:
        discounted = _money(item.discountedLineItemCost, currency, f"{path}.discountedLineItemCost")
        discount = cost - discounted
    else:
        discount = _sum(
            abs(_money(p.discountAmount, currency, f"{path}.appliedPromotions.{i}.discountAmount"))
            for i, p in enumerate(item.appliedPromotions)
        )
    tax = _sum(
        _money(t.amount, currency, f"{path}.taxes.{i}.amount") for i, t in enumerate(item.taxes)
    )
    unit_price = cost
    if item.quantity > 1:
        unit_price = cost / item.quantity
        if unit_price * item.quantity != cost:  # e.g. 10.00 for 3: keep 4 places, not 28
            unit_price = unit_price.quantize(_UNIT_PRICE_PLACES)
    return CanonicalLine(
        external_id=item.lineItemId,
        sku=item.sku or None,
        title=item.title or "",
        quantity=item.quantity,
        unit_price=unit_price,
        tax=tax,
        discount=discount,
        total=cost - discount,
    )


def _build(order: EbayOrder, payload: dict[str, Any], account: str) -> CanonicalOrder:
    pricing = order.pricingSummary
    currency = pricing.total.currency.upper()
    lines = [_line(item, i, currency) for i, item in enumerate(order.lineItems)]

    subtotal = (
        _money(pricing.priceSubtotal, currency, "pricingSummary.priceSubtotal")
        if pricing.priceSubtotal is not None
        else _sum(line.unit_price * line.quantity for line in lines)
    )
    discount_total = (
        abs(_money(pricing.priceDiscount, currency, "pricingSummary.priceDiscount"))
        if pricing.priceDiscount is not None
        else _sum(line.discount for line in lines)
    )
    tax_total = (
        _money(pricing.tax, currency, "pricingSummary.tax")
        if pricing.tax is not None
        else _sum(line.tax for line in lines)
    )
    shipping_total = _money(pricing.deliveryCost, currency, "pricingSummary.deliveryCost") - abs(
        _money(pricing.deliveryDiscount, currency, "pricingSummary.deliveryDiscount")
    )

    cancel = order.cancelStatus
    cancelled = cancel is not None and cancel.cancelState == "CANCELED"
    updated_at = order.lastModifiedDate
    _aware(updated_at, "lastModifiedDate")
    cancelled_at = _aware(cancel.cancelledDate if cancel else None, "cancelStatus.cancelledDate")
    if cancelled and cancelled_at is None:
        cancelled_at = updated_at

    ship_to = None
    if order.fulfillmentStartInstructions:
        step = order.fulfillmentStartInstructions[0].shippingStep
        ship_to = step.shipTo if step else None
    buyer = order.buyer
    registration = buyer.buyerRegistrationAddress if buyer else None

    fulfillment = order.orderFulfillmentStatus
    return CanonicalOrder(
        channel="ebay",
        account=account,
        external_id=order.orderId,
        external_number=order.salesRecordReference or None,
        status=OrderState.CANCELLED if cancelled else OrderState.NEW,
        marketplace_status="CANCELED" if cancelled else fulfillment,
        financial_status=order.orderPaymentStatus.lower() if order.orderPaymentStatus else None,
        fulfillment_status=_FULFILLMENT_STATUS.get(fulfillment or "", fulfillment),
        currency=currency,
        subtotal=subtotal,
        tax_total=tax_total,
        shipping_total=shipping_total,
        discount_total=discount_total,
        total=pricing.total.value,
        lines=lines,
        shipping_address=_address(ship_to),
        buyer_name=(registration.fullName if registration else None)
        or (buyer.username if buyer else None)
        or None,
        # eBay keeps the buyer's e-mail for 14 days only; either copy may be missing
        buyer_email=(registration.email if registration else None)
        or (ship_to.email if ship_to else None)
        or None,
        # managed payments: eBay charges the buyer and pays the seller out
        payment_collected_by_marketplace=True,
        created_at=_aware(order.creationDate, "creationDate"),
        updated_at=updated_at,
        cancelled_at=cancelled_at,
        raw=payload,
    )


def map_order(payload: dict[str, Any], account: str) -> CanonicalOrder:
    """Map one eBay ``Order`` object. Raises ``PayloadError`` for anything we cannot map."""
    if not isinstance(payload, dict):
        raise PayloadError("eBay order: not a JSON object")
    try:
        order = EbayOrder.model_validate(payload)
    except ValidationError as exc:
        raise PayloadError(f"eBay order: invalid fields: {_fields(exc)}") from None
    except ArithmeticError as exc:  # defensive: a number pydantic handed straight to Decimal
        raise PayloadError(f"eBay order: unreadable amount ({type(exc).__name__})") from None
    try:
        return _build(order, payload, account)
    except PayloadError:
        raise
    except ValidationError as exc:
        # the payload parsed but a value does not fit the canonical model (e.g. currency "12$")
        raise PayloadError(
            f"eBay order {order.orderId}: cannot map: {_fields(exc, 'canonical ')}"
        ) from None
    except (ArithmeticError, ValueError, TypeError) as exc:  # Decimal overflow and the like
        raise PayloadError(
            f"eBay order {order.orderId}: cannot map amounts ({type(exc).__name__})"
        ) from None
