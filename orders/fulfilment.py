"""Fulfilment: a paid order gets its label, becomes ready to ship, and ships.

- ``buy_label``: one label per order from the carrier (key ``label:{order_id}``, claimed before
  the call), recorded as the order's shipment and label rows; a label bought before is reused.
- ``mark_ready_to_ship``: invoice and label there → ``documented`` → ``ready_to_ship``.
- ``ship``: the parcel left: held stock leaves the shelf, the order is ``shipped`` and the
  tracking number for the marketplace is written to the outbox in that same transaction
  (``orders.outbox``, key ``fulfill:{order_id}:s{shipment_id}``).

An order the marketplace fulfils itself (Amazon FBA, ``fulfilled_by_marketplace``) needs none
of that: ``buy_label`` buys nothing (a ``label_not_needed`` event), the invoice alone makes it
ready to ship, and shipping it is a record of what the marketplace did, with no push, no stock
of ours consumed and no shipment or label row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, bindparam, exists, func, insert, select
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import table, utcnow
from db.models import (
    IdempotencyKey,
    Invoice,
    Label,
    Order,
    OrderEvent,
    OrderLine,
    Shipment,
    ShipmentLine,
)
from db.session import Transaction, core
from domain.canonical import Address
from domain.errors import PermanentError, RetryableError
from domain.parcel import Parcel
from domain.states import OrderState
from orders import idempotency, outbox, stock
from orders.intake import record_event
from orders.steps import FollowUp, Outcome
from orders.transitions import IllegalTransition, advance, load_for_update, transition

__all__ = [
    "LABEL_NOT_NEEDED",
    "BoughtLabel",
    "Carrier",
    "ShipThese",
    "buy_label",
    "cancelled_after_shipping",
    "fulfilled_elsewhere",
    "mark_ready_to_ship",
    "marketplace_shipped",
    "parcel_for",
    "replace_shipment",
    "ship",
    "ship_from",
    "void_labels",
]

S = OrderState
T = TypeVar("T")
#: timeline kind of buy_label for an order the marketplace ships itself
LABEL_NOT_NEEDED = "label_not_needed"


class DocumentsPending(RetryableError):
    """The order is to be ready to ship, but its invoice or a label is still being made."""


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
    """The carrier: one label per idempotency key; a label voided is refunded (voiding it
    again is approved too)."""

    def void_label(self, label_id: str) -> bool: ...

    def get_label_by_ref(self, shipment_ref: str) -> BoughtLabel | None:
        """The newest live label bought for our shipment reference (one whose purchase
        went through but was never recorded here), or None."""
        ...

    def buy_label(
        self,
        *,
        shipment_ref: str,
        ship_to: Address,
        ship_from: Address,
        parcel: Parcel,
        idempotency_key: str,
    ) -> BoughtLabel: ...


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


class Group(Protocol):
    """Lines the marketplace ships together from one of its locations (see ``ShipmentPlan``)."""

    @property
    def location(self) -> str: ...
    @property
    def lines(self) -> Sequence[tuple[str, int]]: ...


class ShipmentPlan(Protocol):
    """How the order's marketplace groups its open lines by location (Shopify's fulfillment
    orders): (marketplace line id, quantity) per group, one shipment each; ``[]``: one
    shipment of everything from our location."""

    def __call__(self, order_id: int) -> Sequence[Group]: ...


class ShipThese(Protocol):
    """Ship these shipments of the order once the transaction commits (the ``ship`` task)."""

    def __call__(self, session: Session, order_id: int, shipment_ids: list[int]) -> None: ...


def one_shipment(order_id: int) -> Sequence[Group]:
    """The plan of a marketplace that does not split orders by location."""
    return []


#: states in which buy_label labels shipments: the pipeline's, and a re-bought label's
_LABEL_STATES = frozenset({S.PAID, S.READY_TO_SHIP, S.PARTIALLY_SHIPPED})

# --- prebuilt statements (see db.session.core) -------------------------------------------------

_orders, _lines = table(Order), table(OrderLine)
_shipments, _labels = table(Shipment), table(Label)
_invoices, _events = table(Invoice), table(OrderEvent)
_shipment_lines = table(ShipmentLine)


def _first_shipment(order: ColumnElement[int]) -> Select[int | None]:
    """The first shipment the order ever had (its label key is ``label:{order}``)."""
    return select(func.min(_shipments.c.id)).where(_shipments.c.order_id == order)


#: what buying a label needs, in one query (the order row locked: shipments are made once):
#: the order's state and address, its number of lines, whether the marketplace ships it, and
#: the first shipment it ever had (None: none yet), whose label key is ``label:{order}``
_LABEL_INPUT = (
    select(
        _orders.c.state,
        _orders.c.shipping_address,
        select(func.count(_lines.c.id)).where(_lines.c.order_id == _orders.c.id)
        .scalar_subquery(),
        _orders.c.fulfilled_by_marketplace,
        _orders.c.channel,
        _first_shipment(_orders.c.id).scalar_subquery(),
    )
    .where(_orders.c.id == bindparam("b_order"))
    .with_for_update(of=_orders)
)
#: the order's shipments that are not voided, with their label's tracking number (if any) and
#: their units; and the first shipment the order ever had (its label key is ``label:{order}``)
_ACTIVE_SHIPMENTS = (
    select(
        _shipments.c.id,
        select(_labels.c.tracking_number)
        .where(_labels.c.shipment_id == _shipments.c.id, _labels.c.voided_at.is_(None))
        .scalar_subquery(),
        select(func.coalesce(func.sum(_shipment_lines.c.quantity), 0))
        .where(_shipment_lines.c.shipment_id == _shipments.c.id)
        .scalar_subquery(),
    )
    .where(_shipments.c.order_id == bindparam("b_order"), _shipments.c.status != "voided")
    .order_by(_shipments.c.id)
)
_FIRST_SHIPMENT = _first_shipment(bindparam("b_order"))
_ORDER_LINES = (
    select(_lines.c.external_id, _lines.c.quantity)
    .where(_lines.c.order_id == bindparam("b_order"))
    .order_by(_lines.c.id)
)
_NEW_SHIPMENT = insert(_shipments).returning(_shipments.c.id)
_NEW_SHIPMENT_LINE = insert(_shipment_lines)
#: a shipment labelled, unless it has a live label already (no row then); whether staff asked
#: to ship it once labelled
_LABELLED = (
    _shipments.update()
    .where(
        _shipments.c.id == bindparam("b_id"),
        ~select(_labels.c.id)
        .where(_labels.c.shipment_id == _shipments.c.id, _labels.c.voided_at.is_(None))
        .exists(),
    )
    .values(tracking_number=bindparam("b_tracking"), carrier=bindparam("b_carrier"),
            status="labelled")
    .returning(_shipments.c.ship_request)
)  # fmt: skip
_RECORD_LABEL = insert(_labels)
_LABEL_NOT_NEEDED_RECORDED = select(_events.c.id).where(
    _events.c.order_id == bindparam("b_order"), _events.c.kind == LABEL_NOT_NEEDED
)
_DOCUMENTED = select(
    exists().where(_invoices.c.order_id == bindparam("b_order"), _invoices.c.kind == "invoice"),
    exists().where(
        _labels.c.shipment_id == _shipments.c.id, _shipments.c.order_id == bindparam("b_order"),
        _labels.c.voided_at.is_(None),
    ),
    # every shipment that is not voided has its label
    ~exists().where(
        _shipments.c.order_id == bindparam("b_order"), _shipments.c.status == "pending"
    ),
)  # fmt: skip


def _active(session: Session, order_id: int) -> list[tuple[int, str | None, int]]:
    rows = core(session).execute(_ACTIVE_SHIPMENTS, {"b_order": order_id}).all()
    return [(int(i), t, int(u)) for i, t, u in rows]


def _make_shipments(
    session: Session, order_id: int, groups: Sequence[Group]
) -> list[tuple[int, str | None, int]]:
    """The order's shipments: one per group the marketplace gave (its lines, from its
    location), or one of every line from our location; as ``_ACTIVE_SHIPMENTS`` rows."""
    db, now = core(session), utcnow()
    ordered = {str(external): int(qty) for external, qty in db.execute(
        _ORDER_LINES, {"b_order": order_id})}  # fmt: skip
    planned: list[tuple[str | None, list[tuple[str, int]]]] = []
    for group in groups:
        taken = [
            (line, min(qty, ordered[line]))
            for line, qty in group.lines
            if line in ordered and qty > 0
        ]
        if taken:
            planned.append((group.location, taken))
    if not planned:  # the marketplace does not split it (or said nothing we know): from ours
        planned = [(None, [(line, qty) for line, qty in ordered.items() if qty > 0])]
    made: list[tuple[int, str | None, int]] = []
    for given, taken in planned:
        location, ours = stock.shipment_location(session, order_id, given)
        shipment_id = db.execute(
            _NEW_SHIPMENT,
            {"order_id": order_id, "carrier": "", "status": "pending", "location": location,
             "stock_location_id": ours, "created_at": now},
        ).scalar_one()  # fmt: skip
        if taken:
            db.execute(
                _NEW_SHIPMENT_LINE,
                [{"shipment_id": shipment_id, "line_external_id": line, "quantity": qty}
                 for line, qty in taken],
            )  # fmt: skip
        made.append((shipment_id, None, sum(qty for _, qty in taken)))
    return made


def _always(channel: str) -> bool:
    return True


def buy_label(
    transaction: Transaction,
    order_id: int,
    carrier: Callable[[], Carrier],
    keys: idempotency.Claimant,
    plan: ShipmentPlan = one_shipment,
    *,
    splits: Callable[[str], bool] = _always,
    ship_requested: ShipThese | None = None,
) -> Outcome:
    """A label for each of the paid order's shipments (their tracking numbers are the
    result). The shipments are made first: one per location the marketplace ships the order
    from (``plan``, asked only for an order of several lines on a marketplace that ``splits``
    orders by location), else one of everything. A shipment's label key is ``label:{order_id}``
    for the order's first shipment and ``label:{order_id}:s{shipment_id}`` for the others (a
    split, a re-bought label), claimed in the transaction that finds it unlabelled.
    ``carrier`` is built only when a label is to be bought: an order the marketplace ships
    needs none configured. A shipment staff asked to ship as soon as it is labelled (chosen
    lines, ``orders.staff.ship_lines``) is shipped after the label's commit
    (``ship_requested``)."""
    actor = "task:buy_label"
    claimed: _Claim | None = None
    with transaction() as session:
        found = core(session).execute(_LABEL_INPUT, {"b_order": order_id}).one_or_none()
        if found is None:
            raise PermanentError(f"order {order_id} does not exist")
        state, address, line_count, by_marketplace, channel, first = found
        if OrderState(state) not in _LABEL_STATES:
            return Outcome(f"skip: {state}")
        if by_marketplace:  # the marketplace ships it with its own label
            db = core(session)
            if db.execute(_LABEL_NOT_NEEDED_RECORDED, {"b_order": order_id}).first() is None:
                record_event(session, order_id, actor=actor, kind=LABEL_NOT_NEEDED,
                             reason="fulfilled by the marketplace")  # fmt: skip
            return Outcome(LABEL_NOT_NEEDED)
        ship_to = Address(**(address or {}))
        shipments = _active(session, order_id)
        asks = line_count > 1 and OrderState(state) == S.PAID and splits(str(channel))
        if not shipments and not asks:
            shipments = _make_shipments(session, order_id, [])
        claimed = _claim_first(session, order_id, shipments, ship_to, keys, first)
    if not shipments:  # several lines: where does the marketplace ship them from?
        groups = plan(order_id)
        with transaction() as session:
            first = core(session).execute(_LABEL_INPUT, {"b_order": order_id}).one()[-1]  # lock
            shipments = _active(session, order_id)
            if not shipments:
                shipments = _make_shipments(session, order_id, groups)
            claimed = _claim_first(session, order_id, shipments, ship_to, keys, first)
    tracking = [str(t) for _, t, _ in shipments if t]
    for shipment_id, existing, units in shipments:
        if existing:
            continue
        if claimed is None or claimed.shipment_id != shipment_id:
            with transaction() as session:
                claimed = _claim(session, order_id, shipment_id, units, ship_to, keys)
        if claimed.superseded:
            claimed = _supersede(transaction, order_id, claimed, units, ship_to, carrier, keys,
                                 actor)  # fmt: skip
        number = _buy_and_record(transaction, order_id, claimed, ship_to, carrier, keys, actor,
                                 ship_requested)  # fmt: skip
        claimed = None
        if number:
            tracking.append(number)
    return Outcome(", ".join(tracking) or "already recorded")


@dataclass(frozen=True)
class _Claim:
    shipment_id: int
    key: str
    ref: str
    parcel: Parcel
    #: the shipment's key is unfinished from an attempt for another parcel or address (an
    #: edit changed the pending shipment while that attempt's purchase was in flight and its
    #: worker died): ``_supersede`` voids what it may have bought and retires the key first
    superseded: bool = False


def _claim(
    session: Session, order_id: int, shipment_id: int, units: int, ship_to: Address,
    keys: idempotency.Claimant, first: int | None = None,
) -> _Claim:  # fmt: skip
    """Store (or take back) the idempotency key of one shipment's label, before the call.
    ``first``: the order's first shipment, when the caller read it in this transaction."""
    parcel = parcel_for(units)
    params = {"ship_to": ship_to.model_dump(), "grams": parcel.weight_grams}
    if first is None:
        first = core(session).execute(_FIRST_SHIPMENT, {"b_order": order_id}).scalar()
    base, ref = _label_names(order_id, None if first == shipment_id else shipment_id)
    stale = idempotency.unfinished(session, base)
    if stale is not None and stale.request_hash != idempotency.request_hash(params):
        keys.check_not_live(stale)  # an attempt still in flight: wait for it
        return _Claim(shipment_id, stale.key, ref, parcel, superseded=True)
    key = keys.claim(session, base, params, point="label_requested")
    return _Claim(shipment_id, key, ref, parcel)


