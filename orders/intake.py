"""Intake: write a canonical order into ``orders`` / ``order_lines``, once, newest data winning.

Invariant 1 (one order per external order) rests on the unique key
``(channel_account_id, external_id)`` and an ``INSERT … ON CONFLICT DO NOTHING``; invariant 2
(newer never loses to older) on a conditional ``UPDATE … WHERE external_updated_at < :new``.
Both are single statements, so any number of concurrent webhooks, polls and retries for the same
order end with one row holding the newest data, whatever the interleaving.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import ChannelAccount, Order, OrderEvent, OrderLine
from db.session import append_rows, core, insert_new_rows, per_dialect
from domain.canonical import CanonicalOrder
from domain.states import OrderState, can_transition

__all__ = ["IntakeOutcome", "IntakeResult", "apply_order", "apply_page", "record_event"]


class IntakeOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    STALE = "stale"  # older than (or as old as) what we hold: ignored on purpose


@dataclass(frozen=True)
class IntakeResult:
    order_id: int
    outcome: IntakeOutcome
    state: OrderState
    cancelled_now: bool = False  # this update moved the order to cancelled
    #: refunds the marketplace made that this delivery recorded first (``orders.returns``)
    refunded: tuple[int, ...] = ()
    #: the delivery said the order changed without carrying it: fetch this external id
    refetch: str | None = None
    #: an edit set shipments aside: void their labels and label the new ones (``orders.edits``)
    relabel: bool = False


def _order_values(order: CanonicalOrder) -> dict[str, Any]:
    return {
        "external_number": order.external_number,
        "financial_status": order.financial_status,
        "fulfillment_status": order.fulfillment_status,
        "currency": order.currency,
        "subtotal": order.subtotal,
        "tax_total": order.tax_total,
        "shipping_total": order.shipping_total,
        "discount_total": order.discount_total,
        "total": order.total,
        "buyer_name": order.buyer_name,
        "buyer_email": order.buyer_email,
        "shipping_address": (
            order.shipping_address.model_dump(exclude_none=True) if order.shipping_address else None
        ),
        "payment_collected_by_marketplace": order.payment_collected_by_marketplace,
        "payment_facts": (
            order.payment.model_dump(mode="json", exclude_none=True) if order.payment else None
        ),
        "fulfilled_by_marketplace": order.fulfilled_by_marketplace,
        "external_created_at": order.created_at,
        "external_updated_at": order.updated_at,
        "cancelled_at": order.cancelled_at,
        "raw": order.raw,
    }


# prebuilt statements (see db.session.core)
_orders = table(Order)
_CREATE_ORDER = per_dialect(
    lambda insert: (
        insert(_orders)
        .on_conflict_do_nothing(index_elements=["channel_account_id", "external_id"])
        .returning(_orders.c.id)
    )
)
_order_lines, _order_events = table(OrderLine), table(OrderEvent)
_INSERT_LINES = insert(_order_lines)
_INSERT_EVENTS = insert(_order_events)


def record_event(
    session: Session,
    order_id: int,
    *,
    actor: str,
    kind: str,
    from_state: str | None = None,
    to_state: str | None = None,
    **detail: Any,
) -> None:
    record_events(
        session,
        order_id,
        [{"kind": kind, "from_state": from_state, "to_state": to_state, **detail}],
        actor=actor,
    )


def record_events(
    session: Session, order_id: int, events: list[dict[str, Any]], *, actor: str
) -> None:
    """Timeline rows in one INSERT: each a dict of ``kind``, ``from_state``, ``to_state`` and
    the detail (everything else)."""
    at = utcnow()
    rows = [_event_row(order_id, at, actor, event) for event in events]
    core(session).execute(_INSERT_EVENTS, rows if len(rows) > 1 else rows[0])


def _event_row(order_id: int, at: dt.datetime, actor: str, event: dict[str, Any]) -> dict[str, Any]:
    detail = dict(event)
    return {
        "order_id": order_id,
        "at": at,
        "actor": actor,
        "kind": detail.pop("kind"),
        "from_state": detail.pop("from_state", None),
        "to_state": detail.pop("to_state", None),
        "detail": detail,
    }


def _line_rows(order_id: int, order: CanonicalOrder) -> list[dict[str, Any]]:
    return [
        {
            "order_id": order_id,
            "external_id": line.external_id,
            "sku": line.sku,
            "title": line.title[:500],
            "quantity": line.quantity,
            "unit_price": line.unit_price,
            "discount": line.discount,
            "tax": line.tax,
            "total": line.total,
        }
        for line in order.lines
    ]


def _replace_lines(
    session: Session, order_id: int, order: CanonicalOrder, *, new: bool = False
) -> None:
    if not new:
        session.execute(delete(OrderLine).where(OrderLine.order_id == order_id))
    if order.lines:
        core(session).execute(_INSERT_LINES, _line_rows(order_id, order))


def _initial_state(order: CanonicalOrder) -> OrderState:
    return OrderState.CANCELLED if order.status == OrderState.CANCELLED else OrderState.NEW


def _new_order_row(account_id: int, order: CanonicalOrder, now: dt.datetime) -> dict[str, Any]:
    return {
        "channel_account_id": account_id,
        "channel": order.channel,
        "external_id": order.external_id,
        "state": _initial_state(order).value,
        "version": 1,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        **_order_values(order),
    }


def _received(order: CanonicalOrder) -> dict[str, Any]:
    """The timeline row of an order's creation."""
    return {
        "kind": "received",
        "to_state": _initial_state(order).value,
        "external_updated_at": order.updated_at.isoformat(),
    }


