"""The invoice (or credit note) as a PDF, drawn with reportlab from a plain ``InvoiceDocument``.

No database here: ``orders.invoices`` builds the document from the order and stores the bytes.

Drawn straight on a reportlab ``Canvas`` (not platypus tables): the pipeline renders one PDF per
order while it holds the series' counter lock, so rendering must stay in the low milliseconds even
for long orders. The layout is fixed-height rows, which also lets us know the page count up front
("page 2 of 3") without a second pass.

Output is deterministic by default (``invariant``: no creation date, fixed document id), so the
same invoice always renders to the same bytes. ``compress=False`` leaves page streams readable,
which is what tests use to find text in the file.

Text is drawn in DejaVu Sans (embedded, subset), which covers Latin, Greek, Cyrillic, Arabic
and Hebrew; runs of characters it has no glyph for (Chinese, Japanese, Korean) are drawn in Droid
Sans Fallback. Both are vendored in ``orders/fonts`` with their licences (its README says where
they come from). Embedded TrueType subsets carry a ToUnicode map, so the text can be extracted
back from the PDF (which is how the tests read it).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.pdfgen.textobject import PDFTextObject

from domain.invoice_math import DocLine, totals
from domain.money import round_money

__all__ = [
    "InvoiceDocument",
    "Seller",
    "format_money",
    "paginate",
    "render_invoice",
]


@dataclass(frozen=True)
class Seller:
    """Who issues the invoice: the merchant's legal name, postal address and VAT id."""

    name: str
    address_lines: tuple[str, ...]
    vat_id: str | None = None


@dataclass(frozen=True)
class InvoiceDocument:
    """Everything printed on one invoice or credit note; amounts already signed. The totals
    are the sums of the printed columns (``domain.invoice_math.totals``)."""

    full_number: str
    issued_at: dt.datetime
    seller: Seller
    buyer_name: str
    buyer_address_lines: tuple[str, ...]
    currency: str
    lines: Sequence[DocLine]
    title: str = "Invoice"
    order_reference: str | None = None
    # a credit note names the invoice it cancels
    credits_number: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


PAGE_W, PAGE_H = float(A4[0]), float(A4[1])  # 595 x 842 pt
MARGIN = 40.0
ROW_H = 13.0
FONT, BOLD, FALLBACK, SIZE = "DejaVuSans", "DejaVuSans-Bold", "DroidSansFallback", 8.5
_FONT_DIR = Path(__file__).parent / "fonts"
_FONT_FILES = {
    FONT: "DejaVuSans.ttf",
    BOLD: "DejaVuSans-Bold.ttf",
    FALLBACK: "DroidSansFallbackFull.ttf",
}


@functools.cache
def _fonts() -> frozenset[int]:
    """Register the embedded fonts once per process; returns the code points DejaVu draws."""
    for name, file in _FONT_FILES.items():
        pdfmetrics.registerFont(TTFont(name, str(_FONT_DIR / file)))
    face = pdfmetrics.getFont(FONT).face
    return frozenset(face.charToGlyph)


def _runs(text: str) -> list[tuple[bool, str]]:
    """``text`` cut into runs DejaVu draws (True) and runs for the fallback font (False)."""
    covered = _fonts()
    runs: list[tuple[bool, str]] = []
    for char in text:
        mine = ord(char) in covered or char.isspace()
        if runs and runs[-1][0] == mine:
            runs[-1] = (mine, runs[-1][1] + char)
        else:
            runs.append((mine, char))
    return runs


def _width(text: str, font: str, size: float) -> float:
    if text.isascii():  # DejaVu draws all of ASCII
        return float(stringWidth(text, font, size))
    return float(
        sum(stringWidth(run, font if mine else FALLBACK, size) for mine, run in _runs(text))
    )


FOOTER_Y = MARGIN
TABLE_TOP_FIRST = PAGE_H - 250.0  # below seller, buyer and document header
TABLE_TOP_NEXT = PAGE_H - 90.0  # continuation pages: a one-line header only
TABLE_BOTTOM = MARGIN + 25.0  # above the footer
TOTALS_ROWS = 3  # a gap, the column totals, the total (notes add one each)