def _label_names(order_id: int, shipment_id: int | None) -> tuple[str, str]:
    """A shipment's label: the base of its idempotency key and the reference its purchase
    goes out under at the carrier (where a lost answer is found again). The order's first
    shipment (``None``) has ``label:{order}`` and ``order-{order}``, any other
    ``label:{order}:s{shipment}`` and ``order-{order}-s{shipment}``. A retired key's
    successor (``…:2``) buys under the same reference."""
    if shipment_id is None:
        return f"label:{order_id}", f"order-{order_id}"
    return f"label:{order_id}:s{shipment_id}", f"order-{order_id}-s{shipment_id}"


def _ref_of_key(order_id: int, key: str) -> str:
    """The carrier reference of a label key (``_label_names``, read back)."""
    part = key.removeprefix(f"label:{order_id}").lstrip(":").split(":", 1)[0]
    return _label_names(order_id, int(part[1:]) if part.startswith("s") else None)[1]


class _RecordedMeanwhile(RetryableError):
    """A label attempt taken for dead recorded its label while it was being voided."""


@dataclass(frozen=True)
class _Unrecorded:
    """Why a label purchase is retired unrecorded: the key's error, the timeline's reason."""

    retired: str
    voided: str


_SUPERSEDED = _Unrecorded(
    "superseded: the shipment changed before its label was recorded",
    "bought before an edit changed the shipment, never recorded",
)
_CANCELLED = _Unrecorded(
    "retired: the order was cancelled before its label was recorded",
    "bought as the order was cancelled, never recorded",
)


