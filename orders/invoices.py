"""Invoices and credit notes, numbered without gaps per series: one invoice in force per order,
and one document per thing that made it (``invoices.source_key``: the order's invoice, its
cancellation, an edit, a refund).

Invariant 4 rests on three things, all inside the caller's transaction:

- **A counter row per series** (``invoice_counters``), incremented with a row lock held until the
  transaction ends. A database sequence would be simpler but is not gap-free: a rolled-back
  transaction burns its value. Here a rollback also rolls back the increment, so the next invoice
  takes the same number.
- **A lock on the order row** before anything else, so two workers invoicing (or crediting) the
  same order queue up behind each other; the second then finds the first one's invoice and
  returns it. The unique ``source_key`` is the backstop. Lock order is always order row,
  then counter row, so the two never deadlock.
- **Nothing is ever updated or deleted.** Cancelling an invoiced order issues a credit note
  (negative lines, pointing at the invoice) in its own series for what is left of it; an edit
  credits it the same way and issues a new invoice (the next number); a refund issues a credit
  note of exactly the refunded lines. Every document stores its lines with every column
  (``domain.invoice_math``), and its total is the sum of its gross column.

On PostgreSQL the locks are ``SELECT … FOR UPDATE`` / ``UPDATE`` row locks under READ COMMITTED
(the default; each statement sees what committed before it, which the re-check after the lock
relies on). On SQLite the session already holds the database write lock from ``BEGIN IMMEDIATE``
(``db/session.py``), which serialises writers; ``FOR UPDATE`` compiles to nothing there.

The series' lock is held until the caller commits, so keep that transaction short. Rendering a
PDF costs several milliseconds (about as much as the rest of the step), so the pipeline's invoice
step issues with ``render=False``, commits, renders the ``build_document`` it took inside the
transaction, and stores the bytes with ``attach_pdf`` in a transaction of one ``UPDATE``: no
lock (nor, on SQLite, the database's write lock) is held while reportlab runs. A crash in between
leaves an invoice without its PDF; the step's retry finds the invoice in force and renders it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import ChannelAccount, Invoice, InvoiceCounter, Order
from db.session import core, dialect_insert
from domain import invoice_math
from domain.invoice_math import DocLine
from domain.states import OrderState
from orders.invoice_pdf import InvoiceDocument, Seller, render_invoice

__all__ = [
    "CREDIT_NOTE",
    "DEMO_SELLER",
    "INVOICE",
    "InvoiceRefused",
    "Seller",
    "attach_pdf",
    "build_document",
    "credit_lines",
    "credit_remaining",
    "current_invoice",
    "document_lines",
    "find_gaps",
    "format_number",
    "invoice_for",
    "issue_credit_note",
    "issue_invoice",
    "next_number",
    "order_lines",
    "remaining_lines",
    "series_for",
]

INVOICE = "invoice"
CREDIT_NOTE = "credit_note"
_PREFIX = {INVOICE: "INV", CREDIT_NOTE: "CN"}
_TITLE = {INVOICE: "Invoice", CREDIT_NOTE: "Credit note"}

DEMO_SELLER = Seller(
    name="Ordersync Demo Shop Ltd.",
    address_lines=("1 Example Street", "10115 Berlin", "Germany"),
    vat_id="DE000000000",
)


class InvoiceRefused(Exception):
    """The order cannot get this document now (e.g. an invoice for a cancelled order).

    Permanent for this order's current state: retrying will not help.
    """


def series_for(
    order: Order, at: dt.datetime, *, kind: str = INVOICE, prefix: str | None = None
) -> str:
    """``INV-2026`` / ``CN-2026``: one series per document kind and calendar year (UTC), per
    seller entity when its account names one (``prefix`` ``ACME-US`` → ``ACME-US-INV-2026``).
    """
    base = f"{_PREFIX[kind]}-{at.astimezone(dt.UTC).year}"
    return f"{prefix}-{base}" if prefix else base


def format_number(series: str, number: int) -> str:
    """``INV-2026-000123``: six digits, more once a series passes 999,999."""
    return f"{series}-{number:06d}"


def _insert_ignore(session: Session) -> Any:
    return dialect_insert(session)(InvoiceCounter).on_conflict_do_nothing()


_counters = table(InvoiceCounter)
# prebuilt (see db.session.core)
_BUMP = (
    update(_counters)
    .where(_counters.c.series == bindparam("b_series"))
    .values(next_number=_counters.c.next_number + 1)
    .returning(_counters.c.next_number)
)
_BY_SOURCE = select(Invoice).where(Invoice.source_key == bindparam("b_source"))
_invoices = table(Invoice)
_ATTACH_PDF = (
    update(_invoices)
    .where(_invoices.c.id == bindparam("b_id"), _invoices.c.pdf.is_(None))
    .values(pdf=bindparam("b_pdf"))
)


def next_number(session: Session, series: str) -> int:
    """Take the next number of ``series``; the counter row stays locked until the caller ends.

    One ``UPDATE … RETURNING`` both locks the row and increments it (the same row lock a
    ``SELECT … FOR UPDATE`` would take, one round trip fewer while holding the hottest lock in
    the system). A missing counter is created with ``INSERT … ON CONFLICT DO NOTHING``, so two
    transactions creating it at once end up with one row, and then both go through the update.
    """
    db = core(session)
    taken = db.execute(_BUMP, {"b_series": series}).scalar_one_or_none()
    if taken is None:
        session.execute(_insert_ignore(session).values(series=series, next_number=1))
        taken = db.execute(_BUMP, {"b_series": series}).scalar_one()
    return int(taken) - 1


def _lock_order(session: Session, order_id: int) -> Order:
    order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
    if order is None:
        raise LookupError(f"order {order_id} not found")
    return order


def _by_source(session: Session, source_key: str) -> Invoice | None:
    return session.scalars(_BY_SOURCE, {"b_source": source_key}).one_or_none()


def _address_lines(address: dict[str, object] | None) -> tuple[str, ...]:
    """The canonical ``Address`` dict (see domain/canonical.py) as printable lines."""
    if not address:
        return ()
    a = {k: str(v) for k, v in address.items() if v}
    city = " ".join(part for part in (a.get("postal_code"), a.get("city")) if part)
    lines = (
        a.get("company"),
        a.get("line1"),
        a.get("line2"),
        city,
        a.get("region"),
        a.get("country_code"),
    )
    return tuple(line for line in lines if line)


def order_lines(order: Order) -> list[DocLine]:
    """The order as invoice lines: its lines as the marketplace priced them (net = its line
    total after discount, its tax), shipping with the tax the lines do not carry, and an
    adjustment when the marketplace's total differs from their sum."""
    currency = order.currency
    lines = [
        invoice_math.line(
            currency,
            ref=line.external_id,
            sku=line.sku,
            title=line.title,
            quantity=line.quantity,
            unit_price=line.unit_price,
            discount=line.discount,
            tax=line.tax,
            net=line.total,
        )
        for line in order.lines
    ]
    line_tax = sum((line.tax for line in order.lines), Decimal(0))
    shipping_tax = order.tax_total - line_tax if order.shipping_total else Decimal(0)
    return invoice_math.build(
        currency, lines, shipping=order.shipping_total,
        shipping_tax=max(shipping_tax, Decimal(0)), charged=order.total,
    )  # fmt: skip