# columns: SKU and description from their left x; the numbers right-aligned at their x
_X_SKU, _X_TITLE = MARGIN, MARGIN + 64.0
_X_QTY, _X_UNIT, _X_DISC, _X_NET = 250.0, 300.0, 345.0, 395.0
_X_RATE, _X_TAX, _X_GROSS = 430.0, 480.0, PAGE_W - MARGIN
_TITLE_WIDTH = _X_QTY - 24.0 - _X_TITLE
_SKU_WIDTH = _X_TITLE - _X_SKU - 4.0


def format_money(amount: Decimal, currency: str) -> str:
    """``1234.5`` → ``1,234.50``, in the currency's minor unit (ISO 4217: JPY none, KWD three);
    no float on the way."""
    return f"{round_money(amount, currency):,}"


_COLUMNS = (
    (_X_QTY, "Qty"), (_X_UNIT, "Unit price"), (_X_DISC, "Discount"), (_X_NET, "Net"),
    (_X_RATE, "Tax rate"), (_X_TAX, "Tax"), (_X_GROSS, "Gross"),
)  # fmt: skip


def _fit(text: str, width: float, font: str = FONT, size: float = SIZE) -> str:
    """Cut ``text`` with an ellipsis so it fits ``width`` points (long marketplace titles)."""
    full = _width(text, font, size)
    if full <= width:
        return text
    # start from a character estimate, then shrink; avoids measuring every prefix
    cut = max(1, int(len(text) * width / full))
    while cut > 1 and _width(text[:cut] + "…", font, size) > width:
        cut -= 1
    return text[:cut].rstrip() + "…"