def _void_unrecorded(
    transaction: Transaction, order_id: int, key: str, carrier: Callable[[], Carrier],
    why: _Unrecorded, actor: str, then: Callable[[Session], T],
) -> tuple[str | None, T]:  # fmt: skip
    """A purchase under ``key`` that may have been applied at the carrier and was never
    recorded: the label it bought (found by our reference) is voided and the key retired,
    and ``then`` runs in the same transaction. The tracking number voided (None: the carrier
    sold nothing under that reference) and what ``then`` returned. Safe to repeat: a voided
    label is not found again."""
    client = carrier()
    found = client.get_label_by_ref(_ref_of_key(order_id, key))
    if found is not None and not client.void_label(found.label_id):
        raise PermanentError(f"the carrier refused to void label {found.tracking_number}")
    with transaction() as session:
        idempotency.locked_point(session, key)  # a recording in flight ends first
        recorded = session.scalar(select(Label).where(Label.idempotency_key == key))
        if recorded is None:
            idempotency.fail(session, key, why.retired, rejected=True)
            if found is not None:
                record_event(session, order_id, actor=actor, kind="label_voided",
                             tracking_number=found.tracking_number, reason=why.voided)  # fmt: skip
            return (found.tracking_number if found else None), then(session)
        # its attempt was alive after all and recorded the label meanwhile: if that is what
        # was just voided, it is recorded so; the step runs again with that known
        if found is not None and recorded.external_id == found.label_id:
            _mark_voided(session, order_id, recorded, actor, reason=why.voided)
    raise _RecordedMeanwhile(f"order {order_id}: the label under {key} was recorded while "
                             "it was being voided; looking again")


