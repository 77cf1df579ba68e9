"""WooCommerce REST v3 order (or ``order.*`` webhook body) → ``CanonicalOrder``.

Totals follow Woo's own arithmetic: ``total = Σ line totals + Σ fees + shipping_total +
total_tax``. Line ``total`` is after coupons and always excludes tax (even when
``prices_include_tax``), so the canonical ``subtotal`` is Σ line totals + Σ fees. Refunds do not
change ``total`` (Woo keeps the sold amount; refunds are separate negative summaries), they only
change ``financial_status``.

Statuses (https://woocommerce.com/document/managing-orders/order-statuses/):

==============================  ===========  =================  ===================
Woo status                      state        financial_status   fulfillment_status
==============================  ===========  =================  ===================
pending, on-hold                new          unpaid             unfulfilled
processing                      new          paid               unfulfilled
completed                       new          paid               fulfilled
cancelled, failed, trash        cancelled    voided / unpaid    unfulfilled
refunded                        cancelled    refunded           (as before)
anything else (plugins)         new          None               unfulfilled
==============================  ===========  =================  ===================

``completed`` stays ``new`` like a fulfilled Shopify order: the pipeline decides what a
marketplace-side shipment means for our own state; ``fulfillment_status`` carries the fact.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pydantic

from domain.canonical import (
    Address,
    CanonicalLine,
    CanonicalOrder,
    CanonicalRefund,
    PaymentFacts,
)
from domain.errors import PayloadError
from domain.states import OrderState
from integrations.woocommerce.payloads import WooAddress, WooLineItem, WooOrder

__all__ = ["map_order", "payload_error"]

_UNPAID = frozenset({"pending", "on-hold"})
_CANCELLED = frozenset({"cancelled", "failed", "refunded", "trash"})
# a unit price that does not divide evenly is kept to 4 places (Woo itself stores 6)
_UNIT_PLACES = Decimal("0.0001")


def payload_error(exc: pydantic.ValidationError, what: str = "woocommerce order") -> PayloadError:
    """A ``PayloadError`` naming field paths and error kinds, never the (customer) values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:10]:
        path = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"{path} ({err.get('type', 'invalid')})")
    return PayloadError(f"{what}: cannot map {', '.join(parts)}")


def _address(addr: WooAddress | None, phone: str | None) -> Address | None:
    if addr is None:
        return None
    name = " ".join(p for p in (addr.first_name, addr.last_name) if p) or None
    fields = (name, addr.company, addr.address_1, addr.city, addr.postcode, addr.country)
    if not any(fields):
        return None  # virtual orders send an all-"" shipping block
    return Address(
        name=name,
        company=addr.company,
        line1=addr.address_1,
        line2=addr.address_2,
        city=addr.city,
        region=addr.state,
        postal_code=addr.postcode,
        country_code=addr.country.upper() if addr.country else None,
        phone=addr.phone or phone,
    )


def _line(item: WooLineItem) -> CanonicalLine:
    subtotal = item.subtotal if item.subtotal is not None else item.total
    if item.quantity > 0:
        unit = subtotal / item.quantity
        exponent = unit.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -4:
            unit = unit.quantize(_UNIT_PLACES)
    else:
        unit = item.price if item.price is not None else Decimal(0)
    return CanonicalLine(
        external_id=item.id,
        sku=item.sku,
        title=item.name or "",
        quantity=item.quantity,
        unit_price=unit,
        tax=item.total_tax or Decimal(0),
        discount=subtotal - item.total,
        total=item.total,
    )


def _financial_status(order: WooOrder, status: str, paid: bool) -> str | None:
    refunded = -sum((r.total for r in order.refunds), Decimal(0))
    if status == "refunded":
        return "refunded"
    if refunded > 0:
        return "partially_refunded"
    if status in _UNPAID or status == "failed":
        return "unpaid"
    if status == "cancelled":
        return "voided" if not paid else "paid"
    if status in ("processing", "completed"):
        return "paid"
    return "paid" if paid else None


#: the meta keys WooCommerce's Stripe gateway writes (woocommerce-gateway-stripe: the
#: PaymentIntent id, and whether its charge was captured: "yes" / "no")
STRIPE_INTENT_META = "_stripe_intent_id"
STRIPE_CAPTURED_META = "_stripe_charge_captured"