def apply_order(
    session: Session, account_id: int, order: CanonicalOrder, *, actor: str
) -> IntakeResult:
    """Create the order, update it if this data is newer, or leave it if this data is stale;
    then record the refunds it carries that are new (even from stale data: a refund is a fact
    of its own, recorded once by its id). A new refund the body gives without its lines
    (``itemized`` False: WooCommerce's summaries) is not recorded from it: the order is
    fetched whole (``refetch``), its refunds with their lines; an account we cannot ask (no
    credentials: webhooks only) records it as its amount."""
    result = _apply_order(session, account_id, order, actor=actor)
    if not order.refunds:
        return result
    from orders.returns import record_marketplace_refunds, unrecorded

    refunds = list(order.refunds)
    partial = [r for r in refunds if not r.itemized]
    if partial and unrecorded(session, account_id, partial):
        account = session.get_one(ChannelAccount, account_id)
        if account.credentials:  # the marketplace can be asked: its lines come with a fetch
            refunds = [r for r in refunds if r.itemized]
            result = replace(result, refetch=order.external_id)
    row = session.get_one(Order, result.order_id, with_for_update=True)
    new = record_marketplace_refunds(session, row, refunds, actor=actor)
    return replace(result, refunded=tuple(new)) if new else result


def _apply_order(
    session: Session, account_id: int, order: CanonicalOrder, *, actor: str
) -> IntakeResult:
    values = _order_values(order)
    now = utcnow()
    created_id = (
        core(session)
        .execute(_CREATE_ORDER(session), _new_order_row(account_id, order, now))
        .scalar_one_or_none()
    )
    if created_id is not None:
        _replace_lines(session, created_id, order, new=True)
        record_events(session, created_id, [_received(order)], actor=actor)
        return IntakeResult(created_id, IntakeOutcome.CREATED, _initial_state(order))

    key = (Order.channel_account_id == account_id) & (Order.external_id == order.external_id)
    from orders import edits

    # the order's row locked first: a concurrent intake of the same order (a fetch racing a
    # webhook) waits here, then reads the lines the other one wrote, so the edit's diff and
    # its reservations are made against what is there (not against what was before it)
    known = session.execute(
        select(Order.id, Order.total, Order.shipping_address).where(key).with_for_update()
    ).one()
    before = edits.snapshot(session, known.id)
    row = session.execute(
        update(Order)
        .where(key, Order.external_updated_at < order.updated_at)
        .values(**values, version=Order.version + 1, updated_at=now)
        .returning(Order.id, Order.state)
    ).one_or_none()
    if row is None:
        current = session.execute(select(Order.id, Order.state).where(key)).one()
        return IntakeResult(current.id, IntakeOutcome.STALE, OrderState(current.state))

    order_id, state = row.id, OrderState(row.state)
    relabel = False
    _replace_lines(session, order_id, order)
    record_event(
        session,
        order_id,
        actor=actor,
        kind="updated",
        external_updated_at=order.updated_at.isoformat(),
    )
    if order.status != OrderState.CANCELLED:
        # lines or money changed on the marketplace: stock, documents, or a person (one
        # transaction with the new lines)
        diff = edits.diff_lines(before, edits.snapshot(session, order_id))
        address = values["shipping_address"]  # a body without one moves no parcel
        relabel = edits.apply_edit(
            session, order_id, diff, actor=actor, money_changed=known.total != order.total,
            address_changed=bool(known.shipping_address and address)
            and known.shipping_address != address,
        )  # fmt: skip
        state = OrderState(
            session.execute(select(Order.state).where(Order.id == order_id)).scalar_one()
        )
    if order.status == OrderState.CANCELLED and can_transition(state, OrderState.CANCELLED):
        session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(state=OrderState.CANCELLED.value, version=Order.version + 1)
        )
        record_event(
            session,
            order_id,
            actor=actor,
            kind="transition",
            from_state=state.value,
            to_state=OrderState.CANCELLED.value,
            reason="cancelled on the marketplace",
        )
        return IntakeResult(order_id, IntakeOutcome.UPDATED, OrderState.CANCELLED, True)
    return IntakeResult(order_id, IntakeOutcome.UPDATED, state, relabel=relabel)


