"""The order pipeline: one canvas, one task per step, each step exactly once in effect.

    pipeline(order_id) = chain(
        reserve_stock.si(order_id),        # or on_hold when stock is short (the chain stops)
        capture_payment.si(order_id),      # recorded without a call when the marketplace collected
        chord([issue_invoice.si(order_id), buy_label.si(order_id)],
              mark_ready_to_ship.si(order_id)),
    )
    ship(order_id): tracking back to the marketplace → shipped
    refund_payment(order_id): a cancelled order's captured payment goes back (once)

Every task takes the order id, holds the Redis lock of (order, step), reloads the order and does
its step only if it is not done yet; outside calls carry idempotency keys derived from our ids
(``capture:{order_id}``, ``label:{order_id}``) that are stored before the call. When a step
fails for good (a permanent error, or retries exhausted) the order goes to ``needs_attention``
with the step, the error and the attempts; ``retry_order`` resumes it from that step.

Orders the marketplace fulfils itself (``orders.fulfilled_by_marketplace``: Amazon FBA, shipped
from Amazon's warehouse) run the same canvas, but nothing of ours leaves the shelf: reserve_stock
holds no stock (it moves to reserved with ``fulfilled_by`` in the event), capture_payment and
issue_invoice are as for any order whose marketplace collects the money, buy_label buys nothing
(a ``label_not_needed`` event), and mark_ready_to_ship needs the invoice only. For them
ready_to_ship means "paid and invoiced, the marketplace ships it", and ready_to_ship → shipped is
a record, not an action: ``ship`` (staff's Ship, or intake learning from the marketplace that
it shipped: fulfillment status ``fulfilled``) makes the transition without pushing a fulfilment
to the marketplace and without consuming stock; there is no shipment or label row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from celery import chain, chord
from celery.canvas import Signature
from sqlalchemy import bindparam, exists, func, insert, select
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import table, utcnow
from db.models import (
    ChannelAccount,
    Invoice,
    Label,
    Order,
    OrderEvent,
    OrderLine,
    Payment,
    Refund,
    Shipment,
)
from db.session import core
from domain.canonical import Address
from domain.errors import PermanentError
from domain.states import OrderState
from integrations.base import ConnectorSeams
from orders import idempotency, stock
from orders.intake import record_event
from orders.transitions import IllegalTransition, advance, load_for_update, transition
from workflows.base import OrdersyncTask, describe
from workflows.celery_app import app
from workflows.locks import LockBusy, order_lock
from workflows.providers import carrier_client, connector_for, payments_client, shared_limiter
from workflows.publish import publish_after_commit

__all__ = [
    "buy_label",
    "capture_payment",
    "issue_invoice",
    "mark_ready_to_ship",
    "pipeline",
    "refund_payment",
    "reserve_stock",
    "retry_order",
    "ship",
]

log = structlog.get_logger(__name__)
S = OrderState

#: the state a failed step starts from: staff retry moves the order back there
RESUME_STATE = {
    "reserve_stock": S.NEW,
    "capture_payment": S.RESERVED,
    "issue_invoice": S.PAID,
    "buy_label": S.PAID,
    "mark_ready_to_ship": S.PAID,
    "ship": S.READY_TO_SHIP,
}
#: financial statuses of an order whose marketplace collects the money but has not yet
AWAITING_PAYMENT = {"pending", "unpaid", "authorized_pending", "payment_pending"}
_DONE_OR_GONE = {S.CANCELLED, S.NEEDS_ATTENTION, S.DELIVERED}
#: timeline kind of buy_label for an order the marketplace ships itself
LABEL_NOT_NEEDED = "label_not_needed"
# a contended step lock is retried this often before the task gives up (the holder finishes
# the step anyway; the order itself never fails because of contention)
LOCK_RETRIES = 60


class StepTask(OrdersyncTask):
    abstract = True
    step: str = ""

    def owner(self) -> str:
        return str(self.request.id or uuid.uuid4())

    @contextmanager
    def outside_call(self, key: str) -> Iterator[None]:
        """Around a call to the outside world under ``key``: a failure releases the key (and
        retires it when the provider refused the request) before the error goes on."""
        try:
            yield
        except Exception as exc:
            with self.transaction() as session:
                idempotency.fail(session, key, describe(exc),
                                 rejected=_refused(exc))  # fmt: skip
            raise

    def claim_key(self, session: Session, base: str, params: dict[str, Any], point: str) -> str:
        """Store (or take back) the current idempotency key of ``base`` before the outside call,
        at ``point``; returns the key (``base``, or ``base:N`` after rejected attempts)."""
        timeout = dt.timedelta(seconds=get_settings().idempotency_lock_timeout_s)
        attempt = idempotency.claim(
            session, base, params, owner=self.owner(), point=point, lock_timeout=timeout
        )
        return attempt.key

    def stop_chain(self) -> None:
        """Do not run the rest of the pipeline after this task (on hold, cancelled, …)."""
        self.request.chain = None
        self.request.callbacks = None

    def _handle_error(self, exc: Exception, args: Any, kwargs: Any) -> Any:
        if isinstance(exc, LockBusy) and self.request.retries < LOCK_RETRIES:
            raise self.retry(exc=exc, countdown=0.5 + self.request.retries * 0.5, max_retries=None)
        return super()._handle_error(exc, args, kwargs)

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        order_id = args[0] if args else kwargs["order_id"]
        message = describe(exc)
        with self.transaction() as session:
            order = load_for_update(session, order_id)
            if OrderState(order.state) in _DONE_OR_GONE:
                return
            transition(
                session,
                order,
                S.NEEDS_ATTENTION,
                actor=f"task:{self.step}",
                step=self.step,
                error=message,
                attempts=attempts,
            )
            order.failed_step = self.step
            order.last_error = message
            order.attempts = attempts


def _task(step: str, queue_prefix: str, *, chord_header: bool = False) -> Any:
    # Only the chord's header tasks store a result (the chord counts them); for the others a
    # result is a Redis write nobody reads, and a publisher that keeps it would subscribe to it.
    return app.task(
        base=StepTask,
        bind=True,
        name=f"ordersync.{queue_prefix}.{step}",
        step=step,
        ignore_result=not chord_header,
    )


# --- reserve ------------------------------------------------------------------------------


@_task("reserve_stock", "orders")
def reserve_stock(self: StepTask, order_id: int) -> str:
    with order_lock(order_id, self.step, self.owner()), self.transaction() as session:
        order = load_for_update(session, order_id)
        state = OrderState(order.state)
        if state not in (S.NEW, S.ON_HOLD):
            if state in _DONE_OR_GONE:
                self.stop_chain()
            return f"skip: {state}"
        if order.fulfilled_by_marketplace:  # shipped from the marketplace's stock, not ours
            transition(session, order, S.RESERVED, actor="task:reserve_stock",
                       reserved={}, fulfilled_by=order.channel)  # fmt: skip
            return "reserved: fulfilled by the marketplace"
        result = stock.reserve(session, order_id)
        if result.ok:
            transition(session, order, S.RESERVED, actor="task:reserve_stock",
                       reserved=result.reserved)  # fmt: skip
            return "reserved"
        if state == S.NEW:
            transition(session, order, S.ON_HOLD, actor="task:reserve_stock", short=result.short)
        self.stop_chain()  # stock arriving (`ordersync stock set`) resumes it
        return "on_hold"


# --- capture ------------------------------------------------------------------------------


# --- prebuilt statements (see db.session.core) -------------------------------------------------

_orders, _lines = table(Order), table(OrderLine)
_payments, _shipments, _labels = table(Payment), table(Shipment), table(Label)
_invoices, _events = table(Invoice), table(OrderEvent)
_HAS_PAYMENT = select(_payments.c.id).where(_payments.c.order_id == bindparam("b_order"))
_RECORD_PAYMENT = insert(_payments)
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


def _refused(exc: Exception) -> bool:
    """The provider answered 4xx: it refused the request and applied nothing (an unparseable
    2xx or a transport failure might have been applied, so they keep their key)."""
    status = getattr(exc, "status", None)
    return isinstance(exc, PermanentError) and status is not None and 400 <= status < 500


def _has_payment(session: Session, order_id: int) -> bool:
    return core(session).execute(_HAS_PAYMENT, {"b_order": order_id}).first() is not None


@_task("capture_payment", "orders")
def capture_payment(self: StepTask, order_id: int) -> str:
    with order_lock(order_id, self.step, self.owner()):
        with self.transaction() as session:
            order = load_for_update(session, order_id)
            state = OrderState(order.state)
            if state != S.RESERVED:
                if state in _DONE_OR_GONE or state in (S.NEW, S.ON_HOLD):
                    self.stop_chain()
                return f"skip: {state}"
            if _has_payment(session, order_id):
                transition(session, order, S.PAID, actor="task:capture_payment")
                return "already captured"
            amount, currency = order.total, order.currency
            if order.payment_collected_by_marketplace and (
                (order.financial_status or "").lower() in AWAITING_PAYMENT
            ):
                # the marketplace has not taken the money yet (Amazon "Pending"): wait for the
                # update that says it has; intake pushes the order on then
                self.stop_chain()
                return "awaiting the marketplace's payment"
            if order.payment_collected_by_marketplace:
                key = idempotency.current_key(session, f"capture:{order_id}")
                session.add(
                    Payment(
                        order_id=order_id,
                        provider=order.channel,
                        amount=amount,
                        currency=currency,
                        status="collected",
                        idempotency_key=key,
                        collected_by_marketplace=True,
                        captured_at=utcnow(),
                    )
                )
                transition(session, order, S.PAID, actor="task:capture_payment",
                           collected_by=order.channel)  # fmt: skip
                return "collected by marketplace"
            params = {"order_ref": str(order_id), "amount": str(amount), "currency": currency}
            # a finished key would mean a recorded payment (same transaction): returned above
            key = self.claim_key(session, f"capture:{order_id}", params, "capture_sent")
        # committed: the key exists before the call, so a crash here is resumed, not repeated
        with self.outside_call(key):
            capture = payments_client().capture(
                order_ref=str(order_id), amount=amount, currency=currency, idempotency_key=key
            )
        with self.transaction() as session:
            order = load_for_update(session, order_id)
            # a payment is recorded together with the move to paid (one per order, by a unique
            # constraint), so while the order is still reserved there is none
            if OrderState(order.state) != S.RESERVED and _has_payment(session, order_id):
                return "already recorded"
            now = utcnow()
            core(session).execute(
                _RECORD_PAYMENT,
                {"order_id": order_id, "provider": "payments", "amount": capture.amount,
                 "currency": capture.currency, "status": capture.status,
                 "external_id": capture.id, "idempotency_key": key,
                 "collected_by_marketplace": False, "captured_at": now, "created_at": now},
            )  # fmt: skip
            idempotency.finish(session, key, {"id": capture.id, "status": capture.status})
            if OrderState(order.state) != S.RESERVED:
                # cancelled while the capture was in flight: the money was taken, so it is
                # recorded, and staff see that it needs refunding
                record_event(session, order_id, actor="task:capture_payment",
                             kind="captured_after_cancel", payment=capture.id)  # fmt: skip
                publish_after_commit(session, refund_payment.si(order_id))  # give it back
                return f"captured, but order is {order.state}"
            transition(session, order, S.PAID, actor="task:capture_payment",
                       payment=capture.id, replayed=capture.replayed)  # fmt: skip
        return "captured"


# --- documents ----------------------------------------------------------------------------


@_task("issue_invoice", "documents", chord_header=True)
def issue_invoice(self: StepTask, order_id: int) -> str:
    from orders.invoices import invoice_for

    with order_lock(order_id, self.step, self.owner()), self.transaction() as session:
        order = load_for_update(session, order_id)
        if order.state != S.PAID:
            return f"skip: {order.state}"
        return invoice_for(session, order, seller=_seller()).full_number


def _seller() -> Any:
    from orders.invoices import DEMO_SELLER

    return dataclasses.replace(DEMO_SELLER, name=get_settings().seller_name)


def _ship_from() -> Address:
    settings = get_settings()
    return Address(
        name=settings.seller_name,
        line1=settings.ship_from_line1,
        city=settings.ship_from_city,
        region=settings.ship_from_region,
        postal_code=settings.ship_from_postal_code,
        country_code=settings.ship_from_country,
    )


def _parcel_grams(units: int) -> int:
    # no product weights in the first cut: 400 g per unit, at least one unit's worth
    return max(1, units) * 400


@_task("buy_label", "outbound", chord_header=True)
def buy_label(self: StepTask, order_id: int) -> str:
    from integrations.carriers.payloads import Parcel

    with order_lock(order_id, self.step, self.owner()):
        with self.transaction() as session:
            found = core(session).execute(_LABEL_INPUT, {"b_order": order_id}).one_or_none()
            if found is None:
                raise PermanentError(f"order {order_id} does not exist")
            state, address, existing, units, by_marketplace = found
            if OrderState(state) != S.PAID:
                return f"skip: {state}"
            if existing:
                return str(existing)
            if by_marketplace:  # the marketplace ships it with its own label
                db = core(session)
                if db.execute(_LABEL_NOT_NEEDED_RECORDED, {"b_order": order_id}).first() is None:
                    record_event(session, order_id, actor="task:buy_label", kind=LABEL_NOT_NEEDED,
                                 reason="fulfilled by the marketplace")  # fmt: skip
                return LABEL_NOT_NEEDED
            ship_to = Address(**(address or {}))
            grams = _parcel_grams(int(units))
            params = {"ship_to": ship_to.model_dump(), "grams": grams}
            # a finished key would mean a recorded label (same transaction): returned above
            key = self.claim_key(session, f"label:{order_id}", params, "label_requested")
        with self.outside_call(key):
            label = carrier_client().buy_label(
                shipment_ref=f"order-{order_id}",
                ship_to=ship_to,
                ship_from=_ship_from(),
                parcel=Parcel(weight_grams=grams, length_cm=30, width_cm=20, height_cm=10),
                idempotency_key=key,
            )
        with self.transaction() as session:
            db, now = core(session), utcnow()
            shipment = db.execute(_SHIPMENT, {"b_order": order_id}).one_or_none()
            if shipment is None:
                shipment_id = db.execute(
                    _NEW_SHIPMENT,
                    {"order_id": order_id, "carrier": label.carrier, "status": "labelled",
                     "tracking_number": label.tracking_number, "created_at": now},
                ).scalar_one()  # fmt: skip
            elif shipment[1] is not None:
                return "already recorded"
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
            record_event(session, order_id, actor="task:buy_label", kind="label",
                         tracking_number=label.tracking_number, carrier=label.carrier)  # fmt: skip
        return label.tracking_number


@_task("mark_ready_to_ship", "orders")
def mark_ready_to_ship(self: StepTask, order_id: int) -> str:
    with order_lock(order_id, self.step, self.owner()), self.transaction() as session:
        order = load_for_update(session, order_id)
        state = OrderState(order.state)
        if state not in (S.PAID, S.DOCUMENTED):
            return f"skip: {state}"
        path = [S.READY_TO_SHIP]
        if state == S.PAID:
            has_invoice, has_label = core(session).execute(_DOCUMENTED, {"b_order": order_id}).one()
            # the marketplace ships an order it fulfils: no label of ours to wait for
            if not (has_invoice and (has_label or order.fulfilled_by_marketplace)):
                raise IllegalTransition(f"order {order_id}: invoice or label missing")
            path = [S.DOCUMENTED, S.READY_TO_SHIP]
        advance(session, order, path, actor="task:mark_ready_to_ship")
        if marketplace_shipped(order):  # it left the marketplace's warehouse meanwhile
            publish_after_commit(session, ship.si(order_id))
        return "ready_to_ship"


# --- ship, cancel ---------------------------------------------------------------------------


def marketplace_shipped(order: Order) -> bool:
    """An order the marketplace fulfils, which the marketplace says it has shipped."""
    return bool(order.fulfilled_by_marketplace) and order.fulfillment_status == "fulfilled"


@_task("ship", "outbound")
def ship(self: StepTask, order_id: int) -> str:
    """The parcel left: tracking goes back to the marketplace, held stock leaves the shelf.

    For an order the marketplace fulfils, it only records that the marketplace shipped it."""
    with order_lock(order_id, self.step, self.owner()):
        with self.transaction() as session:
            order = session.get(Order, order_id)
            assert order is not None
            if OrderState(order.state) != S.READY_TO_SHIP:
                return f"skip: {order.state}"
            if order.fulfilled_by_marketplace:  # nothing to push, no stock of ours to consume
                session.refresh(order, with_for_update=True)  # locked, and current
                if OrderState(order.state) != S.READY_TO_SHIP:
                    return f"skip: {order.state}"
                transition(session, order, S.SHIPPED, actor="task:ship",
                           fulfilled_by=order.channel)  # fmt: skip
                return "shipped by the marketplace"
            shipment = session.scalar(select(Shipment).where(Shipment.order_id == order_id))
            account = session.get(ChannelAccount, order.channel_account_id)
            assert shipment is not None and account is not None
            external_id, tracking, carrier = (
                order.external_id, shipment.tracking_number or "", shipment.carrier
            )  # fmt: skip
        if account.api_base_url or account.credentials:
            # the buckets every worker shares, as polling uses them
            connector: Any = connector_for(account, ConnectorSeams(limiter=shared_limiter()))
            try:
                connector.push_fulfillment(
                    external_id,
                    tracking_number=tracking,
                    carrier=carrier,
                    idempotency_key=f"fulfill:{order_id}",
                )
            finally:
                connector.close()
        with self.transaction() as session:
            order = load_for_update(session, order_id)
            if OrderState(order.state) != S.READY_TO_SHIP:
                return f"skip: {order.state}"
            stock.consume(session, order_id)
            shipment = session.scalar(select(Shipment).where(Shipment.order_id == order_id))
            assert shipment is not None
            shipment.status, shipment.shipped_at = "shipped", utcnow()
            transition(session, order, S.SHIPPED, actor="task:ship", tracking_number=tracking)
        return "shipped"


@_task("credit_note", "documents")
def credit_note(self: StepTask, order_id: int) -> str:
    """A cancelled order that was invoiced gets one credit note (invoices are never deleted)."""
    from orders.invoices import issue_credit_note

    with self.transaction() as session:
        note = issue_credit_note(session, order_id, seller=_seller())
        return note.full_number if note else "no invoice"


def on_cancelled(session: Session, order_id: int) -> None:
    """Called in the transaction that cancelled the order: stock back on the shelf, a credit
    note for an invoice, the money back for a payment we captured."""
    released = stock.release(session, order_id)
    if released:
        record_event(session, order_id, actor="system", kind="stock_released", lines=released)
    publish_after_commit(session, credit_note.si(order_id))
    publish_after_commit(session, refund_payment.si(order_id))


def _refundable(session: Session, order_id: int) -> Payment | None:
    """The order's payment if we captured it and it is not refunded yet (the marketplace
    refunds what it collected itself)."""
    payment = session.scalar(select(Payment).where(Payment.order_id == order_id))
    if payment is None or payment.collected_by_marketplace or not payment.external_id:
        return None
    if session.scalar(select(Refund.id).where(Refund.payment_id == payment.id)) is not None:
        return None
    return payment


class RefundTask(StepTask):
    abstract = True

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        # the order stays cancelled; the failure goes on its timeline for staff, who retry it
        # with `ordersync orders retry` once the cause is fixed
        order_id = args[0] if args else kwargs["order_id"]
        with self.transaction() as session:
            error = describe(exc)
            record_event(session, order_id, actor="task:refund_payment", kind="refund_failed",
                         error=error, attempts=attempts)  # fmt: skip


@app.task(base=RefundTask, bind=True, name="ordersync.orders.refund_payment", step="refund_payment",
          ignore_result=True)  # fmt: skip
def refund_payment(self: RefundTask, order_id: int) -> str:
    """A cancelled order's captured payment is refunded in full, once (key ``refund:{id}``)."""
    with order_lock(order_id, self.step, self.owner()):
        with self.transaction() as session:
            order = load_for_update(session, order_id)
            if OrderState(order.state) != S.CANCELLED:
                return f"skip: {order.state}"
            payment = _refundable(session, order_id)
            if payment is None:
                return "nothing to refund"
            intent, amount, currency = str(payment.external_id), payment.amount, payment.currency
            payment_id = payment.id
            params = {"payment_intent": intent, "amount": str(amount), "currency": currency}
            key = self.claim_key(session, f"refund:{order_id}", params, "refund_sent")
        with self.outside_call(key):
            refund = payments_client().refund(
                payment_intent=intent, amount=amount, currency=currency, idempotency_key=key,
                order_ref=str(order_id), reason="requested_by_customer",
            )  # fmt: skip
        with self.transaction() as session:
            load_for_update(session, order_id)  # one refund writer per order at a time
            if _refundable(session, order_id) is None:
                return "already recorded"
            session.add(
                Refund(
                    payment_id=payment_id,
                    order_id=order_id,
                    provider="payments",
                    external_id=refund.id,
                    amount=refund.amount,
                    currency=refund.currency,
                    status=refund.status,
                    reason="requested_by_customer",
                    idempotency_key=key,
                )
            )
            idempotency.finish(session, key, {"id": refund.id, "status": refund.status})
            record_event(session, order_id, actor="task:refund_payment", kind="refunded",
                         refund=refund.id, amount=str(refund.amount), currency=refund.currency,
                         replayed=refund.replayed)  # fmt: skip
        return "refunded"