def _supersede(
    transaction: Transaction, order_id: int, claimed: _Claim, units: int, ship_to: Address,
    carrier: Callable[[], Carrier], keys: idempotency.Claimant, actor: str,
) -> _Claim:  # fmt: skip
    """The shipment changed after a label attempt for it died in flight (``_Claim``): a label
    that attempt bought is found by our reference and voided at the carrier (it is for the old
    parcel and was never recorded), its key retired, and the shipment's key claimed again
    (``label:…:2``) for the parcel as it is now."""
    _, claimed_again = _void_unrecorded(
        transaction, order_id, claimed.key, carrier, _SUPERSEDED, actor,
        lambda session: _claim(session, order_id, claimed.shipment_id, units, ship_to, keys),
    )  # fmt: skip
    return claimed_again


def _claim_first(
    session: Session, order_id: int, shipments: list[tuple[int, str | None, int]],
    ship_to: Address, keys: idempotency.Claimant, first: int | None,
) -> _Claim | None:  # fmt: skip
    """The first unlabelled shipment's key, claimed in the transaction that found it (with
    the order locked). ``first``: the order's first shipment as read before ``shipments``
    were made, None when it had none: then the first of those made (ids ascend) is it."""
    if first is None and shipments:
        first = shipments[0][0]
    for shipment_id, existing, units in shipments:
        if not existing:
            return _claim(session, order_id, shipment_id, units, ship_to, keys, first)
    return None