def document_lines(invoice: Invoice) -> list[DocLine]:
    return invoice_math.from_json(invoice.lines or [])


def build_document(
    order: Order, invoice: Invoice, *, seller: Seller, credits: Invoice | None = None
) -> InvoiceDocument:
    """The printable view of ``invoice``: its stored lines (a credit note's already negated)."""
    address = order.shipping_address or {}
    buyer = order.buyer_name or str(address.get("name") or "") or "Customer"
    return InvoiceDocument(
        title=_TITLE[invoice.kind],
        full_number=invoice.full_number,
        issued_at=invoice.issued_at,
        seller=seller,
        buyer_name=buyer,
        buyer_address_lines=_address_lines(address),
        currency=invoice.currency,
        lines=document_lines(invoice),
        order_reference=order.external_number or order.external_id,
        credits_number=credits.full_number if credits is not None else None,
    )


def _issue(
    session: Session,
    order: Order,
    *,
    kind: str,
    source_key: str,
    lines: list[DocLine],
    seller: Seller,
    render: bool,
    credits: Invoice | None = None,
) -> Invoice:
    at = utcnow()
    account = session.get_one(ChannelAccount, order.channel_account_id)
    series = series_for(order, at, kind=kind, prefix=account.invoice_series)
    number = next_number(session, series)
    invoice = Invoice(
        order_id=order.id,
        kind=kind,
        source_key=source_key,
        series=series,
        number=number,
        full_number=format_number(series, number),
        # the sum of its lines' gross column (what the buyer was charged, or is given back)
        total=invoice_math.totals(lines).gross,
        currency=order.currency,
        credits_invoice_id=credits.id if credits is not None else None,
        lines=invoice_math.to_json(lines),
        issued_at=at,
    )
    if render:
        invoice.pdf = render_invoice(build_document(order, invoice, seller=seller, credits=credits))
    session.add(invoice)
    session.flush()
    return invoice


