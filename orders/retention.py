"""Retention: buyer personal data is removed once an order is long done, and idempotency keys
once no retry can come back for them; nothing an invariant needs is touched.

``purge(session, now=…, personal_data_days=…, idempotency_days=…)``:

- **Inbox bodies** (the raw webhook, with the buyer's name and address) of deliveries that were
  handled (processed, ignored or failed) before the cutoff become empty. The row stays: its
  dedupe key keeps absorbing redeliveries of that webhook (invariant 1), and its status and
  error stay for staff. So do the carrier's tracking webhooks (``carrier_events``: a parcel's
  scans, which may name who signed for it).
- **Orders** in a final state (shipped, delivered, cancelled) not updated since the cutoff lose
  the buyer's name, e-mail, company, street lines, city, phone and the marketplace's raw
  payload; the country, region and postcode stay (tax and shipping statistics), and so do
  lines, money, states and the timeline. Invoices and credit notes keep their PDF: the law
  keeps them for years, not us.
- **Label PDFs** (they print the address) of those orders are emptied; the label row, its
  tracking number and idempotency key stay (one label per shipment).
- **Login attempts** (a user name and the address it came from) older than the personal data
  cutoff are deleted: they rate-limit logins for minutes (``orders/users.py``), and the audit
  log keeps who logged in (``audit_log`` is not purged: it is the record of staff actions).
- **Idempotency keys** that are finished or rejected and older than ``idempotency_days`` are
  deleted. An unfinished key is never deleted: the sweeper still has to resolve it. The default
  retention is far longer than any retry, park or sweep can reach back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db.models import (
    CarrierEvent,
    IdempotencyKey,
    InboxEvent,
    Label,
    LoginAttempt,
    Order,
    Shipment,
)
from domain.states import InboxStatus, OrderState

__all__ = ["KEPT_ADDRESS_FIELDS", "PurgeReport", "purge"]

#: order states after which nothing needs the buyer's data any more
FINAL = (OrderState.SHIPPED, OrderState.DELIVERED, OrderState.CANCELLED)
#: what stays of a shipping address
KEPT_ADDRESS_FIELDS = ("region", "postal_code", "country_code")


@dataclass(frozen=True)
class PurgeReport:
    inbox_bodies: int
    carrier_bodies: int
    orders: int
    label_pdfs: int
    idempotency_keys: int
    login_attempts: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _kept(address: dict[str, Any] | None) -> dict[str, Any] | None:
    if not address:
        return address
    return {k: v for k, v in address.items() if k in KEPT_ADDRESS_FIELDS}


def purge(
    session: Session,
    *,
    now: dt.datetime,
    personal_data_days: int,
    idempotency_days: int,
    dry_run: bool = False,
) -> PurgeReport:
    """Remove what is past retention (``dry_run``: only count it)."""
    data_cutoff = now - dt.timedelta(days=personal_data_days)
    key_cutoff = now - dt.timedelta(days=idempotency_days)

    inbox = (
        InboxEvent.status != InboxStatus.RECEIVED.value,
        InboxEvent.received_at < data_cutoff,
        func.length(InboxEvent.body) > 0,
    )
    tracking = (
        CarrierEvent.status != InboxStatus.RECEIVED.value,
        CarrierEvent.received_at < data_cutoff,
        func.length(CarrierEvent.body) > 0,
    )
    done_orders = select(Order.id).where(
        Order.state.in_([s.value for s in FINAL]),
        Order.updated_at < data_cutoff,
        (Order.buyer_name.is_not(None)) | (Order.buyer_email.is_not(None)),
    )
    order_ids = list(session.scalars(done_orders))
    labels = (
        select(Label.id)
        .join(Shipment, Shipment.id == Label.shipment_id)
        .where(Shipment.order_id.in_(order_ids), func.length(Label.pdf) > 0)
    )
    keys = (
        IdempotencyKey.recovery_point.in_(["finished", "rejected"]),
        IdempotencyKey.created_at < key_cutoff,
    )
    label_ids = list(session.scalars(labels)) if order_ids else []
    report = PurgeReport(
        inbox_bodies=session.scalar(select(func.count()).select_from(InboxEvent).where(*inbox))
        or 0,
        carrier_bodies=session.scalar(
            select(func.count()).select_from(CarrierEvent).where(*tracking)
        )
        or 0,
        orders=len(order_ids),
        label_pdfs=len(label_ids),
        idempotency_keys=session.scalar(
            select(func.count()).select_from(IdempotencyKey).where(*keys)
        )
        or 0,
        login_attempts=session.scalar(
            select(func.count()).select_from(LoginAttempt).where(LoginAttempt.at < data_cutoff)
        )
        or 0,
    )
    if dry_run:
        return report

    session.execute(update(InboxEvent).where(*inbox).values(body=b""))
    session.execute(update(CarrierEvent).where(*tracking).values(body=b""))
    for order in session.scalars(select(Order).where(Order.id.in_(order_ids))):
        order.buyer_name = None
        order.buyer_email = None
        order.shipping_address = _kept(order.shipping_address)
        order.raw = {}
    if label_ids:
        session.execute(update(Label).where(Label.id.in_(label_ids)).values(pdf=b""))
    session.execute(delete(IdempotencyKey).where(*keys))
    session.execute(delete(LoginAttempt).where(LoginAttempt.at < data_cutoff))
    return report