def _buy_and_record(
    transaction: Transaction, order_id: int, claimed: _Claim, ship_to: Address,
    carrier: Callable[[], Carrier], keys: idempotency.Claimant, actor: str,
    ship_requested: ShipThese | None = None,
) -> str | None:  # fmt: skip
    """Buy and record the label of one shipment; its tracking number (None: recorded by
    another attempt meanwhile, or not recorded because its key was retired meanwhile)."""
    shipment_id, key = claimed.shipment_id, claimed.key
    with keys.outside_call(key):
        label = carrier().buy_label(
            shipment_ref=claimed.ref, ship_to=ship_to, ship_from=ship_from(),
            parcel=claimed.parcel, idempotency_key=key,
        )  # fmt: skip
    with transaction() as session:
        if not idempotency.retired(session, key):
            return _record_label(session, order_id, shipment_id, key, label, actor,
                                 ship_requested)  # fmt: skip
    _void_outlived(transaction, order_id, label, carrier, actor)
    return None


def _record_label(
    session: Session, order_id: int, shipment_id: int, key: str, label: BoughtLabel,
    actor: str, ship_requested: ShipThese | None,
) -> str | None:  # fmt: skip
    db, now = core(session), utcnow()
    labelled = db.execute(_LABELLED, {"b_id": shipment_id, "b_tracking": label.tracking_number,
                                      "b_carrier": label.carrier}).first()  # fmt: skip
    if labelled is None:  # another attempt recorded its label meanwhile
        return None
    db.execute(
        _RECORD_LABEL,
        {"shipment_id": shipment_id, "carrier": label.carrier, "idempotency_key": key,
         "tracking_number": label.tracking_number, "pdf": label.pdf, "created_at": now,
         "external_id": label.label_id},
    )  # fmt: skip
    response = {"label_id": label.label_id, "tracking_number": label.tracking_number}
    idempotency.finish(session, key, response)
    record_event(session, order_id, actor=actor, kind="label",
                 tracking_number=label.tracking_number, carrier=label.carrier)  # fmt: skip
    if labelled.ship_request is not None and ship_requested is not None:
        ship_requested(session, order_id, [shipment_id])
    return label.tracking_number


def _void_outlived(
    transaction: Transaction, order_id: int, label: BoughtLabel,
    carrier: Callable[[], Carrier], actor: str,
) -> None:  # fmt: skip
    """A label bought by an attempt that outlived its key's lock (its worker was stopped past
    it), after another attempt took the key over and retired it (the order was cancelled or
    its shipment edited meanwhile, and whatever the key had bought then was voided): voided
    too, and never recorded. The carrier approves a second void of one label; staff see one
    ``label_voided`` for it."""
    if not carrier().void_label(label.label_id):
        raise PermanentError(f"the carrier refused to void label {label.tracking_number}")
    with transaction() as session:
        shown = session.scalars(
            select(OrderEvent.detail).where(
                OrderEvent.order_id == order_id, OrderEvent.kind == "label_voided"
            )
        )
        if all((detail or {}).get("tracking_number") != label.tracking_number
               for detail in shown):  # fmt: skip
            record_event(session, order_id, actor=actor, kind="label_voided",
                         tracking_number=label.tracking_number, reason=_OUTLIVED)  # fmt: skip


_OUTLIVED = "bought by an attempt that outlived its lock after its key was retired, never recorded"