def current_invoice(session: Session, order_id: int) -> Invoice | None:
    """The order's invoice in force: its newest, unless a cancellation or an edit credited it
    (a partial refund's credit note leaves it in force)."""
    return _in_force(session, order_id)[0]


def _in_force(session: Session, order_id: int) -> tuple[Invoice | None, int]:
    """``current_invoice``, and how many invoices the order has had (its next revision's
    number less one), from one read of them."""
    invoices = session.scalars(
        select(Invoice)
        .where(Invoice.order_id == order_id, Invoice.kind == INVOICE)
        .order_by(Invoice.id.desc())
    ).all()
    if not invoices:
        return None, 0
    closed = set(
        session.scalars(
            select(Invoice.credits_invoice_id).where(
                Invoice.order_id == order_id,
                Invoice.kind == CREDIT_NOTE,
                ~Invoice.source_key.like("credit:refund:%"),
            )
        )
    )
    newest = invoices[0]
    return (None if newest.id in closed else newest), len(invoices)


def remaining_lines(session: Session, invoice: Invoice) -> list[DocLine]:
    """What of ``invoice`` is not credited yet: its lines less every credit note against it,
    per line (quantities and every money column)."""
    left: dict[str, DocLine] = {line.ref: line for line in document_lines(invoice)}
    notes = session.scalars(
        select(Invoice).where(Invoice.credits_invoice_id == invoice.id, Invoice.kind == CREDIT_NOTE)
    ).all()
    for note in notes:
        for credited in document_lines(note):
            have = left.get(credited.ref)
            if have is None:
                continue
            left[credited.ref] = replace(
                have,
                quantity=have.quantity - credited.quantity,
                discount=have.discount + credited.discount,
                net=have.net + credited.net,
                tax=have.tax + credited.tax,
                gross=have.gross + credited.gross,
            )
    return [
        replace(line, tax_rate=invoice_math.tax_rate(line.net, line.tax))
        for line in left.values()
        if line.quantity > 0 or line.gross or line.net or line.tax
    ]


def issue_invoice(
    session: Session, order_id: int, *, seller: Seller = DEMO_SELLER, render: bool = True
) -> Invoice:
    """The order's invoice: the one in force unchanged, or a new one numbered in its series.

    Raises ``InvoiceRefused`` for a cancelled order without an invoice (the cancellation won the
    race; an invoice now would never be credited) and ``LookupError`` for an unknown order.
    """
    return invoice_for(session, _lock_order(session, order_id), seller=seller, render=render)


def invoice_for(
    session: Session, order: Order, *, seller: Seller = DEMO_SELLER, render: bool = True
) -> Invoice:
    """``issue_invoice`` for an order the caller has already locked (``load_for_update``)."""
    # checked under the order's lock: a concurrent worker may have committed it while we waited
    found, issued = _in_force(session, order.id)
    if found is not None:
        return found
    if order.state == OrderState.CANCELLED:
        raise InvoiceRefused(f"order {order.id} is cancelled; no invoice issued")
    revision = 1 + issued
    return _issue(session, order, kind=INVOICE, source_key=f"invoice:{order.id}:{revision}",
                  lines=order_lines(order), seller=seller, render=render)  # fmt: skip


