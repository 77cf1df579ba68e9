"""Staff JSON API: where every order stands, what is stuck and why, and safe retries."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from db.models import (
    ChannelAccount,
    InboxEvent,
    Invoice,
    Label,
    Order,
    OutboxAttempt,
    OutboxMessage,
    Shipment,
)
from db.session import rowcount
from domain.errors import PermanentError
from domain.states import InboxStatus, OrderState
from orders.users import Principal, audit
from web.auth import STAFF_RESPONSES, Problem, current
from web.sessions import SessionDep
from workflows.publish import publish_after_commit
from workflows.tasks import process_event

__all__ = ["MAX_ID", "Id", "Staff", "outbox_json", "router", "summary", "undelivered"]

router = APIRouter(
    prefix="/api",
    tags=["staff"],
    responses={
        **STAFF_RESPONSES,
        404: {"model": Problem, "description": "no such order, delivery or document"},
        409: {"model": Problem, "description": "not possible in the current state (done already)"},
    },
)
#: who makes the request (every /api route is behind web.auth.StaffGate)
Staff = Annotated[Principal, Depends(current)]
#: the largest row id: our ids are INTEGER columns (a larger number is a 422, not an error of
#: PostgreSQL's "integer out of range")
MAX_ID = 2**31 - 1
#: text a parameter may hold: anything but NUL, which no stored text holds (PostgreSQL's text
#: refuses it), so it is a 422 instead of a database error
NO_NUL = r"^[^\x00]*$"
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
PDF: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/pdf": {}}, "description": "the stored PDF"}
}


# --- response models: what /docs shows, and what schemathesis checks every answer against ---


class OrderOut(BaseModel):
    id: int
    channel: str
    external_id: str
    external_number: str | None
    state: OrderState
    currency: str
    total: str
    external_updated_at: dt.datetime
    failed_step: str | None
    last_error: str | None
    attempts: int
    version: int


class LineOut(BaseModel):
    sku: str | None
    title: str
    quantity: int
    unit_price: str
    tax: str
    total: str


class EventOut(BaseModel):
    at: dt.datetime
    actor: str
    kind: str
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    detail: dict[str, Any]


class OrderDetailOut(OrderOut):
    lines: list[LineOut]
    events: list[EventOut]


class OrderListOut(BaseModel):
    orders: list[OrderOut]


class SummaryOut(BaseModel):
    orders: int
    by_state: dict[str, int]
    by_channel: dict[str, int]
    inbox: dict[str, int]


class InboxEventOut(BaseModel):
    id: int
    channel: str
    account: str
    topic: str
    status: InboxStatus
    error: str | None
    attempts: int
    order_id: int | None
    received_at: dt.datetime
    bytes: int


class InboxListOut(BaseModel):
    events: list[InboxEventOut]


class InboxRetryOut(BaseModel):
    id: int
    status: InboxStatus


class RetryOut(BaseModel):
    id: int
    resumed_from: OrderState
    step: str | None = None


class ActionOut(BaseModel):
    id: int
    status: str


class StockOut(BaseModel):
    sku: str
    location: str
    on_hand: int  # at the location
    available: int  # over every location
    released: list[int]


def _order_json(order: Order, *, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": order.id,
        "channel": order.channel,
        "external_id": order.external_id,
        "external_number": order.external_number,
        "state": order.state,
        "currency": order.currency,
        "total": str(order.total),
        "external_updated_at": order.external_updated_at.isoformat(),
        "failed_step": order.failed_step,
        "held_reason": order.held_reason,
        "last_error": order.last_error,
        "attempts": order.attempts,
        "version": order.version,
    }
    if detail:
        out["lines"] = [
            {
                "sku": line.sku,
                "title": line.title,
                "quantity": line.quantity,
                "unit_price": str(line.unit_price),
                "tax": str(line.tax),
                "total": str(line.total),
            }
            for line in order.lines
        ]
        out["events"] = [
            {
                "at": ev.at.isoformat(),
                "actor": ev.actor,
                "kind": ev.kind,
                "from": ev.from_state,
                "to": ev.to_state,
                "detail": ev.detail,
            }
            for ev in order.events
        ]
    return out


def summary(session: Session) -> dict[str, Any]:
    """Counts staff look at first: orders by state and channel, inbox by status."""
    by_state = dict(session.execute(select(Order.state, func.count()).group_by(Order.state)).all())
    by_channel = dict(
        session.execute(select(Order.channel, func.count()).group_by(Order.channel)).all()
    )
    inbox = dict(
        session.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status)).all()
    )
    outbox = dict(
        session.execute(
            select(OutboxMessage.status, func.count())
            .where(OutboxMessage.kind.is_not(None))
            .group_by(OutboxMessage.status)
        ).all()
    )
    return {
        "orders": sum(by_state.values()),
        "by_state": by_state,
        "by_channel": by_channel,
        "inbox": inbox,
        "outbox": outbox,
    }


@router.get("/summary", response_model=SummaryOut)
def get_summary(session: SessionDep) -> dict[str, Any]:
    return summary(session)


@router.get("/orders", response_model=OrderListOut)
def list_orders(
    state: OrderState | None = None,
    channel: str | None = Query(None, max_length=20, pattern=NO_NUL),
    limit: int = Query(50, ge=1, le=500),
    before_id: int | None = Query(None, ge=1, le=MAX_ID),
    *,
    session: SessionDep,
) -> dict[str, Any]:
    query = select(Order).order_by(Order.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Order.state == state.value)
    if channel:
        query = query.where(Order.channel == channel)
    if before_id:
        query = query.where(Order.id < before_id)
    orders = session.scalars(query).all()
    return {"orders": [_order_json(o) for o in orders]}


def load_order(session: Session, order_id: int) -> Order:
    """The order with its lines and timeline, or 404."""
    order = session.scalars(
        select(Order)
        .where(Order.id == order_id)
        .options(selectinload(Order.lines), selectinload(Order.events))
    ).one_or_none()
    if order is None:
        raise HTTPException(404, "no such order")
    return order


class ShipmentLineOut(BaseModel):
    line: str
    quantity: int


class ShipmentOut(BaseModel):
    id: int
    status: str
    location: str
    carrier: str
    tracking_number: str | None
    tracking_status: str | None
    shipped_at: dt.datetime | None
    delivered_at: dt.datetime | None
    lines: list[ShipmentLineOut]


class OrderWithShipmentsOut(OrderDetailOut):
    held_reason: str | None = None
    shipments: list[ShipmentOut]


@router.get("/orders/{order_id}", response_model=OrderWithShipmentsOut)
def get_order(order_id: Id, session: SessionDep) -> dict[str, Any]:
    """The order with its lines, timeline and shipments (lines, location, label, tracking)."""
    out = _order_json(load_order(session, order_id), detail=True)
    shipments = session.scalars(
        select(Shipment)
        .where(Shipment.order_id == order_id)
        .options(selectinload(Shipment.lines))
        .order_by(Shipment.id)
    ).all()
    out["shipments"] = [
        {
            "id": s.id,
            "status": s.status,
            "location": s.location,
            "carrier": s.carrier,
            "tracking_number": s.tracking_number,
            "tracking_status": s.tracking_status,
            "shipped_at": s.shipped_at.isoformat() if s.shipped_at else None,
            "delivered_at": s.delivered_at.isoformat() if s.delivered_at else None,
            "lines": [{"line": ln.line_external_id, "quantity": ln.quantity} for ln in s.lines],
        }
        for s in shipments
    ]
    return out


def _inbox_json(event: InboxEvent, account: str) -> dict[str, Any]:
    return {
        "id": event.id,
        "channel": event.channel,
        "account": account,
        "topic": event.topic,
        "status": event.status,
        "error": event.error,
        "attempts": event.attempts,
        "order_id": event.order_id,
        "received_at": event.received_at.isoformat(),
        "bytes": len(event.body),
    }


@router.get("/inbox", response_model=InboxListOut)
def list_inbox(
    session: SessionDep,
    status: InboxStatus | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    query = (
        select(InboxEvent, ChannelAccount.name)
        .join(ChannelAccount, ChannelAccount.id == InboxEvent.channel_account_id)
        .order_by(InboxEvent.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(InboxEvent.status == status.value)
    return {"events": [_inbox_json(ev, name) for ev, name in session.execute(query).all()]}


@router.post("/inbox/{inbox_id}/retry", response_model=InboxRetryOut)
def retry_inbox(inbox_id: Id, session: SessionDep, staff: Staff) -> dict[str, Any]:
    """Put a failed delivery back in the queue (e.g. after a mapper fix). Safe to repeat."""
    with session.begin():
        changed = rowcount(
            session.execute(
                update(InboxEvent)
                .where(InboxEvent.id == inbox_id, InboxEvent.status == InboxStatus.FAILED)
                .values(status=InboxStatus.RECEIVED, error=None)
            )
        )
        if not changed:
            if session.get(InboxEvent, inbox_id) is None:
                raise HTTPException(404, "no such inbox event")
            raise HTTPException(409, "only failed events can be retried")
        audit(session, staff.actor, "inbox.retry", f"inbox event {inbox_id}")
        publish_after_commit(session, process_event.si(inbox_id))
    return {"id": inbox_id, "status": InboxStatus.RECEIVED}


def _staff_action(session: Session, fn: Any, order_id: int) -> dict[str, Any]:
    from orders.transitions import IllegalTransition

    try:
        with session.begin():
            return fn(session, order_id)  # type: ignore[no-any-return]
    except IllegalTransition as exc:
        raise HTTPException(409, str(exc)) from None
    except PermanentError as exc:
        raise HTTPException(404, str(exc)) from None


class RefundRequest(BaseModel):
    """Lines (line id or SKU → units) or an amount (``"5.00"``), not both."""

    lines: dict[Annotated[str, Field(min_length=1, max_length=100)],
                Annotated[int, Field(ge=1, le=1_000_000)]] | None = None  # fmt: skip
    amount: Annotated[str, Field(pattern=r"^[0-9]{1,12}(\.[0-9]{1,4})?$")] | None = None


class RefundOut(BaseModel):
    refund_id: int
    amount: str
    currency: str
    status: str
    new: bool


@router.post("/orders/{order_id}/refunds", status_code=202, response_model=RefundOut)
def refund_order(
    order_id: Id,
    body: RefundRequest,
    session: SessionDep,
    staff: Staff,
    idempotency_key: Annotated[str | None, Header(max_length=64)] = None,
) -> dict[str, Any]:
    """Refund lines or an amount of an order we captured; made at the payment provider once.
    The same request again (a double click, or the same ``Idempotency-Key``) is the same
    refund; more than is left to refund is refused (409)."""
    from orders.refunds import RefundRefused
    from workflows.pipeline import request_refund

    try:
        with session.begin():
            amount = Decimal(body.amount) if body.amount is not None else None
            refund, new = request_refund(session, order_id, actor=staff.actor, lines=body.lines,
                                         amount=amount, request_key=idempotency_key)  # fmt: skip
            if new:
                audit(session, staff.actor, "order.refund", f"order {order_id}",
                      order_id=order_id, timeline=False, refund_id=refund.id,
                      amount=str(refund.amount))  # fmt: skip
            return {"refund_id": refund.id, "amount": str(refund.amount),
                    "currency": refund.currency, "status": refund.status, "new": new}  # fmt: skip
    except RefundRefused as exc:
        raise HTTPException(409, str(exc)) from None
    except PermanentError as exc:  # no such order
        raise HTTPException(404, str(exc)) from None


@router.post("/orders/{order_id}/retry", response_model=RetryOut)
def retry_order(order_id: Id, session: SessionDep, staff: Staff) -> dict[str, Any]:
    """Resume a needs_attention order from the step that failed. A second click gets 409."""
    from workflows.pipeline import retry_order as resume

    def act(session: Session, oid: int) -> dict[str, Any]:
        resumed = resume(session, oid, actor=staff.actor)
        # the timeline's retry row carries the name already
        audit(session, staff.actor, "order.retry", f"order {oid}", order_id=oid, timeline=False,
              resumed_from=resumed.value)
        if resumed == OrderState.CANCELLED:  # a cancelled order: its refund is retried
            return {"id": oid, "resumed_from": resumed, "step": "refund_payment"}
        return {"id": oid, "resumed_from": resumed}

    return _staff_action(session, act, order_id)


@router.post("/orders/{order_id}/push", response_model=ActionOut)
def push_order(order_id: Id, session: SessionDep, staff: Staff) -> dict[str, Any]:
    """Run the order's pipeline again. Always safe: every step skips what is already done,
    so a double click (or fifty) never makes a second reservation, charge, invoice or label."""
    from workflows.pipeline import pipeline

    with session.begin():
        if session.get(Order, order_id) is None:
            raise HTTPException(404, "no such order")
        audit(session, staff.actor, "push", f"order {order_id}", order_id=order_id)
        publish_after_commit(session, pipeline(order_id))
    return {"id": order_id, "status": "pushed"}


class ShipBody(BaseModel):
    """The shipments that left, or the lines (line id or SKU → units) that leave now; neither:
    every labelled shipment."""

    # unknown fields are refused (a typo of "lines" must not ship everything), and the
    # schema says so (``additionalProperties: false``); so does "not both" (``not``: both
    # given and neither null), which the validator below enforces
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["shipments", "lines"],
                "properties": {"shipments": {"type": "array"}, "lines": {"type": "object"}},
            }
        },
    )

    #: the shipments that left (none given: every labelled one)
    shipments: list[int] | None = None
    lines: dict[Annotated[str, Field(min_length=1, max_length=100)],
                Annotated[int, Field(ge=1, le=1_000_000)]] | None = None  # fmt: skip

    @model_validator(mode="after")
    def _one_or_the_other(self) -> ShipBody:
        if self.shipments is not None and self.lines is not None:
            raise ValueError("give shipments or lines, not both")
        return self


class ShipOut(ActionOut):
    #: with lines: the shipments that carry them, and whether this request is new (a repeat
    #: of the same request, or of the same Idempotency-Key, changes nothing)
    shipments: list[int] | None = None
    new: bool | None = None


@router.post("/orders/{order_id}/ship", response_model=ShipOut)
def ship_order(
    order_id: Id,
    session: SessionDep,
    staff: Staff,
    body: ShipBody | None = None,
    idempotency_key: Annotated[str | None, Header(max_length=64)] = None,
) -> dict[str, Any]:
    """Mark a ready_to_ship (or partially_shipped) order's labelled shipments, or only the
    ones given, as handed to the carrier (their tracking goes to the marketplace through the
    outbox), or, for an order the marketplace fulfils (Amazon FBA), as shipped by it. With
    ``lines``: those units leave now and the rest later (their shipments are split, each
    part with a label of its own, and shipped once labelled); the same lines again (a double
    click, or the same ``Idempotency-Key``) are the same request; more units than wait to ship
    are refused (409)."""
    from workflows.pipeline import ship, ship_lines

    def act_lines(session: Session, oid: int) -> dict[str, Any]:
        assert body is not None and body.lines is not None
        if session.get(Order, oid) is None:
            raise HTTPException(404, "no such order")
        try:
            asked = ship_lines(session, oid, body.lines, actor=staff.actor,
                               request_key=idempotency_key)  # fmt: skip
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        if asked.new:  # the request's own timeline row carries the name
            audit(session, staff.actor, "ship", f"order {oid}", order_id=oid, timeline=False,
                  lines=body.lines, shipments=asked.shipment_ids)  # fmt: skip
        return {"id": oid, "status": "shipping", "shipments": asked.shipment_ids,
                "new": asked.new}  # fmt: skip

    def act(session: Session, oid: int) -> dict[str, Any]:
        order = session.get(Order, oid)
        if order is None:
            raise HTTPException(404, "no such order")
        if order.state not in (OrderState.READY_TO_SHIP, OrderState.PARTIALLY_SHIPPED):
            raise HTTPException(409, f"order is {order.state}, not ready_to_ship")
        if order.held_reason is not None and not order.fulfilled_by_marketplace:
            raise HTTPException(409, f"order is held ({order.held_reason}): release it first")
        chosen = body.shipments if body is not None else None
        if chosen is not None:
            known = set(
                session.scalars(
                    select(Shipment.id).where(
                        Shipment.order_id == oid, Shipment.status == "labelled"
                    )
                )
            )
            if not chosen or not set(chosen) <= known:
                raise HTTPException(409, "shipments must be labelled shipments of this order")
        audit(session, staff.actor, "ship", f"order {oid}", order_id=oid)
        publish_after_commit(session, ship.si(oid, chosen))
        return {"id": oid, "status": "shipping"}

    if body is not None and body.lines is not None:
        return _staff_action(session, act_lines, order_id)
    return _staff_action(session, act, order_id)


class CancelBody(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.post("/orders/{order_id}/cancel")
def cancel_order(
    order_id: Id, body: CancelBody, session: SessionDep, staff: Staff
) -> dict[str, Any]:
    """Cancel before it ships, with a reason: stock back, label voided, money refunded, credit
    note, the cancellation pushed to the marketplace. A second click gets 409; a marketplace
    where the seller cannot cancel (Amazon) gets 422 with the reason."""
    from orders.staff import CannotCancel
    from workflows.pipeline import cancel_order as cancel

    def act(session: Session, oid: int) -> dict[str, Any]:
        try:
            cancel(session, oid, reason=body.reason, actor=staff.actor)
        except LookupError:
            raise HTTPException(404, "no such order") from None
        except (CannotCancel, ValueError) as exc:
            raise HTTPException(409, str(exc)) from None
        return {"id": oid, "status": OrderState.CANCELLED}

    return _staff_action(session, act, order_id)


class HoldBody(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.post("/orders/{order_id}/hold")
def hold_order(order_id: Id, body: HoldBody, session: SessionDep, staff: Staff) -> dict[str, Any]:
    """Hold an order with a reason: it does not ship until released. A second click gets 409."""
    from orders.staff import hold

    def act(session: Session, oid: int) -> dict[str, Any]:
        if session.get(Order, oid) is None:
            raise HTTPException(404, "no such order")
        try:
            hold(session, oid, reason=body.reason, actor=staff.actor)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"id": oid, "held": True}

    return _staff_action(session, act, order_id)


@router.post("/orders/{order_id}/release")
def release_order(order_id: Id, session: SessionDep, staff: Staff) -> dict[str, Any]:
    """Release a held order. A second click gets 409."""
    from orders.staff import release

    def act(session: Session, oid: int) -> dict[str, Any]:
        if session.get(Order, oid) is None:
            raise HTTPException(404, "no such order")
        release(session, oid, actor=staff.actor)
        return {"id": oid, "held": False}

    return _staff_action(session, act, order_id)


class MarkShippedBody(BaseModel):
    tracking_number: str = Field(min_length=1, max_length=100)
    carrier: str = Field(min_length=1, max_length=50)


@router.post("/orders/{order_id}/mark-shipped")
def mark_shipped(
    order_id: Id, body: MarkShippedBody, session: SessionDep, staff: Staff
) -> dict[str, Any]:
    """The parcel left with a label bought elsewhere: shipped by hand with its tracking number
    (pushed to the marketplace); our unused labels are voided. A second click gets 409."""
    from workflows.pipeline import mark_shipped as mark

    def act(session: Session, oid: int) -> dict[str, Any]:
        if session.get(Order, oid) is None:
            raise HTTPException(404, "no such order")
        try:
            shipment_id = mark(session, oid, tracking_number=body.tracking_number,
                               carrier=body.carrier, actor=staff.actor)  # fmt: skip
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"id": oid, "status": OrderState.SHIPPED, "shipment": shipment_id}

    return _staff_action(session, act, order_id)


@router.post("/shipments/{shipment_id}/void")
def void_label(
    shipment_id: Id, session: SessionDep, staff: Staff, rebuy: bool = False
) -> dict[str, Any]:
    """Void the label of a shipment that has not left (the carrier refunds it); ``rebuy``: a
    new label for the same lines. A second click gets 409."""
    from workflows.pipeline import void_shipment_label

    def act(session: Session, sid: int) -> dict[str, Any]:
        try:
            new = void_shipment_label(session, sid, actor=staff.actor, rebuy=rebuy)
        except LookupError:
            raise HTTPException(404, "no such shipment") from None
        return {"id": sid, "status": "voided", "new_shipment": new}

    return _staff_action(session, act, shipment_id)


@router.get("/shipments/{shipment_id}/label.pdf", response_class=Response, responses=PDF)
def shipment_label_pdf(shipment_id: Id, session: SessionDep) -> Response:
    """Reprint: the stored label of one shipment (never a second purchase)."""
    label = session.scalar(
        select(Label).where(Label.shipment_id == shipment_id, Label.voided_at.is_(None))
    )
    if label is None:
        raise HTTPException(404, "no label in use for this shipment")
    return Response(
        label.pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{label.tracking_number}.pdf"'},
    )


def outbox_json(message: OutboxMessage, order: Order | None) -> dict[str, Any]:
    return {
        "id": message.id,
        "order_id": message.order_id,
        "channel": order.channel if order else None,
        "external_number": order.external_number if order else None,
        "kind": message.kind,
        "status": message.status,
        "idempotency_key": message.idempotency_key,
        "last_error": message.last_error,
        "created_at": message.created_at.isoformat(),
        "delivered_at": message.delivered_at.isoformat() if message.delivered_at else None,
    }


def undelivered(session: Session, limit: int = 50) -> list[tuple[OutboxMessage, Order]]:
    """Effects on a marketplace not delivered (failed first, then the oldest pending)."""
    return [
        (message, order)
        for message, order in session.execute(
            select(OutboxMessage, Order)
            .join(Order, Order.id == OutboxMessage.order_id)
            .where(OutboxMessage.kind.is_not(None), OutboxMessage.status != "delivered")
            .order_by((OutboxMessage.status == "failed").desc(), OutboxMessage.id)
            .limit(limit)
        ).all()
    ]


@router.get("/outbox")
def list_outbox(
    session: SessionDep,
    status: str | None = Query(None, pattern="^(pending|delivered|failed|undelivered)$"),
    order_id: int | None = Query(None, ge=1, le=MAX_ID),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    """Effects on the marketplaces (fulfilments, cancellations), newest first, each with its
    attempts; ``status=undelivered`` = pending or failed."""
    query = (
        select(OutboxMessage, Order)
        .join(Order, Order.id == OutboxMessage.order_id)
        .where(OutboxMessage.kind.is_not(None))
        .order_by(OutboxMessage.id.desc())
        .limit(limit)
    )
    if status == "undelivered":
        query = query.where(OutboxMessage.status != "delivered")
    elif status is not None:
        query = query.where(OutboxMessage.status == status)
    if order_id is not None:
        query = query.where(OutboxMessage.order_id == order_id)
    rows = session.execute(query).all()
    attempts: dict[int, list[dict[str, Any]]] = {}
    for a in session.scalars(
        select(OutboxAttempt)
        .where(OutboxAttempt.message_id.in_([m.id for m, _ in rows]))
        .order_by(OutboxAttempt.id)
    ):
        attempts.setdefault(a.message_id, []).append(
            {"status": a.status, "response_code": a.response_code, "error": a.error,
             "duration_ms": a.duration_ms, "at": a.started_at.isoformat()}
        )  # fmt: skip
    return {
        "messages": [
            {**outbox_json(m, o), "attempts": attempts.get(m.id, [])} for m, o in rows
        ]
    }


@router.post("/outbox/{message_id}/retry")
def retry_outbox(message_id: Id, session: SessionDep, staff: Staff) -> dict[str, Any]:
    """Deliver a failed (or stuck pending) message again, under its same idempotency key. A
    delivered message gets 409."""
    from workflows.pipeline import retry_message

    with session.begin():
        try:
            was = retry_message(session, message_id, actor=staff.actor)
        except LookupError:
            raise HTTPException(404, "no such outbox message") from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
    return {"id": message_id, "was": was, "status": "pending"}


@router.get("/stock/{sku:path}")  # a SKU may hold a slash
def get_stock(
    sku: Annotated[str, Path(min_length=1, max_length=100, pattern=NO_NUL)], session: SessionDep
) -> dict[str, Any]:
    """On hand, reserved, available; per channel listing what it should show, what was last
    pushed and when, pending or failed, and the latest drift with both numbers."""
    from orders.stock_view import stock_view

    view = stock_view(session, sku)
    if view is None:
        raise HTTPException(404, "no stock and no listing for this SKU")
    return view.as_dict()


COUNTS_MAX = 1000


class CountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    on_hand: int = Field(ge=0, le=2**31 - 1)
    location: str = Field("main", min_length=1, max_length=50, pattern=NO_NUL)


class CountsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    counts: list[CountIn] = Field(min_length=1, max_length=COUNTS_MAX)


class CountsOut(BaseModel):
    set: int
    available: dict[str, int]  # over every location, by SKU
    released: list[int]


@router.put("/stock", response_model=CountsOut)
def set_stock_counts(body: CountsIn, session: SessionDep, staff: Staff) -> dict[str, Any]:
    """Set up to 1,000 counts at once, all or none (a stock file, a warehouse system's sync):
    what ``PUT /stock/{sku}`` does for each, in one transaction. An unknown location is 404; a
    count below what open orders hold there, or a SKU counted twice at one location, 409 naming
    the SKU; nothing is set then."""
    from orders.stock import UnknownLocation, set_counts
    from workflows.pipeline import release_waiting

    with session.begin():
        try:
            available = set_counts(session, [(c.sku, c.location, c.on_hand) for c in body.counts],
                                   actor=staff.actor)  # fmt: skip
        except UnknownLocation as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        released = sorted({o for sku in available for o in release_waiting(session, sku)})
        for c in body.counts:
            audit(session, staff.actor, "stock.set", c.sku, on_hand=c.on_hand,
                  location=c.location, available=available[c.sku])  # fmt: skip
    return {"set": len(body.counts), "available": available, "released": released}


@router.put("/stock/{sku:path}", response_model=StockOut)  # a SKU may hold a slash
def set_stock(
    sku: Annotated[str, Path(min_length=1, max_length=100, pattern=NO_NUL)],
    session: SessionDep,
    staff: Staff,
    on_hand: int = Query(..., ge=0, le=2**31 - 1),
    location: str = Query("main", min_length=1, max_length=50, pattern=NO_NUL),
) -> dict[str, Any]:
    """Set the counted quantity at one of our locations (``main`` by default); on-hold orders
    waiting for the SKU are pushed on, and the SKU's listings are pushed the new quantity. An
    unknown location is 404, a count below what open orders hold there 409."""
    from orders.stock import UnknownLocation, set_on_hand
    from workflows.pipeline import release_waiting

    with session.begin():
        try:
            available = set_on_hand(session, sku, on_hand, location=location, actor=staff.actor)
        except UnknownLocation as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        waiting = release_waiting(session, sku)
        audit(session, staff.actor, "stock.set", sku, on_hand=on_hand, location=location,
              available=available, released=waiting)  # fmt: skip
    return {"sku": sku, "location": location, "on_hand": on_hand, "available": available,
            "released": waiting}  # fmt: skip


@router.get("/orders/{order_id}/invoice.pdf", response_class=Response, responses=PDF)
def invoice_pdf(
    order_id: Id, session: SessionDep, kind: Literal["invoice", "credit_note"] = "invoice"
) -> Response:
    # the newest of that kind (an edit's new invoice, the latest credit note)
    invoice = session.scalar(
        select(Invoice)
        .where(Invoice.order_id == order_id, Invoice.kind == kind)
        .order_by(Invoice.id.desc())
        .limit(1)
    )
    if invoice is None or invoice.pdf is None:
        raise HTTPException(404, f"no {kind} for this order")
    return Response(
        invoice.pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{invoice.full_number}.pdf"'},
    )


@router.get("/orders/{order_id}/label.pdf", response_class=Response, responses=PDF)
def label_pdf(order_id: Id, session: SessionDep) -> Response:
    """The stored label: a reprint never buys a second one."""
    label = session.scalar(
        select(Label)
        .join(Shipment)
        .where(Shipment.order_id == order_id, Label.voided_at.is_(None))
        .order_by(Label.id.desc())
    )
    if label is None:
        raise HTTPException(404, "no label for this order")
    return Response(
        label.pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{label.tracking_number}.pdf"'},
    )