# --- canvas and staff actions ---------------------------------------------------------------


def pipeline(order_id: int) -> Signature:
    return chain(
        reserve_stock.si(order_id),
        capture_payment.si(order_id),
        chord(
            [issue_invoice.si(order_id), buy_label.si(order_id)], mark_ready_to_ship.si(order_id)
        ),
    )


def retry_order(session: Session, order_id: int, *, actor: str) -> OrderState:
    """Staff retry: resume a ``needs_attention`` order from the step that failed, or, for a
    cancelled order whose captured payment is not refunded yet, the refund."""
    order = load_for_update(session, order_id)
    if OrderState(order.state) == S.CANCELLED and _refundable(session, order_id) is not None:
        record_event(session, order_id, actor=actor, kind="retry", step="refund_payment")
        publish_after_commit(session, refund_payment.si(order_id))
        return S.CANCELLED
    if OrderState(order.state) != S.NEEDS_ATTENTION:
        raise IllegalTransition(f"order {order_id} is {order.state}, not needs_attention")
    resume = RESUME_STATE.get(order.failed_step or "", S.NEW)
    transition(session, order, resume, actor=actor, retry_of=order.failed_step)
    order.failed_step, order.last_error, order.attempts = None, None, 0
    publish_after_commit(
        session, ship.si(order_id) if resume == S.READY_TO_SHIP else pipeline(order_id)
    )
    return resume


def release_waiting(session: Session, sku: str) -> list[int]:
    """After stock arrived: push the on-hold orders that wait for ``sku`` through again."""
    waiting = stock.orders_waiting_for(session, sku)
    for order_id in waiting:
        publish_after_commit(session, pipeline(order_id))
    return waiting