def mark_ready_to_ship(
    transaction: Transaction,
    order_id: int,
    *,
    ship_it: FollowUp,
    void_unused: FollowUp | None = None,
) -> Outcome:
    """Invoice and label there (the invoice alone for an order the marketplace ships): the
    order is ready to ship. ``ship_it`` records the shipping when the marketplace already
    shipped it meanwhile; an order fulfilled in the marketplace's admin meanwhile is recorded
    so (``fulfilled_elsewhere``, its labels voided by ``void_unused``)."""
    with transaction() as session:
        order = load_for_update(session, order_id)
        state = OrderState(order.state)
        if state not in (S.PAID, S.DOCUMENTED):
            return Outcome(f"skip: {state}")
        path = [S.READY_TO_SHIP]
        if state == S.PAID:
            has_invoice, has_label, all_labelled = (
                core(session).execute(_DOCUMENTED, {"b_order": order_id}).one()
            )
            labelled = has_label and all_labelled
            # the marketplace ships an order it fulfils: no label of ours to wait for
            if not (has_invoice and (labelled or order.fulfilled_by_marketplace)):
                # both header steps ended, so a document went missing since: an edit set a
                # parcel aside and its new label is being bought (or an invoice credited and
                # the next one on its way). Wait for it; past the retries, staff see it.
                raise DocumentsPending(f"order {order_id}: its invoice or a label is still "
                                       f"being made (after an edit); waiting for it")  # fmt: skip
            path = [S.DOCUMENTED, S.READY_TO_SHIP]
        advance(session, order, path, actor="task:mark_ready_to_ship")
        if marketplace_shipped(order):  # it left the marketplace's warehouse meanwhile
            ship_it(session, order_id)
        elif order.fulfillment_status == "fulfilled" and void_unused is not None:
            fulfilled_elsewhere(session, order_id, void_unused=void_unused)
            return Outcome("fulfilled elsewhere")
        return Outcome("ready_to_ship")


def ship(
    transaction: Transaction,
    order_id: int,
    *,
    deliver_it: FollowUp,
    actor: str = "task:ship",
    shipment_ids: Sequence[int] | None = None,
) -> Outcome:
    """Shipments left: each labelled one (or only ``shipment_ids``) is ``shipped`` and, in the
    same transaction, its fulfilment (tracking, its lines and location) for the marketplace is
    written to the outbox (``orders.outbox``), delivered after commit. The order is
    ``partially_shipped`` until its last shipment leaves, then ``shipped``, and its held stock
    leaves the shelf. For an order the marketplace fulfils, it only records that the
    marketplace shipped it."""
    with transaction() as session:
        order = load_for_update(session, order_id)
        state = OrderState(order.state)
        if state not in (S.READY_TO_SHIP, S.PARTIALLY_SHIPPED):
            return Outcome(f"skip: {order.state}")
        if order.fulfilled_by_marketplace:  # nothing to push, no stock of ours to consume
            transition(session, order, S.SHIPPED, actor=actor, fulfilled_by=order.channel)
            return Outcome("shipped by the marketplace")
        if order.held_reason is not None:  # staff hold it: it waits for their release
            return Outcome("skip: held")
        open_shipments = session.scalars(
            select(Shipment)
            .where(Shipment.order_id == order_id, Shipment.status.in_(["pending", "labelled"]))
            .order_by(Shipment.id)
        ).all()
        leaving = [
            sh for sh in open_shipments
            if sh.status == "labelled" and (shipment_ids is None or sh.id in shipment_ids)
        ]  # fmt: skip
        if not leaving and shipment_ids is not None:
            # the chosen ones that are open are pending: their label ships them; none open:
            # they left already (a repeated request) or were set aside
            pending = any(sh.id in shipment_ids for sh in open_shipments)
            return Outcome("skip: waiting for the label" if pending else "skip: not open")
        if not leaving:
            raise IllegalTransition(f"order {order_id}: no labelled shipment to ship")
        # shipments staff asked for by lines carry their name: the timeline says who shipped
        asked = next((sh.ship_requested_by for sh in leaving if sh.ship_requested_by), None)
        actor = asked or actor
        last = len(leaving) == len(open_shipments)
        now = utcnow()
        for n, shipment in enumerate(leaving, start=1):
            shipment.status, shipment.shipped_at = "shipped", now
            outbox.enqueue(
                session, order_id, kind=outbox.FULFILMENT,
                key=f"fulfill:{order_id}:s{shipment.id}",
                payload={
                    "tracking_number": shipment.tracking_number or "",
                    "carrier": shipment.carrier, "location": shipment.location,
                    "lines": [[ln.line_external_id, ln.quantity] for ln in shipment.lines],
                    "last": last and n == len(leaving),
                },
                deliver_it=deliver_it, shipment_id=shipment.id,
            )  # fmt: skip
        tracking = ", ".join(sh.tracking_number or "" for sh in leaving)
        if last:
            stock.consume(session, order_id)
            transition(session, order, S.SHIPPED, actor=actor, tracking_number=tracking)
            return Outcome("shipped")
        if state == S.READY_TO_SHIP:
            transition(session, order, S.PARTIALLY_SHIPPED, actor=actor, tracking_number=tracking)
        else:
            record_event(session, order_id, actor=actor, kind="shipment_shipped",
                         tracking_number=tracking)  # fmt: skip
    return Outcome("partially shipped")


