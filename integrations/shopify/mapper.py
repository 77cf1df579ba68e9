"""Shopify order payloads → ``CanonicalOrder``: the REST / webhook shape (``map_order``) and the
GraphQL Admin API ``Order`` node (``map_graphql_order``). Both give the same canonical order for
the same Shopify order, so a webhook and a poll never disagree.

Totals are the order's *original* ones (``total_price`` / ``totalPriceSet``), not the
``current_*`` ones (which drop refunded and removed lines): we invoice what was sold; refunds
are separate documents.

Anything that cannot be mapped raises ``PayloadError`` naming the field paths, never the values
(payloads carry customer names and addresses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

import pydantic

from domain.canonical import (
    CanonicalOrder,
    CanonicalRefund,
    RefundLine,
    to_decimal,
)
from domain.errors import PayloadError
from domain.states import OrderState
from integrations.shopify.payloads import (
    GqlAddress,
    GqlMoneyBag,
    GqlOrder,
    GqlRefund,
    ShopifyAddress,
    ShopifyOrder,
    ShopifyRefund,
)

__all__ = ["gid_to_id", "map_graphql_order", "map_order", "map_refund"]

#: refund line restock types that put the units back on the shelf (``no_restock`` does not)
_RESTOCKED = frozenset({"return", "cancel", "legacy_restock"})

T = TypeVar("T")

_ZERO = Decimal(0)

# GraphQL ``OrderDisplayFulfillmentStatus`` → the REST ``fulfillment_status`` words, so both
# mappers agree (REST says "partial" where GraphQL says PARTIALLY_FULFILLED).
_GQL_FULFILLMENT = {
    "UNFULFILLED": "unfulfilled",
    "FULFILLED": "fulfilled",
    "PARTIALLY_FULFILLED": "partial",
    "RESTOCKED": "restocked",
}

# Shopify Payments / the shop's gateway took the money at checkout: nothing for us to capture
_COLLECTED = frozenset({"paid", "partially_refunded", "refunded"})
# the money is authorised and held on Shopify: we capture it there (``orderCapture``)
_AUTHORIZED = frozenset({"authorized", "partially_paid"})


def _payment_facts(financial: str | None, gateways: list[str]) -> dict[str, Any]:
    """What Shopify's order says about its money (``PaymentFacts``, validated with the order):
    the gateway, and whether Shopify holds an authorization for us to capture. The
    authorization itself (its transaction id, amount and expiry) is read from the order's
    transactions when it is captured: neither the order body nor the poll's order node
    carries them."""
    return {"gateway": gateways[0] if gateways else None,
            "held_by": "marketplace" if financial in _AUTHORIZED else None}  # fmt: skip


def _describe(exc: pydantic.ValidationError, prefix: str) -> str:
    """Field paths and error types only: pydantic's own message repeats the input values."""
    parts = []
    for err in exc.errors()[:5]:
        path = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"{prefix}{path} ({err.get('type', 'invalid')})")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


@contextmanager
def _mapping(kind: str, stage: str) -> Iterator[None]:
    try:
        yield
    except PayloadError:
        raise
    except pydantic.ValidationError as exc:
        prefix = "" if stage == "payload" else "canonical."
        raise PayloadError(f"shopify {kind} order: invalid {_describe(exc, prefix)}") from None
    except (ArithmeticError, ValueError, TypeError) as exc:
        # Decimal overflow on absurd amounts, and the like
        raise PayloadError(f"shopify {kind} order: cannot map ({type(exc).__name__})") from None


def _validate(model: Callable[[Any], T], payload: Any, kind: str) -> T:
    if not isinstance(payload, dict):
        raise PayloadError(f"shopify {kind} order: payload is not a JSON object")
    with _mapping(kind, "payload"):
        return model(payload)


def gid_to_id(gid: str) -> str:
    """``gid://shopify/Order/450789469`` → ``450789469`` (the REST id webhooks carry)."""
    tail = gid.rsplit("/", 1)[-1].split("?", 1)[0]
    if not tail:
        raise PayloadError("shopify graphql order: id is not a Shopify GID")
    return tail