def credit_remaining(
    session: Session, order: Order, *, source_key: str, seller: Seller = DEMO_SELLER,
    render: bool = True,
) -> Invoice | None:  # fmt: skip
    """A credit note (once per ``source_key``) for what is left of the invoice in force: the
    whole invoice, less what partial refunds already credited. None when there is no invoice
    in force or nothing is left of it."""
    found = _by_source(session, source_key)
    if found is not None:
        return found
    invoice = current_invoice(session, order.id)
    if invoice is None:
        return None
    left = remaining_lines(session, invoice)
    if not left:
        return None
    return _issue(session, order, kind=CREDIT_NOTE, source_key=source_key,
                  lines=invoice_math.negate(left), seller=seller, render=render,
                  credits=invoice)  # fmt: skip


def credit_lines(
    session: Session, order: Order, *, source_key: str, lines: list[DocLine],
    seller: Seller = DEMO_SELLER, render: bool = True,
) -> Invoice | None:  # fmt: skip
    """A credit note (once per ``source_key``) of exactly ``lines`` (positive amounts, negated
    here) against the invoice in force; None when the order has no invoice in force yet."""
    found = _by_source(session, source_key)
    if found is not None:
        return found
    invoice = current_invoice(session, order.id)
    if invoice is None or not lines:
        return None
    return _issue(session, order, kind=CREDIT_NOTE, source_key=source_key,
                  lines=invoice_math.negate(lines), seller=seller, render=render,
                  credits=invoice)  # fmt: skip


def issue_credit_note(
    session: Session, order_id: int, *, seller: Seller = DEMO_SELLER, render: bool = True
) -> Invoice | None:
    """The credit note of a cancelled, invoiced order (once): what is left of its invoice;
    ``None`` if it has none (or partial refunds credited all of it).

    The invoice itself is left exactly as it was. Raises ``InvoiceRefused`` if the order is not
    cancelled.
    """
    order = _lock_order(session, order_id)
    found = _by_source(session, f"credit:cancel:{order_id}")
    if found is not None:
        return found
    if order.state != OrderState.CANCELLED:
        raise InvoiceRefused(f"order {order_id} is not cancelled; no credit note issued")
    return credit_remaining(session, order, source_key=f"credit:cancel:{order_id}",
                            seller=seller, render=render)  # fmt: skip


def attach_pdf(session: Session, invoice_id: int, pdf: bytes) -> bool:
    """Store the PDF of an invoice issued with ``render=False``; a stored PDF is kept as is.

    One ``UPDATE … WHERE pdf IS NULL``: rendering is deterministic, so two workers that both
    rendered it would store the same bytes, and the second store is a no-op. True when this
    call stored it.
    """
    return core(session).execute(_ATTACH_PDF, {"b_id": invoice_id, "b_pdf": pdf}).rowcount == 1


def find_gaps(session: Session) -> dict[str, list[int]]:
    """Numbers missing inside each series: ``{"INV-2026": [7, 8]}``; empty when all is well.

    "Inside" means 1 up to the counter's last issued number, so a missing last invoice counts
    too. Gaps between neighbours are found in SQL (``LAG``), so the cost is one scan, not one
    Python int per invoice.
    """
    prev = func.lag(Invoice.number, 1, 0).over(partition_by=Invoice.series, order_by=Invoice.number)
    numbered = select(Invoice.series, Invoice.number, prev.label("prev")).subquery()
    gaps: dict[str, list[int]] = {}
    for series, number, before in session.execute(
        select(numbered.c.series, numbered.c.number, numbered.c.prev)
        .where(numbered.c.number - numbered.c.prev > 1)
        .order_by(numbered.c.series, numbered.c.number)
    ):
        gaps.setdefault(series, []).extend(range(before + 1, number))

    highest = {
        series: top
        for series, top in session.execute(
            select(Invoice.series, func.max(Invoice.number)).group_by(Invoice.series)
        )
    }
    counters = session.execute(select(InvoiceCounter.series, InvoiceCounter.next_number))
    for series, counter_next in counters:
        top = highest.get(series, 0)
        if counter_next - 1 > top:
            gaps.setdefault(series, []).extend(range(top + 1, counter_next))
    return gaps
