"""Fulfilment: a paid order gets its label, becomes ready to ship, and ships.

- ``buy_label``: one label per order from the carrier (key ``label:{order_id}``, claimed before
  the call), recorded as the order's shipment and label rows; a label bought before is reused.
- ``mark_ready_to_ship``: invoice and label there → ``documented`` → ``ready_to_ship``.
- ``ship``: the parcel left: the tracking number goes back to the marketplace (key
  ``fulfill:{order_id}``), held stock leaves the shelf, the order is ``shipped``.

An order the marketplace fulfils itself (Amazon FBA, ``fulfilled_by_marketplace``) needs none
of that: ``buy_label`` buys nothing (a ``label_not_needed`` event), the invoice alone makes it
ready to ship, and shipping it is a record of what the marketplace did, with no push, no stock
of ours consumed and no shipment or label row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sqlalchemy import bindparam, exists, func, insert, select

from core.settings import get_settings
from db.base import table, utcnow
from db.models import ChannelAccount, Invoice, Label, Order, OrderEvent, OrderLine, Shipment
from db.session import Transaction, core
from domain.canonical import Address
from domain.errors import PermanentError
from domain.parcel import Parcel
from domain.states import OrderState
from orders import idempotency, stock
from orders.intake import record_event
from orders.steps import FollowUp, Outcome
from orders.transitions import IllegalTransition, advance, load_for_update, transition

__all__ = [
    "LABEL_NOT_NEEDED",
    "BoughtLabel",
    "Carrier",
    "PushFulfilment",
    "buy_label",
    "mark_ready_to_ship",
    "marketplace_shipped",
    "parcel_for",
    "ship",
    "ship_from",
]

S = OrderState
#: timeline kind of buy_label for an order the marketplace ships itself
LABEL_NOT_NEEDED = "label_not_needed"


class BoughtLabel(Protocol):
    @property
    def label_id(self) -> str: ...
    @property
    def carrier(self) -> str: ...
    @property
    def tracking_number(self) -> str: ...
    @property
    def pdf(self) -> bytes: ...


class Carrier(Protocol):
    """The carrier: one label per idempotency key."""

    def buy_label(
        self,
        *,
        shipment_ref: str,
        ship_to: Address,
        ship_from: Address,
        parcel: Parcel,
        idempotency_key: str,
    ) -> BoughtLabel: ...


class PushFulfilment(Protocol):
    """Tell the marketplace of ``account`` that its order ``external_id`` shipped (safe to
    repeat with the same ``idempotency_key``)."""

    def __call__(
        self,
        account: ChannelAccount,
        external_id: str,
        *,
        tracking_number: str,
        carrier: str,
        idempotency_key: str,
    ) -> None: ...


def ship_from() -> Address:
    """The configured warehouse address labels are bought from."""
    settings = get_settings()
    return Address(
        name=settings.seller_name,
        line1=settings.ship_from_line1,
        city=settings.ship_from_city,
        region=settings.ship_from_region,
        postal_code=settings.ship_from_postal_code,
        country_code=settings.ship_from_country,
    )


def parcel_for(units: int) -> Parcel:
    # no product weights in the first cut: 400 g per unit, at least one unit's worth
    return Parcel(weight_grams=max(1, units) * 400, length_cm=30, width_cm=20, height_cm=10)


def marketplace_shipped(order: Order) -> bool:
    """An order the marketplace fulfils, which the marketplace says it has shipped."""
    return bool(order.fulfilled_by_marketplace) and order.fulfillment_status == "fulfilled"


# --- prebuilt statements (see db.session.core) -------------------------------------------------

_orders, _lines = table(Order), table(OrderLine)
_shipments, _labels = table(Shipment), table(Label)
_invoices, _events = table(Invoice), table(OrderEvent)
#: what buying a label needs, in one query: the order's state and address, the tracking number
#: of a label bought before, the units to ship, and whether the marketplace ships it instead
_LABEL_INPUT = select(
    _orders.c.state,
    _orders.c.shipping_address,
    select(_labels.c.tracking_number)
    .join(_shipments, _shipments.c.id == _labels.c.shipment_id)
    .where(_shipments.c.order_id == _orders.c.id)
    .scalar_subquery(),
    select(func.coalesce(func.sum(_lines.c.quantity), 0))
    .where(_lines.c.order_id == _orders.c.id)
    .scalar_subquery(),
    _orders.c.fulfilled_by_marketplace,
).where(_orders.c.id == bindparam("b_order"))
_SHIPMENT = select(
    _shipments.c.id,
    select(_labels.c.id).where(_labels.c.shipment_id == _shipments.c.id).scalar_subquery(),
).where(_shipments.c.order_id == bindparam("b_order"))
_NEW_SHIPMENT = insert(_shipments).returning(_shipments.c.id)
_LABELLED = (
    _shipments.update()
    .where(_shipments.c.id == bindparam("b_id"))
    .values(tracking_number=bindparam("b_tracking"), status="labelled")
)
_RECORD_LABEL = insert(_labels)
_LABEL_NOT_NEEDED_RECORDED = select(_events.c.id).where(
    _events.c.order_id == bindparam("b_order"), _events.c.kind == LABEL_NOT_NEEDED
)
_DOCUMENTED = select(
    exists().where(_invoices.c.order_id == bindparam("b_order"), _invoices.c.kind == "invoice"),
    exists().where(
        _labels.c.shipment_id == _shipments.c.id, _shipments.c.order_id == bindparam("b_order")
    ),
)


def buy_label(
    transaction: Transaction,
    order_id: int,
    carrier: Callable[[], Carrier],
    keys: idempotency.Claimant,
) -> Outcome:
    """The paid order's label (its tracking number is the result). ``carrier`` is built only
    when a label is to be bought: an order the marketplace ships needs none configured."""
    actor = "task:buy_label"
    with transaction() as session:
        found = core(session).execute(_LABEL_INPUT, {"b_order": order_id}).one_or_none()
        if found is None:
            raise PermanentError(f"order {order_id} does not exist")
        state, address, existing, units, by_marketplace = found
        if OrderState(state) != S.PAID:
            return Outcome(f"skip: {state}")
        if existing:
            return Outcome(str(existing))
        if by_marketplace:  # the marketplace ships it with its own label
            db = core(session)
            if db.execute(_LABEL_NOT_NEEDED_RECORDED, {"b_order": order_id}).first() is None:
                record_event(session, order_id, actor=actor, kind=LABEL_NOT_NEEDED,
                             reason="fulfilled by the marketplace")  # fmt: skip
            return Outcome(LABEL_NOT_NEEDED)
        ship_to, parcel = Address(**(address or {})), parcel_for(int(units))
        params = {"ship_to": ship_to.model_dump(), "grams": parcel.weight_grams}
        # a finished key would mean a recorded label (same transaction): returned above
        key = keys.claim(session, f"label:{order_id}", params, point="label_requested")
    with keys.outside_call(key):
        label = carrier().buy_label(
            shipment_ref=f"order-{order_id}", ship_to=ship_to, ship_from=ship_from(),
            parcel=parcel, idempotency_key=key,
        )  # fmt: skip
    with transaction() as session:
        db, now = core(session), utcnow()
        shipment = db.execute(_SHIPMENT, {"b_order": order_id}).one_or_none()
        if shipment is None:
            shipment_id = db.execute(
                _NEW_SHIPMENT,
                {"order_id": order_id, "carrier": label.carrier, "status": "labelled",
                 "tracking_number": label.tracking_number, "created_at": now},
            ).scalar_one()  # fmt: skip
        elif shipment[1] is not None:
            return Outcome("already recorded")
        else:
            shipment_id = shipment[0]
            db.execute(_LABELLED, {"b_id": shipment_id, "b_tracking": label.tracking_number})
        db.execute(
            _RECORD_LABEL,
            {"shipment_id": shipment_id, "carrier": label.carrier, "idempotency_key": key,
             "tracking_number": label.tracking_number, "pdf": label.pdf, "created_at": now},
        )  # fmt: skip
        response = {"label_id": label.label_id, "tracking_number": label.tracking_number}
        idempotency.finish(session, key, response)
        record_event(session, order_id, actor=actor, kind="label",
                     tracking_number=label.tracking_number, carrier=label.carrier)  # fmt: skip
    return Outcome(label.tracking_number)


def mark_ready_to_ship(transaction: Transaction, order_id: int, *, ship_it: FollowUp) -> Outcome:
    """Invoice and label there (the invoice alone for an order the marketplace ships): the
    order is ready to ship. ``ship_it`` records the shipping when the marketplace already
    shipped it meanwhile."""
    with transaction() as session:
        order = load_for_update(session, order_id)
        state = OrderState(order.state)
        if state not in (S.PAID, S.DOCUMENTED):
            return Outcome(f"skip: {state}")
        path = [S.READY_TO_SHIP]
        if state == S.PAID:
            has_invoice, has_label = core(session).execute(_DOCUMENTED, {"b_order": order_id}).one()
            # the marketplace ships an order it fulfils: no label of ours to wait for
            if not (has_invoice and (has_label or order.fulfilled_by_marketplace)):
                raise IllegalTransition(f"order {order_id}: invoice or label missing")
            path = [S.DOCUMENTED, S.READY_TO_SHIP]
        advance(session, order, path, actor="task:mark_ready_to_ship")
        if marketplace_shipped(order):  # it left the marketplace's warehouse meanwhile
            ship_it(session, order_id)
        return Outcome("ready_to_ship")


def ship(transaction: Transaction, order_id: int, push: PushFulfilment) -> Outcome:
    """The parcel left: tracking goes back to the marketplace (an account with no API
    connection gets no push), held stock leaves the shelf. For an order the marketplace
    fulfils, it only records that the marketplace shipped it."""
    actor = "task:ship"
    with transaction() as session:
        order = session.get(Order, order_id)
        assert order is not None
        if OrderState(order.state) != S.READY_TO_SHIP:
            return Outcome(f"skip: {order.state}")
        if order.fulfilled_by_marketplace:  # nothing to push, no stock of ours to consume
            session.refresh(order, with_for_update=True)  # locked, and current
            if OrderState(order.state) != S.READY_TO_SHIP:
                return Outcome(f"skip: {order.state}")
            transition(session, order, S.SHIPPED, actor=actor, fulfilled_by=order.channel)
            return Outcome("shipped by the marketplace")
        shipment = session.scalar(select(Shipment).where(Shipment.order_id == order_id))
        account = session.get(ChannelAccount, order.channel_account_id)
        assert shipment is not None and account is not None
        external_id, tracking, carrier = (
            order.external_id, shipment.tracking_number or "", shipment.carrier
        )  # fmt: skip
    if account.api_base_url or account.credentials:
        push(account, external_id, tracking_number=tracking, carrier=carrier,
             idempotency_key=f"fulfill:{order_id}")  # fmt: skip
    with transaction() as session:
        order = load_for_update(session, order_id)
        if OrderState(order.state) != S.READY_TO_SHIP:
            return Outcome(f"skip: {order.state}")
        stock.consume(session, order_id)
        shipment = session.scalar(select(Shipment).where(Shipment.order_id == order_id))
        assert shipment is not None
        shipment.status, shipment.shipped_at = "shipped", utcnow()
        transition(session, order, S.SHIPPED, actor=actor, tracking_number=tracking)
    return Outcome("shipped")
