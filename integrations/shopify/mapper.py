"""Shopify REST / webhook order → ``CanonicalOrder``.

Totals are the order's *original* ones (``total_price``), not ``current_total_price`` (which
drops refunded and removed lines): we invoice what was sold; refunds are separate documents.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from integrations.canonical import Address, CanonicalLine, CanonicalOrder, to_decimal
from integrations.shopify.payloads import ShopifyAddress, ShopifyOrder
from orders.states import Channel, OrderState

__all__ = ["map_order"]


def _address(addr: ShopifyAddress | None) -> Address | None:
    if addr is None:
        return None
    name = addr.name or " ".join(p for p in (addr.first_name, addr.last_name) if p) or None
    return Address(
        name=name,
        company=addr.company or None,
        line1=addr.address1 or None,
        line2=addr.address2 or None,
        city=addr.city or None,
        region=addr.province_code or addr.province or None,
        postal_code=addr.zip or None,
        country_code=addr.country_code or None,
        phone=addr.phone or None,
    )


def _shipping_total(order: ShopifyOrder) -> Decimal:
    money = (order.total_shipping_price_set or {}).get("shop_money") or {}
    if money.get("amount") is not None:
        return to_decimal(money["amount"])
    return sum((line.price for line in order.shipping_lines), Decimal(0))


def map_order(payload: dict[str, Any], account: str) -> CanonicalOrder:
    """Map one order payload. Raises ``pydantic.ValidationError`` on a payload we cannot use."""
    order = ShopifyOrder.model_validate(payload)
    lines = []
    for item in order.line_items:
        discount = sum((d.amount for d in item.discount_allocations), Decimal(0))
        if not item.discount_allocations and item.total_discount:
            discount = item.total_discount
        tax = sum((t.price for t in item.tax_lines), Decimal(0))
        title = item.title or item.name or ""
        if item.variant_title:
            title = f"{title} - {item.variant_title}"
        lines.append(
            CanonicalLine(
                external_id=item.id,
                sku=item.sku or None,
                title=title,
                quantity=item.quantity,
                unit_price=item.price,
                tax=tax,
                discount=discount,
                total=item.price * item.quantity - discount,
            )
        )
    subtotal = order.subtotal_price
    if subtotal is None:
        subtotal = sum((line.total for line in lines), Decimal(0))
    customer = order.customer
    buyer_name = None
    if customer is not None:
        buyer_name = " ".join(p for p in (customer.first_name, customer.last_name) if p) or None
    return CanonicalOrder(
        channel=Channel.SHOPIFY,
        account=account,
        external_id=order.id,
        external_number=order.name or (str(order.order_number) if order.order_number else None),
        status=OrderState.CANCELLED if order.cancelled_at else OrderState.NEW,
        marketplace_status="cancelled" if order.cancelled_at else (order.financial_status or None),
        financial_status=order.financial_status,
        fulfillment_status=order.fulfillment_status or "unfulfilled",
        currency=order.currency,
        subtotal=subtotal,
        tax_total=order.total_tax or Decimal(0),
        shipping_total=_shipping_total(order),
        discount_total=order.total_discounts or Decimal(0),
        total=order.total_price,
        lines=lines,
        shipping_address=_address(order.shipping_address),
        buyer_name=buyer_name,
        buyer_email=order.email or (customer.email if customer else None),
        # Shopify Payments / the shop's gateway collected the money at checkout
        payment_collected_by_marketplace=order.financial_status in ("paid", "partially_refunded"),
        created_at=order.created_at,
        updated_at=order.updated_at,
        cancelled_at=order.cancelled_at,
        raw=payload,
    )