def _capacity(top: float) -> int:
    """Rows that fit between a page's column header (at ``top``) and the footer."""
    return int((top - ROW_H - TABLE_BOTTOM) // ROW_H) + 1


def paginate(n_lines: int, totals_rows: int) -> list[int]:
    """Lines per page; a last entry of 0 means the totals block needed a page of its own.

    The totals block never splits across pages. Computing the plan first is what lets every page
    say "page n of m" in a single pass.
    """
    plan: list[int] = []
    remaining, capacity = n_lines, _capacity(TABLE_TOP_FIRST)
    while True:
        take = min(remaining, capacity)
        plan.append(take)
        remaining -= take
        if remaining == 0:
            if capacity - take < totals_rows:
                plan.append(0)
            return plan
        capacity = _capacity(TABLE_TOP_NEXT)


class _Renderer:
    def __init__(self, doc: InvoiceDocument, canvas: Canvas) -> None:
        self.doc, self.c = doc, canvas
        self.plan = paginate(len(doc.lines), TOTALS_ROWS + len(doc.notes))
        self.pages = len(self.plan)
        self.page = 1
        self.t: PDFTextObject | None = None
        self.font: tuple[str, float] | None = None

    def flush(self) -> None:
        if self.t is not None:
            self.c.drawText(self.t)
        self.t, self.font = None, None

    def money(self, amount: Decimal) -> str:
        return format_money(amount, self.doc.currency)

    # All text of a page goes into one text object: a drawString per cell costs a new text
    # object and a font change each time, which dominated rendering of long orders.
    def text(self, x: float, y: float, s: str, *, bold: bool = False, size: float = SIZE) -> None:
        if self.t is None:
            self.t = self.c.beginText()
        self.t.setTextOrigin(x, y)
        main = BOLD if bold else FONT
        for mine, run in _runs(s) if not s.isascii() else [(True, s)]:
            font = (main if mine else FALLBACK, size)
            if font != self.font:
                self.t.setFont(*font)
                self.font = font
            self.t.textOut(run)

    def right(self, x: float, y: float, s: str, *, bold: bool = False, size: float = SIZE) -> None:
        self.text(x - _width(s, BOLD if bold else FONT, size), y, s, bold=bold, size=size)

    def first_page_header(self) -> float:
        d = self.doc
        y = PAGE_H - MARGIN - 10
        self.text(MARGIN, y, d.seller.name, bold=True, size=12)
        for line in d.seller.address_lines:
            y -= 12
            self.text(MARGIN, y, line)
        if d.seller.vat_id:
            y -= 12
            self.text(MARGIN, y, f"VAT ID: {d.seller.vat_id}")

        ry = PAGE_H - MARGIN - 10
        self.right(PAGE_W - MARGIN, ry, d.title.upper(), bold=True, size=16)
        meta = [("Number", d.full_number), ("Date", d.issued_at.date().isoformat())]
        if d.order_reference:
            meta.append(("Order", d.order_reference))
        if d.credits_number:
            meta.append(("Credits invoice", d.credits_number))
        meta.append(("Currency", d.currency))
        ry -= 6
        for label, value in meta:
            ry -= 12
            self.right(PAGE_W - MARGIN - 110, ry, f"{label}:")
            self.right(PAGE_W - MARGIN, ry, value, bold=label == "Number")

        by = PAGE_H - 150
        self.text(MARGIN, by, "Bill to / ship to", bold=True)
        for line in (d.buyer_name, *d.buyer_address_lines)[:6]:
            by -= 11
            self.text(MARGIN, by, _fit(line, 260))
        return TABLE_TOP_FIRST

    def next_page_header(self) -> float:
        d = self.doc
        self.text(MARGIN, PAGE_H - MARGIN - 10, d.seller.name, bold=True)
        self.right(PAGE_W - MARGIN, PAGE_H - MARGIN - 10, f"{d.title} {d.full_number}", bold=True)
        return TABLE_TOP_NEXT

    def column_headers(self, y: float) -> float:
        self.text(_X_SKU, y, "SKU", bold=True)
        self.text(_X_TITLE, y, "Description", bold=True)
        for x, label in _COLUMNS:
            self.right(x, y, label, bold=True)
        self.c.setLineWidth(0.5)
        self.c.line(MARGIN, y - 3, PAGE_W - MARGIN, y - 3)
        return y - ROW_H

    def footer(self) -> None:
        self.text(MARGIN, FOOTER_Y, f"{self.doc.title} {self.doc.full_number}", size=7.5)
        self.right(PAGE_W - MARGIN, FOOTER_Y, f"Page {self.page} of {self.pages}", size=7.5)
        self.flush()

    def new_page(self) -> float:
        self.footer()
        self.c.showPage()
        self.page += 1
        return self.column_headers(self.next_page_header())

    def line_row(self, y: float, line: DocLine) -> None:
        self.text(_X_SKU, y, _fit(line.sku or "-", _SKU_WIDTH))
        self.text(_X_TITLE, y, _fit(line.title, _TITLE_WIDTH))
        self.right(_X_QTY, y, str(line.quantity))
        self.right(_X_UNIT, y, self.money(line.unit_price))
        self.right(_X_DISC, y, self.money(line.discount))
        self.right(_X_NET, y, self.money(line.net))
        self.right(_X_RATE, y, f"{line.tax_rate}%")
        self.right(_X_TAX, y, self.money(line.tax))
        self.right(_X_GROSS, y, self.money(line.gross))

    def totals(self, y: float) -> None:
        d, c = self.doc, self.c
        sums = totals(d.lines)
        c.line(_X_QTY, y + ROW_H - 3, PAGE_W - MARGIN, y + ROW_H - 3)
        self.text(_X_TITLE, y, "Totals", bold=True)
        for x, amount in ((_X_DISC, sums.discount), (_X_NET, sums.net), (_X_TAX, sums.tax),
                          (_X_GROSS, sums.gross)):  # fmt: skip
            self.right(x, y, self.money(amount), bold=True)
        y -= ROW_H
        self.right(_X_TAX, y, f"Total ({d.currency})", bold=True)
        self.right(_X_GROSS, y, self.money(sums.gross), bold=True)
        for note in d.notes:
            y -= ROW_H
            self.text(MARGIN, y, _fit(note, PAGE_W - 2 * MARGIN))

    def render(self) -> None:
        y = self.column_headers(self.first_page_header())
        lines = iter(self.doc.lines)
        for index, count in enumerate(self.plan):
            if index:
                y = self.new_page()
            for _ in range(count):
                self.line_row(y, next(lines))
                y -= ROW_H
        self.totals(y - ROW_H)
        self.footer()
        self.c.showPage()


def render_invoice(
    document: InvoiceDocument, *, invariant: bool = True, compress: bool = True
) -> bytes:
    """The PDF bytes of ``document`` (A4, as many pages as its lines need)."""
    _fonts()
    buffer = io.BytesIO()
    canvas = Canvas(
        buffer,
        pagesize=A4,
        invariant=1 if invariant else 0,
        pageCompression=1 if compress else 0,
    )
    canvas.setTitle(f"{document.title} {document.full_number}")
    canvas.setAuthor(document.seller.name)
    _Renderer(document, canvas).render()
    canvas.save()
    return buffer.getvalue()
