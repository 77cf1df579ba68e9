"""The invoice PDF: what it prints, how it paginates, that it is deterministic (no database)."""

from __future__ import annotations

import datetime as dt
import re
import time
from decimal import Decimal

from domain import invoice_math
from domain.invoice_math import DocLine
from orders.invoice_pdf import (
    InvoiceDocument,
    Seller,
    format_money,
    paginate,
    render_invoice,
)

SELLER = Seller(
    name="Acme Trading GmbH", address_lines=("Hauptstr. 1", "10115 Berlin"), vat_id="DE123"
)


def _document(n_lines: int = 2, **overrides: object) -> InvoiceDocument:
    values: dict[str, object] = {
        "full_number": "INV-2026-000123",
        "issued_at": dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC),
        "seller": SELLER,
        "buyer_name": "Jane Buyer",
        "buyer_address_lines": ("1 Road", "12345 Town", "DE"),
        "currency": "EUR",
        "lines": invoice_math.build(
            "EUR",
            [
                _line(f"SKU-{i:03d}", f"Widget {i}", 2, "9.99", "2.50", "3.38")
                for i in range(n_lines)
            ],
            shipping=Decimal("4.90"),
        ),
        "order_reference": "#1001",
    }
    values.update(overrides)
    return InvoiceDocument(**values)  # type: ignore[arg-type]


def _line(sku: str | None, title: str, qty: int, unit: str, discount: str, tax: str) -> DocLine:
    return invoice_math.line("EUR", ref=sku or title, sku=sku, title=title, quantity=qty,
                             unit_price=Decimal(unit), discount=Decimal(discount),
                             tax=Decimal(tax))  # fmt: skip


def _texts(pdf: bytes) -> list[bytes]:
    """The strings shown on the pages (uncompressed PDFs only)."""
    return re.findall(rb"\((.*?)\) Tj", pdf)


def _page_count(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b", pdf))


def test_renders_a_pdf_that_prints_number_seller_buyer_lines_and_totals() -> None:
    pdf = render_invoice(_document(), compress=False)

    assert pdf.startswith(b"%PDF-")
    texts = _texts(pdf)
    for expected in (
        b"INV-2026-000123",
        b"2026-03-01",
        b"Acme Trading GmbH",
        b"VAT ID: DE123",
        b"Jane Buyer",
        b"12345 Town",
        b"SKU-000",
        b"Widget 1",
        b"9.99",  # unit price
        b"2.50",  # discount
        b"17.48",  # net: 2 x 9.99 - 2.50
        b"19.34%",  # tax rate: 3.38 / 17.48
        b"3.38",  # tax
        b"20.86",  # gross
        b"4.90",  # shipping
        b"5.00",  # discount column total
        b"39.86",  # net column total: 2 x 17.48 + 4.90
        b"6.76",  # tax column total
        b"46.62",  # total: the gross column's sum
        b"Total \\(EUR\\)",
        b"#1001",
    ):
        assert expected in texts, expected
    assert _page_count(pdf) == 1


def test_same_document_renders_to_the_same_bytes() -> None:
    assert render_invoice(_document(5)) == render_invoice(_document(5))


def test_compressed_output_does_not_show_the_text_but_is_a_smaller_pdf() -> None:
    compressed = render_invoice(_document(30))
    plain = render_invoice(_document(30), compress=False)

    assert compressed.startswith(b"%PDF-")
    assert b"(INV-2026-000123) Tj" not in compressed
    assert len(compressed) < len(plain)


def test_120_lines_spread_over_several_pages_each_naming_the_invoice() -> None:
    doc = _document(120)

    pdf = render_invoice(doc, compress=False)

    pages = _page_count(pdf)
    assert pages == len(paginate(120, 3)) >= 3
    texts = _texts(pdf)
    # every line is printed once, the first and last included
    assert texts.count(b"SKU-000") == 1
    assert texts.count(b"SKU-119") == 1
    assert sum(1 for t in texts if t.startswith(b"SKU-")) == 120
    assert texts.count(b"Invoice INV-2026-000123") >= pages  # the footer of every page
    assert f"Page {pages} of {pages}".encode() in texts


def test_pagination_keeps_the_totals_block_whole() -> None:
    assert paginate(0, 6) == [0]
    # the most lines that still leave room for the totals on the first page; one more line
    # still fits there, but the totals then move to a page of their own rather than split
    fits = max(n for n in range(200) if len(paginate(n, 6)) == 1)
    assert fits >= 20
    assert paginate(fits + 1, 6) == [fits + 1, 0]
    for n in (1, fits + 7, 120, 500):
        plan = paginate(n, 6)
        assert sum(plan) == n
        assert all(count > 0 for count in plan[:-1])


def test_credit_note_prints_its_title_negative_amounts_and_the_credited_invoice() -> None:
    doc = _document(
        1,
        title="Credit note",
        full_number="CN-2026-000007",
        credits_number="INV-2026-000123",
        lines=invoice_math.negate([_line("SKU-1", "Widget", 1, "9.99", "0", "1.60")]),
    )

    texts = _texts(render_invoice(doc, compress=False))

    assert b"CREDIT NOTE" in texts
    assert b"CN-2026-000007" in texts
    assert b"INV-2026-000123" in texts
    assert b"-9.99" in texts
    assert b"-11.59" in texts  # gross and total, negative


def test_long_titles_are_cut_to_their_column_and_unusual_characters_do_not_break_rendering() -> (
    None
):
    long_title = "Extremely long product title " * 10
    doc = _document(
        1,
        buyer_name="Zoë Łukasz 山田",
        lines=[_line(None, long_title, 1, "1", "0", "0")],
    )

    pdf = render_invoice(doc, compress=False)

    assert pdf.startswith(b"%PDF-")
    assert not any(long_title.encode() in t for t in _texts(pdf))
    assert any(t.startswith(b"Extremely long product title") for t in _texts(pdf))


def test_money_is_printed_with_the_currency_s_minor_units_without_float() -> None:
    assert format_money(Decimal("1234.5"), "EUR") == "1,234.50"
    assert format_money(Decimal("0.005"), "USD") == "0.01"  # half-up, not banker's
    assert format_money(Decimal("1500.0000"), "JPY") == "1,500"
    assert format_money(Decimal("-12.3400"), "GBP") == "-12.34"


def test_rendering_a_typical_invoice_takes_milliseconds() -> None:
    # a loose bound (the pipeline renders one per order under the series lock); measured
    # numbers are in the report, this only catches an accidental slow path
    doc = _document(5)
    render_invoice(doc)
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        render_invoice(doc)
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[len(timings) // 2] < 0.05