def _marketplace_status(cancelled: bool, closed: bool) -> str:
    # the REST ``status`` filter vocabulary: open / closed (archived) / cancelled
    return "cancelled" if cancelled else ("closed" if closed else "open")


# --- REST / webhook ---------------------------------------------------------------------


def _rest_address(addr: ShopifyAddress | None) -> dict[str, str | None] | None:
    """The fields of the canonical ``Address`` (validated with the order that holds it)."""
    if addr is None:
        return None
    name = addr.name or " ".join(p for p in (addr.first_name, addr.last_name) if p) or None
    return {
        "name": name,
        "company": addr.company or None,
        "line1": addr.address1 or None,
        "line2": addr.address2 or None,
        "city": addr.city or None,
        "region": addr.province_code or addr.province or None,
        "postal_code": addr.zip or None,
        "country_code": addr.country_code or None,
        "phone": addr.phone or None,
    }


def _rest_shipping_total(order: ShopifyOrder) -> Decimal:
    money = (order.total_shipping_price_set or {}).get("shop_money") or {}
    if isinstance(money, dict) and money.get("amount") is not None:
        return to_decimal(money["amount"])
    return sum((line.price for line in order.shipping_lines), _ZERO)


def _money_of(bag: Any) -> Decimal:
    shop = (bag or {}).get("shop_money") if isinstance(bag, dict) else None
    return to_decimal(shop["amount"]) if isinstance(shop, dict) and "amount" in shop else _ZERO


def _refund(refund: ShopifyRefund) -> CanonicalRefund:
    """Shopify's refund: its refund line items (net and tax as Shopify computed them, restocked
    unless ``no_restock``), shipping refunded (``refund_shipping_lines``, or the older
    ``shipping_refund`` order adjustment) and the money that went back (its successful refund
    transactions)."""
    lines = [
        RefundLine(
            line_external_id=item.line_item_id,
            quantity=item.quantity,
            subtotal=item.subtotal or _ZERO,
            tax=item.total_tax or _ZERO,
            restock=(item.restock_type or "") in _RESTOCKED,
        )
        for item in refund.refund_line_items
    ]
    shipping = sum(
        (_money_of(line.get("subtotal_amount_set")) for line in refund.refund_shipping_lines),
        _ZERO,
    )
    shipping_tax = sum(
        (_money_of(line.get("tax_amount_set")) for line in refund.refund_shipping_lines),
        _ZERO,
    )
    for adjustment in refund.order_adjustments:
        if adjustment.kind == "shipping_refund" and not refund.refund_shipping_lines:
            shipping -= adjustment.amount or _ZERO  # negative on the adjustment
            shipping_tax -= adjustment.tax_amount or _ZERO
    paid_back = [
        t for t in refund.transactions
        if (t.kind or "").lower() == "refund" and (t.status or "").lower() == "success"
    ]  # fmt: skip
    return CanonicalRefund(
        external_id=refund.id,
        order_external_id=refund.order_id,
        lines=lines,
        shipping=shipping,
        shipping_tax=shipping_tax,
        amount=sum((t.amount or _ZERO for t in paid_back), _ZERO),
        currency=next((t.currency for t in paid_back if t.currency), None),
        created_at=refund.created_at,
    )


def map_refund(payload: dict[str, Any], account: str) -> CanonicalRefund:
    """Map a ``refunds/create`` webhook body. Raises ``PayloadError`` if it cannot be mapped."""
    refund = _validate(ShopifyRefund.model_validate, payload, "refund")
    with _mapping("refund", "canonical"):
        return _refund(refund)