def replace_shipment(
    session: Session, shipment: Shipment, parts: Sequence[Mapping[str, int]]
) -> list[Shipment]:
    """Set a shipment that has not left aside (``voided``) and put one new ``pending``
    shipment per part in its place (line → units, from the same location), for ``buy_label``
    to label: one label per shipment, so a parcel whose contents change gets a new one. The
    parts must add up to the shipment's lines. The caller voids the old label after commit
    (``void_labels``, for a ``labelled`` one) and publishes the labelling. Returns the new
    shipments, flushed."""
    if shipment.status not in ("pending", "labelled"):
        raise IllegalTransition(f"shipment {shipment.id} is {shipment.status}: it cannot change")
    had = {line.line_external_id: line.quantity for line in shipment.lines}
    total: dict[str, int] = {}
    for part in parts:
        for line, units in part.items():
            if units < 0:
                raise ValueError(f"line {line!r}: units must not be negative")
            total[line] = total.get(line, 0) + units
    if {k: v for k, v in total.items() if v} != had:
        raise ValueError(f"shipment {shipment.id}: the parts do not add up to its lines")
    shipment.status = "voided"
    made = []
    for part in parts:
        taken = [(line, units) for line, units in part.items() if units > 0]
        if not taken:
            continue
        new = Shipment(order_id=shipment.order_id, carrier="", status="pending",
                       location=shipment.location,
                       stock_location_id=shipment.stock_location_id)  # fmt: skip
        new.lines = [ShipmentLine(line_external_id=line, quantity=units) for line, units in taken]
        session.add(new)
        made.append(new)
    session.flush()
    return made


def void_labels(
    transaction: Transaction,
    order_id: int,
    carrier: Callable[[], Carrier],
    keys: idempotency.Claimant,
) -> Outcome:
    """Labels that will not leave are voided at the carrier (the carrier refunds them): all
    unused ones of a cancelled order, else those of shipments set aside (``voided``: staff
    voided it, or the marketplace's admin shipped the order); each is recorded on its label
    and shipment and on the timeline. Safe to repeat: a voided label is skipped, and the
    carrier approves a second void of the same label.

    A cancelled order's label purchase that was in flight when it was cancelled, and never
    recorded (its attempt died, or found the order cancelled on its retry), is looked up at
    the carrier by our reference and voided too, and its key retired (``_void_unrecorded``);
    one whose attempt is still alive is waited for (``KeyLocked``: it records its label, which
    the retry then voids)."""
    with transaction() as session:
        state = session.scalar(select(Order.state).where(Order.id == order_id))
        in_flight = _unfinished_label_keys(session, order_id) if state == S.CANCELLED else []
        for row in in_flight:
            # a live attempt records its label, which the retry then voids; one that died
            # after the purchase holds the key until its lock times out: retry after that
            keys.check_not_live(row, until_released=True)
        in_flight_keys = [row.key for row in in_flight]
        # a cancelled order ships nothing: every unused label goes; otherwise only the labels
        # of shipments set aside (staff voided them, or the marketplace shipped elsewhere)
        unused = ["pending", "labelled", "voided"] if state == S.CANCELLED else ["voided"]
        found = session.execute(
            select(Label.id, Label.external_id, Label.tracking_number)
            .join(Shipment, Shipment.id == Label.shipment_id)
            .where(
                Shipment.order_id == order_id,
                Shipment.status.in_(unused),
                Label.voided_at.is_(None),
            )
            .order_by(Label.id)
        ).all()
    voided = []
    for label_id, external_id, tracking in found:
        if external_id is None:  # bought before labels kept the carrier's id
            with transaction() as session:
                record_event(session, order_id, actor="task:void_label", kind="label_not_voided",
                             tracking_number=tracking, reason="no carrier label id")  # fmt: skip
            continue
        if not carrier().void_label(external_id):
            raise PermanentError(f"the carrier refused to void label {tracking}")
        with transaction() as session:
            label = session.get(Label, label_id, with_for_update=True)
            assert label is not None
            if not _mark_voided(session, order_id, label, "task:void_label"):
                continue
        voided.append(tracking)
    for key in in_flight_keys:
        unrecorded, _ = _void_unrecorded(transaction, order_id, key, carrier, _CANCELLED,
                                         "task:void_label", lambda session: None)  # fmt: skip
        if unrecorded is not None:
            voided.append(unrecorded)
    return Outcome(f"voided {len(voided)}")


