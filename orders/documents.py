"""An order's documents in the pipeline: the invoice of a paid order, the credit note of a
cancelled one, each issued once by the configured seller (numbering: ``orders.invoices``).

``orders.invoices`` (and the PDF renderer under it) is imported when a document is issued, not
when the pipeline is loaded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import String, cast, exists, literal, or_, select
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.models import Invoice, Order, Refund
from db.session import Transaction
from domain.states import OrderState
from orders.steps import Outcome
from orders.transitions import load_for_update

if TYPE_CHECKING:
    from domain.invoice_math import DocLine
    from orders.invoice_pdf import Seller

__all__ = ["credit_note", "credit_refunds", "issue_invoice", "refund_lines", "seller"]


def seller() -> Seller:
    """Who issues the documents: the demo seller under the configured name."""
    from orders.invoices import DEMO_SELLER

    return dataclasses.replace(DEMO_SELLER, name=get_settings().seller_name)


#: refunds that get a credit note of their own lines (a cancellation's full refund is covered
#: by the cancellation's credit note of what is left)
CREDITED_SOURCES = ("marketplace", "staff")
#: a refund's credit note's source key starts with this and the refund's id
CREDIT_REFUND = "credit:refund:"


def refund_lines(invoice: Invoice, refund: Refund, currency: str) -> list[DocLine]:
    """A refund as document lines (positive): each refunded line with the invoice line's SKU,
    title and unit price, and the refund's own net and tax; its shipping; and an adjustment
    so the total is the money that went back."""
    from domain import invoice_math
    from orders.invoices import document_lines

    invoiced = {line.ref: line for line in document_lines(invoice)}
    lines = []
    for item in refund.lines or []:
        base = invoiced.get(str(item["line"]))
        amount = Decimal(str(item["amount"]))
        quantity = int(item["quantity"])
        unit = base.unit_price if base is not None else amount / max(quantity, 1)
        lines.append(
            invoice_math.line(
                currency,
                ref=str(item["line"]),
                sku=base.sku if base else None,
                title=base.title if base else "Refunded line",
                quantity=quantity,
                unit_price=unit,
                discount=Decimal(0),
                tax=Decimal(str(item.get("tax") or 0)),
                net=amount,
            )
        )
    return invoice_math.build(currency, lines, shipping=refund.shipping, charged=refund.amount)


def credit_refunds(session: Session, order: Order) -> list[str]:
    """A credit note for each refund of the order that has none against the invoice in force
    (none while the order is not invoiced: its invoicing credits them then). An edit's new
    invoice is of the order's lines, which keep what was refunded (the marketplaces keep a
    line's quantity and total when they refund it), so the refunds credited against the
    invoice it replaced are credited against it again (key ``credit:refund:{refund}``, then
    ``credit:refund:{refund}:i{invoice}``): invoiced - credited stays what the buyer paid."""
    from orders.invoices import credit_lines, current_invoice

    refunds = session.scalars(
        select(Refund)
        .where(
            Refund.order_id == order.id,
            Refund.source.in_(CREDITED_SOURCES),
            Refund.status == "succeeded",
        )
        .order_by(Refund.id)
    ).all()
    if not refunds:  # most orders: one read, not the invoices' too (and the new one's PDF)
        return []
    invoice = current_invoice(session, order.id)
    if invoice is None:
        return []
    credited = session.execute(
        select(Invoice.source_key, Invoice.credits_invoice_id).where(
            Invoice.order_id == order.id, Invoice.source_key.like(f"{CREDIT_REFUND}%")
        )
    ).all()
    keys = {str(key) for key, _ in credited}
    here = {str(key).split(":")[2] for key, against in credited if against == invoice.id}
    issued = []
    for refund in refunds:
        if str(refund.id) in here:
            continue
        key = f"{CREDIT_REFUND}{refund.id}"
        if key in keys:  # credited against an invoice an edit replaced
            key = f"{key}:i{invoice.id}"
        note = credit_lines(session, order, source_key=key,
                            lines=refund_lines(invoice, refund, order.currency),
                            seller=seller())  # fmt: skip
        if note is not None:
            issued.append(note.full_number)
    return issued


def uncredited_refunds(session: Session, *, before: dt.datetime, limit: int) -> list[int]:
    """Orders with an invoice and a refund of theirs to credit (the marketplace's or staff's,
    succeeded, recorded in the day before ``before``) that no credit note names: its
    ``credit_note`` was committed to be published and never was (a worker killed between the
    commit that recorded the refund and the publish; a redelivery finds the refund recorded
    and has nothing new to publish). The sweeper publishes their ``credit_note`` again, which
    issues what is due and nothing twice."""
    key = literal(CREDIT_REFUND) + cast(Refund.id, String)
    credited = exists().where(
        Invoice.order_id == Refund.order_id,
        or_(Invoice.source_key == key, Invoice.source_key.like(key + ":%")),
    )
    invoiced = exists().where(Invoice.order_id == Refund.order_id, Invoice.kind == "invoice")
    return list(
        session.scalars(
            select(Refund.order_id)
            .where(
                Refund.status == "succeeded",
                Refund.source.in_(CREDITED_SOURCES),
                Refund.created_at < before,
                Refund.created_at >= before - dt.timedelta(days=1),
                invoiced,
                ~credited,
            )
            .distinct()
            .order_by(Refund.order_id)
            .limit(limit)
        )
    )


def issue_invoice(transaction: Transaction, order_id: int) -> Outcome:
    """The invoice of a paid order (the one it has, if issued before); its number is the
    result. Refunds the marketplace made before it get their credit notes with it."""
    from orders.invoice_pdf import render_invoice
    from orders.invoices import attach_pdf, build_document, invoice_for

    issuer = seller()
    with transaction() as session:
        order = load_for_update(session, order_id)
        if order.state != OrderState.PAID:
            return Outcome(f"skip: {order.state}")
        invoice = invoice_for(session, order, seller=issuer, render=False)
        credit_refunds(session, order)
        number, invoice_id = invoice.full_number, invoice.id
        # printed after the commit, outside the series' lock (orders/invoices.py); a retry
        # after a crash in between finds the invoice without its PDF and prints it then
        unprinted = build_document(order, invoice, seller=issuer) if invoice.pdf is None else None
    if unprinted is not None:
        pdf = render_invoice(unprinted)
        with transaction() as session:
            attach_pdf(session, invoice_id, pdf)
    return Outcome(number)


def credit_note(transaction: Transaction, order_id: int) -> Outcome:
    """Credit notes that are due: one per refund of lines or an amount (each once), and for a
    cancelled, invoiced order one for what is left of its invoice (invoices are never
    deleted)."""
    from orders.invoices import issue_credit_note

    with transaction() as session:
        order = load_for_update(session, order_id)
        issued = credit_refunds(session, order)
        if order.state == OrderState.CANCELLED:
            note = issue_credit_note(session, order_id, seller=seller())
            if note is not None:
                issued.append(note.full_number)
        return Outcome(", ".join(dict.fromkeys(issued)) if issued else "nothing to credit")
