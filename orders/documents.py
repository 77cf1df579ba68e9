"""An order's documents in the pipeline: the invoice of a paid order, the credit note of a
cancelled one, each issued once by the configured seller (numbering: ``orders.invoices``).

``orders.invoices`` (and the PDF renderer under it) is imported when a document is issued, not
when the pipeline is loaded.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from core.settings import get_settings
from db.session import Transaction
from domain.states import OrderState
from orders.steps import Outcome
from orders.transitions import load_for_update

if TYPE_CHECKING:
    from orders.invoice_pdf import Seller

__all__ = ["credit_note", "issue_invoice", "seller"]


def seller() -> Seller:
    """Who issues the documents: the demo seller under the configured name."""
    from orders.invoices import DEMO_SELLER

    return dataclasses.replace(DEMO_SELLER, name=get_settings().seller_name)


def issue_invoice(transaction: Transaction, order_id: int) -> Outcome:
    """The invoice of a paid order (the one it has, if issued before); its number is the
    result."""
    from orders.invoices import invoice_for

    with transaction() as session:
        order = load_for_update(session, order_id)
        if order.state != OrderState.PAID:
            return Outcome(f"skip: {order.state}")
        return Outcome(invoice_for(session, order, seller=seller()).full_number)


def credit_note(transaction: Transaction, order_id: int) -> Outcome:
    """A cancelled order that was invoiced gets one credit note (invoices are never deleted)."""
    from orders.invoices import issue_credit_note

    with transaction() as session:
        note = issue_credit_note(session, order_id, seller=seller())
        return Outcome(note.full_number if note else "no invoice")
