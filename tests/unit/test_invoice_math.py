"""Invoice arithmetic (``domain.invoice_math``): every column adds up to its total, exactly, in
currencies with 0, 2 and 3 decimals; a credit note mirrors its invoice."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from domain import invoice_math
from domain.invoice_math import DocLine
from domain.money import minor_places, round_money

CURRENCIES = ("JPY", "EUR", "USD", "KWD", "BHD", "CLP")


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[DocLine], Decimal, Decimal]:
    currency = draw(st.sampled_from(CURRENCIES))
    places = minor_places(currency)
    # unit prices with up to 4 decimals (WooCommerce divides line totals by quantity)
    unit_cents = st.integers(min_value=0, max_value=5_000_000)
    lines = []
    for i in range(draw(st.integers(min_value=1, max_value=12))):
        quantity = draw(st.integers(min_value=1, max_value=50))
        unit = Decimal(draw(unit_cents)).scaleb(-4)
        gross = unit * quantity
        discount = (gross * Decimal(draw(st.integers(0, 100))) / 100).quantize(Decimal("0.0001"))
        rate = Decimal(draw(st.sampled_from([0, 5, 7, 8, 10, 19, 20, 21, 25])))
        tax = (gross - discount) * rate / 100  # unrounded: the document rounds it
        lines.append(
            invoice_math.line(
                currency,
                ref=str(i),
                sku=f"SKU-{i}",
                title="x",
                quantity=quantity,
                unit_price=unit,
                discount=discount,
                tax=tax,
            )
        )
    shipping = Decimal(draw(st.integers(0, 10_000))).scaleb(-places)
    charged = Decimal(draw(st.integers(0, 10**9))).scaleb(-places)
    return currency, lines, shipping, charged


def _places(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent


@given(documents())
def test_every_column_sums_exactly_to_its_total_in_the_currencys_minor_unit(
    document: tuple[str, list[DocLine], Decimal, Decimal],
) -> None:
    currency, lines, shipping, _ = document
    built = invoice_math.build(currency, lines, shipping=shipping)
    sums = invoice_math.totals(built)

    zero = Decimal(0)
    assert sums.net == sum((x.net for x in built), zero)
    assert sums.tax == sum((x.tax for x in built), zero)
    assert sums.discount == sum((x.discount for x in built), zero)
    assert sums.gross == sum((x.gross for x in built), zero) == sums.net + sums.tax
    for x in built:
        assert x.gross == x.net + x.tax
        for amount in (x.net, x.tax, x.gross, x.discount):
            assert _places(amount) == minor_places(currency)  # printed as they are summed
        # the row reads: quantity x unit price - discount = net
        assert x.net == round_money(x.unit_price * x.quantity, currency) - x.discount


@given(documents())
def test_the_total_is_what_the_buyer_was_charged_and_the_columns_still_add_up(
    document: tuple[str, list[DocLine], Decimal, Decimal],
) -> None:
    currency, lines, shipping, charged = document
    built = invoice_math.build(currency, lines, shipping=shipping, charged=charged)
    sums = invoice_math.totals(built)

    assert sums.gross == charged
    assert sums.gross == sums.net + sums.tax
    adjustments = [x for x in built if x.ref == invoice_math.ADJUSTMENT]
    assert len(adjustments) <= 1
    without = invoice_math.totals(x for x in built if x.ref != invoice_math.ADJUSTMENT)
    assert (adjustments[0].gross if adjustments else Decimal(0)) == charged - without.gross


@given(documents())
def test_a_credit_note_mirrors_its_invoice_line_by_line_and_in_every_total(
    document: tuple[str, list[DocLine], Decimal, Decimal],
) -> None:
    currency, lines, shipping, charged = document
    invoice = invoice_math.build(currency, lines, shipping=shipping, charged=charged)
    note = invoice_math.negate(invoice)

    assert [x.quantity for x in note] == [x.quantity for x in invoice]
    assert [x.tax_rate for x in note] == [x.tax_rate for x in invoice]
    mine, theirs = invoice_math.totals(note), invoice_math.totals(invoice)
    assert (mine.net, mine.tax, mine.gross, mine.discount) == (
        -theirs.net, -theirs.tax, -theirs.gross, -theirs.discount)  # fmt: skip
    assert invoice_math.from_json(invoice_math.to_json(note)) == note  # stored without loss


def test_the_tax_rate_shown_is_the_marketplaces_tax_over_the_net() -> None:
    line = invoice_math.line("EUR", ref="1", sku="A", title="A", quantity=3,
                             unit_price=Decimal("9.99"), discount=Decimal("2.97"),
                             tax=Decimal("5.13"))  # fmt: skip
    assert (line.net, line.tax, line.gross, line.tax_rate) == (
        Decimal("27.00"), Decimal("5.13"), Decimal("32.13"), Decimal("19.00"))  # fmt: skip
    yen = invoice_math.line("JPY", ref="1", sku="A", title="A", quantity=1,
                            unit_price=Decimal("1000"), discount=Decimal(0),
                            tax=Decimal("100.4"))  # fmt: skip
    assert (yen.net, yen.tax, yen.gross) == (Decimal("1000"), Decimal("100"), Decimal("1100"))