def map_order(payload: dict[str, Any], account: str) -> CanonicalOrder:
    """Map one REST / webhook order payload. Raises ``PayloadError`` if it cannot be mapped."""
    order = _validate(ShopifyOrder.model_validate, payload, "rest")
    with _mapping("rest", "canonical"):
        # plain dicts, validated once with the order (a bad line is named by its index)
        lines: list[dict[str, Any]] = []
        for item in order.line_items:
            discount = sum((d.amount for d in item.discount_allocations), _ZERO)
            if not item.discount_allocations and item.total_discount:
                discount = item.total_discount
            tax = sum((t.price for t in item.tax_lines), _ZERO)
            title = item.title or item.name or ""
            if item.variant_title:
                title = f"{title} - {item.variant_title}"
            lines.append({
                "external_id": item.id, "sku": item.sku or None, "title": title,
                "quantity": item.quantity, "unit_price": item.price, "tax": tax,
                "discount": discount, "total": item.price * item.quantity - discount,
            })  # fmt: skip
        subtotal = order.subtotal_price
        if subtotal is None:
            subtotal = sum((line["total"] for line in lines), _ZERO)
        customer = order.customer
        buyer_name = None
        if customer is not None:
            buyer_name = " ".join(p for p in (customer.first_name, customer.last_name) if p)
        number = order.name or (str(order.order_number) if order.order_number else None)
        return CanonicalOrder.model_validate({
            "channel": "shopify",
            "account": account,
            "external_id": order.id,
            "external_number": number,
            "status": OrderState.CANCELLED if order.cancelled_at else OrderState.NEW,
            "marketplace_status": _marketplace_status(
                bool(order.cancelled_at), bool(order.closed_at)
            ),
            "financial_status": order.financial_status,
            "fulfillment_status": order.fulfillment_status or "unfulfilled",
            "currency": order.currency,
            "subtotal": subtotal,
            "tax_total": order.total_tax or _ZERO,
            "shipping_total": _rest_shipping_total(order),
            "discount_total": order.total_discounts or _ZERO,
            "total": order.total_price,
            "lines": lines,
            "shipping_address": _rest_address(order.shipping_address),
            "buyer_name": buyer_name or None,
            "buyer_email": order.email or (customer.email if customer else None),
            "payment_collected_by_marketplace": order.financial_status in _COLLECTED,
            "payment": _payment_facts(order.financial_status, order.payment_gateway_names),
            "refunds": [_refund(refund) for refund in order.refunds],
            "created_at": order.created_at,
            "updated_at": order.updated_at,
            "cancelled_at": order.cancelled_at,
            "raw": payload,
        })  # fmt: skip


# --- GraphQL ----------------------------------------------------------------------------


def _amount(bag: GqlMoneyBag | None) -> Decimal | None:
    return None if bag is None else bag.shopMoney.amount


def _gql_address(addr: GqlAddress | None) -> dict[str, str | None] | None:
    """The fields of the canonical ``Address`` (validated with the order that holds it)."""
    if addr is None:
        return None
    name = addr.name or " ".join(p for p in (addr.firstName, addr.lastName) if p) or None
    return {
        "name": name,
        "company": addr.company or None,
        "line1": addr.address1 or None,
        "line2": addr.address2 or None,
        "city": addr.city or None,
        "region": addr.provinceCode or addr.province or None,
        "postal_code": addr.zip or None,
        "country_code": addr.countryCodeV2 or None,
        "phone": addr.phone or None,
    }


def _gql_refund(refund: GqlRefund, order_external_id: str) -> CanonicalRefund:
    """A GraphQL refund, as ``_refund`` maps the REST one: the same refund (its legacy id, the
    line items' ids) whether a webhook or a poll brings it, so it is recorded once."""
    if refund.refundLineItems.pageInfo.hasNextPage:
        raise PayloadError("shopify graphql refund: refundLineItems is not complete (hasNextPage)")
    lines = [
        RefundLine(
            line_external_id=gid_to_id(item.lineItem.id),
            quantity=item.quantity,
            subtotal=_amount(item.subtotalSet) or _ZERO,
            tax=_amount(item.totalTaxSet) or _ZERO,
            restock=(item.restockType or "").lower() in _RESTOCKED,
        )
        for item in refund.refundLineItems.nodes
    ]
    shipping = refund.refundShippingLines.nodes
    paid_back = [
        t for t in refund.transactions.nodes
        if (t.kind or "").upper() == "REFUND" and (t.status or "").upper() == "SUCCESS"
    ]  # fmt: skip
    return CanonicalRefund(
        external_id=refund.legacyResourceId or gid_to_id(refund.id),
        order_external_id=order_external_id,
        lines=lines,
        shipping=sum((_amount(x.subtotalAmountSet) or _ZERO for x in shipping), _ZERO),
        shipping_tax=sum((_amount(x.taxAmountSet) or _ZERO for x in shipping), _ZERO),
        amount=sum((_amount(t.amountSet) or _ZERO for t in paid_back), _ZERO),
        currency=next(
            (t.amountSet.shopMoney.currencyCode for t in paid_back if t.amountSet), None
        ),
        created_at=refund.createdAt,
    )