def _meta(order: WooOrder, key: str) -> str | None:
    for item in order.meta_data:
        if item.get("key") == key and item.get("value") not in (None, ""):
            return str(item["value"])
    return None


def _payment_facts(order: WooOrder, paid: bool) -> PaymentFacts:
    """A Stripe-gateway order that is authorised but not captured (on-hold, ``_stripe_charge_
    captured`` = no) holds a PaymentIntent at the shop's Stripe account: we capture it there."""
    intent = _meta(order, STRIPE_INTENT_META)
    uncaptured = _meta(order, STRIPE_CAPTURED_META) == "no"
    held = intent is not None and uncaptured and not paid
    return PaymentFacts(
        gateway=order.payment_method,
        held_by="provider" if held else None,
        # kept after the capture too: a capture of ours in doubt is looked up by it
        authorization_id=intent,
        amount_captured=order.total if paid else None,
    )


def _refunds(order: WooOrder) -> list[CanonicalRefund]:
    """The order's refunds as its body lists them: id and amount only (Woo's summaries; the
    refunded line items are at ``/orders/{id}/refunds``, which intake does not fetch yet), so
    each is credited as an amount."""
    return [
        CanonicalRefund(
            external_id=refund.id,
            order_external_id=order.id,
            amount=-refund.total,
            currency=order.currency,
        )
        for refund in order.refunds
        if refund.id is not None and refund.total < 0
    ]


def _fulfillment_status(order: WooOrder, status: str) -> str:
    if status == "completed" or order.date_completed_gmt is not None:
        return "fulfilled"
    return "unfulfilled"


def _build(order: WooOrder, payload: dict[str, Any], account: str) -> CanonicalOrder:
    lines = [_line(item) for item in order.line_items]
    fees = sum((fee.total for fee in order.fee_lines), Decimal(0))
    subtotal = sum((item.total for item in order.line_items), Decimal(0)) + fees
    shipping_total = order.shipping_total
    if shipping_total is None:
        shipping_total = sum((s.total for s in order.shipping_lines), Decimal(0))
    status = order.status.lower()
    paid = order.date_paid_gmt is not None or order.date_paid is not None
    cancelled = status in _CANCELLED
    billing = order.billing
    buyer_name = None
    if billing is not None:
        buyer_name = " ".join(p for p in (billing.first_name, billing.last_name) if p) or None
    return CanonicalOrder(
        channel="woocommerce",
        account=account,
        external_id=order.id,
        external_number=order.number,
        status=OrderState.CANCELLED if cancelled else OrderState.NEW,
        marketplace_status=status,
        financial_status=_financial_status(order, status, paid),
        fulfillment_status=_fulfillment_status(order, status),
        currency=order.currency,
        subtotal=subtotal,
        tax_total=order.total_tax or Decimal(0),
        shipping_total=shipping_total,
        discount_total=order.discount_total or Decimal(0),
        total=order.total,
        lines=lines,
        shipping_address=_address(order.shipping, billing.phone if billing else None),
        buyer_name=buyer_name,
        buyer_email=billing.email if billing else None,
        # the shop's own gateway (Stripe, PayPal, …) took the money at checkout: never capture
        payment_collected_by_marketplace=paid and not cancelled,
        payment=_payment_facts(order, paid),
        refunds=_refunds(order),
        created_at=order.date_created_gmt,
        updated_at=order.date_modified_gmt,
        # Woo records no cancellation time; the last modification is when it became cancelled
        cancelled_at=order.date_modified_gmt if cancelled else None,
        raw=payload,
    )


def map_order(payload: dict[str, Any], account: str) -> CanonicalOrder:
    """Map one order. Raises ``PayloadError`` (field paths only) for anything unusable."""
    if not isinstance(payload, dict):
        raise PayloadError("woocommerce order: body is not a JSON object")
    try:
        order = WooOrder.model_validate(payload)
        return _build(order, payload, account)
    except pydantic.ValidationError as exc:
        raise payload_error(exc) from None
    except (ArithmeticError, ValueError, TypeError) as exc:
        # Decimal overflow / invalid operation on absurd amounts: name the kind, not the value
        raise PayloadError(f"woocommerce order: cannot map ({type(exc).__name__})") from None
