"""The invoice PDF: what it prints, how it paginates, that it is deterministic (no database)."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from reportlab.pdfbase import pdfmetrics

from domain import invoice_math
from domain.invoice_math import DocLine
from orders.invoice_pdf import (
    InvoiceDocument,
    Seller,
    format_money,
    paginate,
    render_invoice,
)
from tests.support.pdf_text import pdf_texts

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


def _texts(pdf: bytes) -> list[str]:
    """The strings shown on the pages, decoded through their fonts (uncompressed PDFs only)."""
    return pdf_texts(pdf)


def _page_count(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b", pdf))


def test_renders_a_pdf_that_prints_number_seller_buyer_lines_and_totals() -> None:
    pdf = render_invoice(_document(), compress=False)

    assert pdf.startswith(b"%PDF-")
    texts = _texts(pdf)
    for expected in (
        "INV-2026-000123",
        "2026-03-01",
        "Acme Trading GmbH",
        "VAT ID: DE123",
        "Jane Buyer",
        "12345 Town",
        "SKU-000",
        "Widget 1",
        "9.99",  # unit price
        "2.50",  # discount
        "17.48",  # net: 2 x 9.99 - 2.50
        "19.34%",  # tax rate: 3.38 / 17.48
        "3.38",  # tax
        "20.86",  # gross
        "4.90",  # shipping
        "5.00",  # discount column total
        "39.86",  # net column total: 2 x 17.48 + 4.90
        "6.76",  # tax column total
        "46.62",  # total: the gross column's sum
        "Total (EUR)",
        "#1001",
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
    assert texts.count("SKU-000") == 1
    assert texts.count("SKU-119") == 1
    assert sum(1 for t in texts if t.startswith("SKU-")) == 120
    assert texts.count("Invoice INV-2026-000123") >= pages  # the footer of every page
    assert f"Page {pages} of {pages}" in texts


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

    assert "CREDIT NOTE" in texts
    assert "CN-2026-000007" in texts
    assert "INV-2026-000123" in texts
    assert "-9.99" in texts
    assert "-11.59" in texts  # gross and total, negative


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
    assert not any(long_title in t for t in _texts(pdf))
    (cut,) = [t for t in _texts(pdf) if t.startswith("Extremely long product")]
    assert cut.endswith("…") and len(cut) < len(long_title)


def test_money_is_printed_with_the_currency_s_minor_units_without_float() -> None:
    assert format_money(Decimal("1234.5"), "EUR") == "1,234.50"
    assert format_money(Decimal("0.005"), "USD") == "0.01"  # half-up, not banker's
    assert format_money(Decimal("1500.0000"), "JPY") == "1,500"
    assert format_money(Decimal("-12.3400"), "GBP") == "-12.34"


def test_reportlab_s_c_accelerator_renders_the_same_bytes_as_its_python_fallback() -> None:
    # rl_accel (a dependency) does reportlab's number formatting, checksums and ASCII85 in C;
    # reportlab silently falls back to Python without it. Its speed is in bench/README.md.
    from reportlab.lib import rl_accel

    assert not rl_accel._py_funcs, f"reportlab runs without its accelerator: {rl_accel._py_funcs}"
    script = (
        "import sys; sys.modules['_rl_accel'] = None\n"
        "from reportlab.lib import rl_accel; assert rl_accel._c_funcs == {}\n"
        "from tests.unit.test_invoice_pdf import _document\n"
        "from orders.invoice_pdf import render_invoice\n"
        "sys.stdout.buffer.write(render_invoice(_document(5)))\n"
    )
    python = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True,
                            cwd=Path(__file__).parents[2])  # fmt: skip

    assert python.stdout == render_invoice(_document(5))


NAMES = {
    "Greek": "Ζωή Παπαδοπούλου",
    "Japanese": "山田 太郎",
    "Arabic": "محمد العلي",
    "Polish": "Łukasz Żółć",
}


def test_buyer_names_in_greek_japanese_arabic_and_polish_come_back_out_of_the_pdf() -> None:
    # given an invoice to a buyer whose name, address and line titles are in four scripts
    doc = _document(
        2,
        buyer_name=NAMES["Greek"],
        buyer_address_lines=(NAMES["Japanese"], NAMES["Arabic"], NAMES["Polish"]),
        lines=[_line("SKU-1", f"Tee for {name}", 1, "10", "0", "0") for name in NAMES.values()],
    )

    pdf = render_invoice(doc, compress=False)

    # then reading the text back through the fonts' ToUnicode maps gives every name
    texts = _texts(pdf)
    for name in NAMES.values():
        assert name in texts, name
        assert f"Tee for {name}" in texts, name
    # and every character was drawn with a glyph of an embedded font (no boxes, no .notdef)
    assert b"/FontFile2" in pdf and b"+DejaVuSans" in pdf and b"+DroidSansFallback" in pdf
    dejavu = pdfmetrics.getFont("DejaVuSans").face.charToGlyph
    droid = pdfmetrics.getFont("DroidSansFallback").face.charToGlyph
    for char in "".join(NAMES.values()).replace(" ", ""):
        assert dejavu.get(ord(char)) or droid.get(ord(char)), char