def _mark_voided(
    session: Session, order_id: int, label: Label, actor: str, **detail: str
) -> bool:
    """A label the carrier voided, recorded so on it, its shipment and the timeline; False if
    it was already."""
    if label.voided_at is not None:
        return False
    label.voided_at = utcnow()
    shipment = session.get(Shipment, label.shipment_id)
    assert shipment is not None
    if shipment.status in ("shipped", "delivered"):  # it left after all: keep it
        raise PermanentError(f"label {label.tracking_number} was shipped; it is not voided")
    shipment.status = "voided"
    record_event(session, order_id, actor=actor, kind="label_voided",
                 tracking_number=label.tracking_number, **detail)  # fmt: skip
    return True


def _unfinished_label_keys(session: Session, order_id: int) -> list[IdempotencyKey]:
    """The order's label keys whose purchase started and never finished (``label:{order}``,
    ``label:{order}:s{shipment}``, and their next keys ``…:2`` after a retired one)."""
    base = f"label:{order_id}"
    return list(
        session.scalars(
            select(IdempotencyKey)
            .where(
                idempotency.family(base),
                IdempotencyKey.recovery_point.not_in([idempotency.FINISHED, idempotency.REJECTED]),
            )
            .order_by(IdempotencyKey.id)
            .with_for_update()
        )
    )


# --- what the marketplace did in its own admin -----------------------------------------------

#: the order's failed step when the marketplace cancelled it after it shipped
RETURN_STEP = "return"


def fulfilled_elsewhere(session: Session, order_id: int, *, void_unused: FollowUp) -> bool:
    """The marketplace says the whole order is fulfilled, but not by our pushes (staff
    fulfilled it in the marketplace's admin, or another app did): our shipments that have not
    left are not shipped again (their labels are voided, ``void_unused``), held stock leaves
    the shelf and the order is ``shipped``, recorded as fulfilled on the marketplace. Returns
    whether it applied (only to a ready or partly shipped order we fulfil)."""
    order = load_for_update(session, order_id)
    state = OrderState(order.state)
    if order.fulfilled_by_marketplace or state not in (S.READY_TO_SHIP, S.PARTIALLY_SHIPPED):
        return False
    unused = session.scalars(
        select(Shipment).where(
            Shipment.order_id == order_id, Shipment.status.in_(["pending", "labelled"])
        )
    ).all()
    for shipment in unused:
        shipment.status = "voided"
    stock.consume(session, order_id)
    transition(session, order, S.SHIPPED, actor="marketplace", fulfilled_by="marketplace admin",
               shipments_not_sent=len(unused))  # fmt: skip
    if unused:
        void_unused(session, order_id)
    return True


def cancelled_after_shipping(session: Session, order_id: int) -> bool:
    """The marketplace cancelled an order that has (partly) shipped: nothing is undone
    silently; the parcel is expected back. A shipped order goes to ``needs_attention`` (step
    ``return``) for staff to receive the return and refund; a delivered one keeps its state
    with a ``return_expected`` event. Recorded once."""
    order = load_for_update(session, order_id)
    state = OrderState(order.state)
    if state not in (S.SHIPPED, S.PARTIALLY_SHIPPED, S.DELIVERED):
        return False
    seen = session.scalar(
        select(OrderEvent.id).where(
            OrderEvent.order_id == order_id, OrderEvent.kind == "return_expected"
        )
    )
    if seen is not None:
        return False
    record_event(session, order_id, actor="marketplace", kind="return_expected",
                 reason="cancelled on the marketplace after it shipped")  # fmt: skip
    if state != S.DELIVERED:
        error = "cancelled on the marketplace after it shipped: expect the parcel back"
        transition(session, order, S.NEEDS_ATTENTION, actor="marketplace", step=RETURN_STEP,
                   error=error)  # fmt: skip
        order.failed_step, order.last_error, order.attempts = RETURN_STEP, error, 1
    return True