def map_graphql_order(node: dict[str, Any], account: str) -> CanonicalOrder:
    """Map one GraphQL ``Order`` node (the fields ``client.ORDER_FIELDS`` asks for).

    The node must hold *all* its line items (the client pages ``lineItems`` to the end first)
    and, when it has any, its refunds (``refunds``: the client adds them from
    ``ORDER_REFUNDS`` for an order whose ``totalRefundedSet`` is above zero).
    """
    order = _validate(GqlOrder.model_validate, node, "graphql")
    if order.lineItems.pageInfo.hasNextPage:
        raise PayloadError("shopify graphql order: lineItems is not complete (hasNextPage)")
    with _mapping("graphql", "canonical"):
        # the canonical order is validated once, its lines and address with it (as dicts):
        # a model built apart for each costs a validator call of its own
        lines: list[dict[str, Any]] = []
        for item in order.lineItems.nodes:
            unit = item.originalUnitPriceSet.shopMoney.amount
            discount = _ZERO
            for allocation in item.discountAllocations:
                discount += allocation.allocatedAmountSet.shopMoney.amount
            tax = _ZERO
            for tax_line in item.taxLines:
                tax += tax_line.priceSet.shopMoney.amount
            title = item.title or item.name or ""
            if item.variantTitle:
                title = f"{title} - {item.variantTitle}"
            lines.append({
                "external_id": gid_to_id(item.id),
                "sku": item.sku or None,
                "title": title,
                "quantity": item.quantity,
                "unit_price": unit,
                "tax": tax,
                "discount": discount,
                "total": unit * item.quantity - discount,
            })  # fmt: skip
        subtotal = _amount(order.subtotalPriceSet)
        if subtotal is None:
            subtotal = sum((line["total"] for line in lines), _ZERO)
        financial = order.displayFinancialStatus.lower() if order.displayFinancialStatus else None
        fulfillment = order.displayFulfillmentStatus or "UNFULFILLED"
        customer = order.customer
        buyer_name = None
        if customer is not None:
            buyer_name = " ".join(p for p in (customer.firstName, customer.lastName) if p)
        external_id = order.legacyResourceId or gid_to_id(order.id)
        return CanonicalOrder.model_validate({
            "channel": "shopify",
            "account": account,
            "external_id": external_id,
            "external_number": order.name,
            "status": OrderState.CANCELLED if order.cancelledAt else OrderState.NEW,
            "marketplace_status": _marketplace_status(bool(order.cancelledAt),
                                                      bool(order.closedAt)),
            "financial_status": financial,
            "fulfillment_status": _GQL_FULFILLMENT.get(fulfillment, fulfillment.lower()),
            "currency": order.currencyCode,
            "subtotal": subtotal,
            "tax_total": _amount(order.totalTaxSet) or _ZERO,
            "shipping_total": _amount(order.totalShippingPriceSet) or _ZERO,
            "discount_total": _amount(order.totalDiscountsSet) or _ZERO,
            "total": order.totalPriceSet.shopMoney.amount,
            "lines": lines,
            "shipping_address": _gql_address(order.shippingAddress),
            "buyer_name": buyer_name or None,
            "buyer_email": order.email or None,
            "payment_collected_by_marketplace": financial in _COLLECTED,
            "payment": _payment_facts(financial, order.paymentGatewayNames),
            "refunds": [_gql_refund(refund, external_id) for refund in order.refunds],
            "created_at": order.createdAt,
            "updated_at": order.updatedAt,
            "cancelled_at": order.cancelledAt,
            "raw": node,
        })  # fmt: skip