def apply_page(
    session: Session, account_id: int, orders: Sequence[CanonicalOrder], *, actor: str
) -> list[IntakeResult]:
    """A page of orders from a poll, a full sync or a bulk export, with the guarantees of
    ``apply_order`` for each, in a few statements rather than a few per order:

    - the orders inserted unless they exist (``db.session.insert_new_rows``: on PostgreSQL
      one COPY into a staging table and one ``INSERT … SELECT … ON CONFLICT DO NOTHING
      RETURNING``; the unique key decides which are new, as for one order: invariant 1),
      then all their lines and all their timeline rows (``append_rows``: a COPY each);
    - one ``SELECT`` of the others' stored ``external_updated_at``: those we hold as new or
      newer are stale (ours can only get newer), the rest (news on an order we hold: an update,
      an edit, a cancellation) go through ``apply_order`` one by one, its conditional UPDATE
      deciding again (invariant 2) and its edit and cancellation handling unchanged.

    The page's orders are written in ``external_id`` order, so two pages overlapping in one
    account (a poll beside a full sync) take their row locks in the same order; an order twice
    on one page counts once, its newest version. Results in that order, one per order.

    An order that carries refunds goes through ``apply_order`` whole (its refunds are recorded
    even from stale data). Whatever ``apply_order`` comes to do for an order it creates or finds
    stale, beyond the row, its lines and its ``received`` event, must be done here too (or such
    an order sent through ``apply_order``): this path writes only those."""
    newest: dict[str, CanonicalOrder] = {}
    for order in orders:
        held = newest.get(order.external_id)
        if held is None or order.updated_at > held.updated_at:
            newest[order.external_id] = order
    ordered = [newest[key] for key in sorted(newest)]
    batch = [o for o in ordered if not o.refunds]
    now = utcnow()
    created = {
        row.external_id: row.id
        for row in insert_new_rows(
            session, _orders, [_new_order_row(account_id, o, now) for o in batch],
            key=("channel_account_id", "external_id"), returning=("id", "external_id"),
        )
    }  # fmt: skip
    if created:  # the new orders' lines and timeline rows: new rows, appended (COPY)
        new = [(created[o.external_id], o) for o in batch if o.external_id in created]
        append_rows(session, _order_lines,
                    [row for order_id, o in new for row in _line_rows(order_id, o)])  # fmt: skip
        events = [_event_row(order_id, now, actor, _received(o)) for order_id, o in new]
        append_rows(session, _order_events, events)
    known = [o.external_id for o in batch if o.external_id not in created]
    stored = {
        row.external_id: row
        for row in session.execute(
            select(Order.id, Order.external_id, Order.state, Order.external_updated_at).where(
                Order.channel_account_id == account_id, Order.external_id.in_(known)
            )
        )
    } if known else {}  # fmt: skip
    results = []
    for order in ordered:
        order_id = created.get(order.external_id)
        row = stored.get(order.external_id)
        if order.refunds:
            results.append(apply_order(session, account_id, order, actor=actor))
        elif order_id is not None:
            results.append(IntakeResult(order_id, IntakeOutcome.CREATED, _initial_state(order)))
        elif row is not None and row.external_updated_at >= order.updated_at:
            results.append(IntakeResult(row.id, IntakeOutcome.STALE, OrderState(row.state)))
        else:
            results.append(apply_order(session, account_id, order, actor=actor))
    return results
