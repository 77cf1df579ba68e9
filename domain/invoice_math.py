"""The arithmetic of an invoice or credit note: lines whose columns add up to the totals.

Every line has quantity, unit price, discount, net (quantity x unit price - discount), tax
rate, tax and gross (net + tax); shipping is a line of its own. Each money column is rounded
to the currency's minor unit (``domain.money.round_money``) *before* it is summed, so the
totals are the exact sums of the printed columns. When the marketplace's total differs from
that sum (its own rounding, an order-level fee we have no line for), one ``adjustment`` line
carries the difference, so the document's total is what the buyer was charged and the columns
still add up. A credit note is the same lines with every money column negated.

Pure: no database, no PDF.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from domain.money import round_money, to_decimal

__all__ = [
    "ADJUSTMENT",
    "SHIPPING",
    "DocLine",
    "Totals",
    "build",
    "from_json",
    "negate",
    "tax_rate",
    "to_json",
    "totals",
]

SHIPPING = "shipping"
ADJUSTMENT = "adjustment"
_HUNDRED = Decimal(100)
_RATE_PLACES = Decimal("0.01")


@dataclass(frozen=True)
class DocLine:
    """One printed line. ``ref`` is the order line's external id, ``shipping`` or
    ``adjustment``."""

    ref: str
    sku: str | None
    title: str
    quantity: int
    unit_price: Decimal
    discount: Decimal
    net: Decimal
    tax_rate: Decimal  # percent, two places (display; the tax amount is the marketplace's)
    tax: Decimal
    gross: Decimal


@dataclass(frozen=True)
class Totals:
    discount: Decimal
    net: Decimal
    tax: Decimal
    gross: Decimal


def tax_rate(net: Decimal, tax: Decimal) -> Decimal:
    """The rate the marketplace's tax amount means on ``net``, in percent (6.00 for 6 %)."""
    if not net:
        return Decimal("0.00")
    return (tax * _HUNDRED / net).quantize(_RATE_PLACES)


def line(
    currency: str,
    *,
    ref: str,
    sku: str | None,
    title: str,
    quantity: int,
    unit_price: Decimal,
    discount: Decimal,
    tax: Decimal,
    net: Decimal | None = None,
) -> DocLine:
    """A line from the marketplace's numbers; ``net`` when the marketplace states it (its line
    total after discount, a refund's subtotal), else quantity x unit price - discount. Either
    way the row reads exactly: quantity x unit price (rounded) - discount = net."""
    amount = round_money(unit_price * quantity, currency)
    if net is None:
        discount_value = round_money(discount, currency)
        net_value = amount - discount_value
    else:
        net_value = round_money(net, currency)
        discount_value = amount - net_value
    tax_value = round_money(tax, currency)
    return DocLine(
        ref=ref,
        sku=sku,
        title=title,
        quantity=quantity,
        unit_price=unit_price,
        discount=discount_value,
        net=net_value,
        tax_rate=tax_rate(net_value, tax_value),
        tax=tax_value,
        gross=net_value + tax_value,
    )


def totals(lines: Iterable[DocLine]) -> Totals:
    """Each column summed: exactly what the printed columns add up to."""
    items = list(lines)
    zero = Decimal(0)
    return Totals(
        discount=sum((x.discount for x in items), zero),
        net=sum((x.net for x in items), zero),
        tax=sum((x.tax for x in items), zero),
        gross=sum((x.gross for x in items), zero),
    )


def build(
    currency: str,
    lines: Sequence[DocLine],
    *,
    shipping: Decimal = Decimal(0),
    shipping_tax: Decimal = Decimal(0),
    charged: Decimal | None = None,
) -> list[DocLine]:
    """The document's lines: ``lines``, a shipping line when there is shipping, and an
    adjustment line when ``charged`` (what the buyer paid, as the marketplace says) differs
    from the sum of the rest."""
    result = list(lines)
    if shipping or shipping_tax:
        result.append(
            line(
                currency,
                ref=SHIPPING,
                sku=None,
                title="Shipping",
                quantity=1,
                unit_price=round_money(shipping, currency),
                discount=Decimal(0),
                tax=shipping_tax,
            )
        )
    if charged is not None:
        difference = round_money(charged, currency) - totals(result).gross
        if difference:
            result.append(
                line(
                    currency,
                    ref=ADJUSTMENT,
                    sku=None,
                    title="Adjustment",
                    quantity=1,
                    unit_price=difference,
                    discount=Decimal(0),
                    tax=Decimal(0),
                )
            )
    return result


def negate(lines: Iterable[DocLine]) -> list[DocLine]:
    """A credit note's lines: the same quantities and rates, every amount negated."""
    return [
        replace(
            x,
            unit_price=-x.unit_price,
            discount=-x.discount,
            net=-x.net,
            tax=-x.tax,
            gross=-x.gross,
        )
        for x in lines
    ]


def to_json(lines: Iterable[DocLine]) -> list[dict[str, Any]]:
    """For ``invoices.lines``: amounts as strings (never float)."""
    return [
        {
            "ref": x.ref,
            "sku": x.sku,
            "title": x.title,
            "quantity": x.quantity,
            "unit_price": str(x.unit_price),
            "discount": str(x.discount),
            "net": str(x.net),
            "tax_rate": str(x.tax_rate),
            "tax": str(x.tax),
            "gross": str(x.gross),
        }
        for x in lines
    ]


def from_json(rows: Iterable[Mapping[str, Any]]) -> list[DocLine]:
    return [
        DocLine(
            ref=str(r["ref"]),
            sku=r.get("sku"),
            title=str(r.get("title") or ""),
            quantity=int(r["quantity"]),
            unit_price=to_decimal(r["unit_price"]),
            discount=to_decimal(r["discount"]),
            net=to_decimal(r["net"]),
            tax_rate=to_decimal(r["tax_rate"]),
            tax=to_decimal(r["tax"]),
            gross=to_decimal(r["gross"]),
        )
        for r in rows
    ]
