"""The order pipeline: one canvas, one thin task per step, each step exactly once in effect.

    pipeline(order_id) = chain(
        reserve_stock.si(order_id),        # or on_hold when stock is short (the chain stops)
        capture_payment.si(order_id),      # recorded without a call when the marketplace collected
        chord([issue_invoice.si(order_id), buy_label.si(order_id)],
              mark_ready_to_ship.si(order_id)),
    )
    ship(order_id): stock consumed → shipped, the fulfilment written to the outbox
    deliver(message_id): one outbox message (fulfilment, cancellation) to the marketplace
    refund_payment(order_id): a cancelled order's captured payment goes back (once)

Every task holds the Redis lock of (order, step) (``workflows.steps.StepTask``) and calls its
step's service in ``orders/`` (``reservation``, ``payments``, ``documents``, ``fulfilment``,
``refunds``), which reloads the order and does the step only if it is not done yet; outside
calls carry idempotency keys derived from our ids (``capture:{order_id}``, ``label:{order_id}``)
stored before the call. Here the services get their real outside world (the clients of
``workflows.providers``) and their follow-ups become tasks published after commit. A step that
fails for good sends the order to ``needs_attention``; ``retry_order`` resumes it from that step
(``orders.recovery``). Orders the marketplace fulfils itself (Amazon FBA) run the same canvas
with nothing of ours leaving the shelf (``orders.fulfilment``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeGuard

from celery import chain, chord
from celery.canvas import Signature
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, Order, Refund, Shipment
from db.session import session_scope
from domain.errors import PermanentError
from domain.states import OrderState
from integrations.base import ConnectorSeams, MarketplaceConnector, ShipmentGroup
from integrations.carriers.webhooks import parse_track_event
from orders import (
    cancellation,
    carrier_events,
    documents,
    fulfilment,
    outbox,
    payments,
    recovery,
    refunds,
    reservation,
    staff,
    tracking,
)
from orders.fulfilment import marketplace_shipped
from orders.payments import AuthorizationHolder
from orders.steps import FollowUp
from workflows.base import OrdersyncTask, describe
from workflows.celery_app import app
from workflows.providers import (
    NotAHolder,
    carrier_client,
    connector_for,
    payments_client,
    shared_limiter,
)
from workflows.publish import publish_after_commit
from workflows.steps import DeliverTask, RefundTask, StepTask

__all__ = [
    "after_commit",
    "buy_label",
    "cancel_order",
    "capture_payment",
    "carrier_event",
    "credit_note",
    "deliver",
    "issue_invoice",
    "mark_ready_to_ship",
    "mark_shipped",
    "marketplace_shipped",
    "on_cancelled",
    "pipeline",
    "refund_payment",
    "release_waiting",
    "request_refund",
    "reserve_stock",
    "retry_message",
    "retry_order",
    "ship",
    "ship_lines",
    "staff_refund",
    "track_due",
    "track_shipment",
    "void_labels",
    "void_shipment_label",
    "void_unused",
]


def _task(
    step: str, queue_prefix: str, *, chord_header: bool = False, base: type = StepTask
) -> Any:
    # Only the chord's header tasks store a result (the chord counts them); for the others a
    # result is a Redis write nobody reads, and a publisher that keeps it would subscribe to it.
    return app.task(base=base, bind=True, name=f"ordersync.{queue_prefix}.{step}", step=step,
                    ignore_result=not chord_header)  # fmt: skip


def after_commit(signature: Callable[[int], Signature]) -> FollowUp:
    """A follow-up that publishes ``signature(order_id)`` once the transaction has committed."""

    def publish(session: Session, order_id: int) -> None:
        publish_after_commit(session, signature(order_id))

    return publish


def _push_effect(account: ChannelAccount, effect: outbox.Effect) -> bool:
    """One outbox message to the account's marketplace, through its connector, on the buckets
    every worker shares (as polling uses them). True: a cancellation the marketplace refunds
    the buyer with (its declaration's ``refunds_on_cancel``)."""
    from integrations import registry

    connector = connector_for(account, ConnectorSeams(limiter=shared_limiter()))
    try:
        if effect.kind == outbox.FULFILMENT:
            payload = effect.payload
            connector.push_fulfillment(
                effect.external_id, tracking_number=str(payload["tracking_number"]),
                carrier=str(payload["carrier"]), idempotency_key=effect.idempotency_key,
                lines=[(str(line), int(qty)) for line, qty in payload.get("lines") or []],
                location=str(payload.get("location") or ""), last=bool(payload.get("last", True)),
            )  # fmt: skip
        elif effect.kind == outbox.DELIVERY:
            connector.push_delivery(
                effect.external_id, tracking_number=str(effect.payload["tracking_number"]),
                delivered_at=str(effect.payload.get("delivered_at") or ""),
                idempotency_key=effect.idempotency_key,
            )  # fmt: skip
        elif effect.kind == outbox.CANCELLATION:
            connector.push_cancellation(
                effect.external_id, reason=str(effect.payload.get("reason") or ""),
                idempotency_key=effect.idempotency_key,
            )  # fmt: skip
            return registry.get(account.channel).refunds_on_cancel
        else:
            raise PermanentError(f"no push for an effect of kind {effect.kind!r}")
        return False
    finally:
        connector.close()


#: the marketplace holders of this process, per account: (the account row's updated_at, its
#: connector). Building a connector builds an httpx client (~50 ms: the TLS trust store), more
#: than the capture itself; a changed account (credentials, limits) gets a new one.
_HOLDERS: dict[int, tuple[Any, Any]] = {}
_HOLDERS_LOCK = threading.Lock()


def _holder(held_by: str, account_id: int) -> AuthorizationHolder:
    """Where an order's authorization lives: the payment provider (a PaymentIntent), or the
    marketplace of the order's account (its connector, on the buckets every worker shares;
    reused by this process while the account is unchanged)."""
    if held_by == "provider":
        return payments_client()

    with session_scope() as session:
        account = session.get_one(ChannelAccount, account_id)
        with _HOLDERS_LOCK:
            cached = _HOLDERS.get(account_id)
            if cached is not None and cached[0] == account.updated_at:
                holder: AuthorizationHolder = cached[1]
                return holder
            connector = connector_for(account, ConnectorSeams(limiter=shared_limiter()))
            if not _is_holder(connector):
                connector.close()
                raise NotAHolder(
                    f"the {account.channel} marketplace holds no authorizations we capture"
                )
            if cached is not None:
                cached[1].close()
            _HOLDERS[account_id] = (account.updated_at, connector)
            return connector


def _is_holder(candidate: object) -> TypeGuard[AuthorizationHolder]:
    return all(hasattr(candidate, name) for name in ("capture_authorization", "find_capture"))


# --- the steps --------------------------------------------------------------------------------


@_task("reserve_stock", "orders")
def reserve_stock(self: StepTask, order_id: int) -> str:
    with self.lock(order_id):
        return self.report(reservation.reserve(self.transaction, order_id))


@_task("capture_payment", "orders")
def capture_payment(self: StepTask, order_id: int) -> str:
    refund = after_commit(refund_payment.si)  # money captured after a cancel goes back
    with self.lock(order_id):
        outcome = payments.capture(self.transaction, order_id, _holder, self.keys(), refund=refund)
        return self.report(outcome)


@_task("issue_invoice", "documents", chord_header=True)
def issue_invoice(self: StepTask, order_id: int) -> str:
    with self.lock(order_id):
        return self.report(documents.issue_invoice(self.transaction, order_id))


def _splits(channel: str) -> bool:
    from integrations import registry

    return registry.get(channel).splits_by_location


def _shipment_plan(order_id: int) -> list[ShipmentGroup]:
    """How the order's marketplace splits it by location (Shopify's fulfillment orders); an
    account we cannot ask (webhook-only) ships it whole from our location. The read ends with
    a COMMIT, not the ROLLBACK of a session closed without one: on PostgreSQL a ROLLBACK makes
    psycopg drop every statement it prepared on the connection (DEALLOCATE ALL)."""
    with session_scope() as session:
        row = session.execute(
            select(Order.external_id, ChannelAccount)
            .join(ChannelAccount, ChannelAccount.id == Order.channel_account_id)
            .where(Order.id == order_id)
        ).one()
        external_id, account = row
        session.expunge(account)
    if not outbox.can_push(account):
        return []
    return _account_connector(account).shipment_groups(external_id)


#: connectors kept by this worker process for the shipment plan, one per account version:
#: building one (its httpx client loads the TLS trust store) costs more CPU than the call
_PLAN_CONNECTORS: dict[tuple[int, str], MarketplaceConnector] = {}


def _account_connector(account: ChannelAccount) -> MarketplaceConnector:
    """The account's connector, reused while the account is unchanged (a changed credential
    or URL makes a new one; the old one is closed)."""
    version = repr((account.api_base_url, account.credentials, account.rate_limits,
                    account.shop))  # fmt: skip
    key = (account.id, hashlib.sha256(version.encode()).hexdigest())
    connector = _PLAN_CONNECTORS.get(key)
    if connector is None:
        for stale in [k for k in _PLAN_CONNECTORS if k[0] == account.id]:
            _PLAN_CONNECTORS.pop(stale).close()
        connector = _PLAN_CONNECTORS[key] = connector_for(
            account, ConnectorSeams(limiter=shared_limiter())
        )
    return connector


@_task("buy_label", "outbound", chord_header=True)
def buy_label(self: StepTask, order_id: int) -> str:
    with self.lock(order_id):
        outcome = fulfilment.buy_label(self.transaction, order_id, carrier_client, self.keys(),
                                       _shipment_plan, splits=_splits,
                                       ship_requested=_ship_these)  # fmt: skip
        return self.report(outcome)


@_task("mark_ready_to_ship", "orders")
def mark_ready_to_ship(self: StepTask, order_id: int) -> str:
    ship_it = after_commit(ship.si)  # the marketplace shipped it meanwhile
    with self.lock(order_id):
        outcome = fulfilment.mark_ready_to_ship(
            self.transaction, order_id, ship_it=ship_it, void_unused=void_unused
        )
        return self.report(outcome)


@_task("ship", "outbound")
def ship(self: StepTask, order_id: int, shipment_ids: list[int] | None = None) -> str:
    deliver_it = after_commit(deliver.si)
    with self.lock(order_id):
        outcome = fulfilment.ship(self.transaction, order_id, deliver_it=deliver_it,
                                  shipment_ids=shipment_ids)  # fmt: skip
        return self.report(outcome)


def _ship_these(session: Session, order_id: int, shipment_ids: list[int]) -> None:
    """After commit: ship these shipments of the order (those staff asked for by lines)."""
    publish_after_commit(session, ship.si(order_id, shipment_ids))


@app.task(base=DeliverTask, bind=True, name=outbox.DELIVER_TASK, ignore_result=True)
def deliver(self: DeliverTask, message_id: int) -> str:
    """One outbox message to its marketplace (``orders.outbox.deliver``)."""
    return outbox.deliver(self.transaction, message_id, _push_effect, self.keys(),
                          deliver_it=after_commit(deliver.si)).result  # fmt: skip


@_task("void_labels", "outbound")
def void_labels(self: StepTask, order_id: int) -> str:
    with self.lock(order_id):
        return self.report(
            fulfilment.void_labels(self.transaction, order_id, carrier_client, self.keys())
        )


@app.task(base=OrdersyncTask, bind=True, name="ordersync.outbound.track_shipment",
          ignore_result=True)  # fmt: skip
def track_shipment(self: OrdersyncTask, shipment_id: int) -> str:
    """The carrier's tracking of one shipped shipment (``orders.tracking.track``); a failure
    is retried, and asked again at the next interval after that."""
    return tracking.track(self.transaction, shipment_id, carrier_client,
                          delivered=_tell_delivered).result  # fmt: skip


def _tell_delivered(session: Session, shipment_id: int) -> None:
    """In the transaction that records a delivery: a delivery event for the order's
    marketplace, through the outbox, where it takes them (Shopify)."""
    from integrations import registry

    shipment = session.get(Shipment, shipment_id)
    assert shipment is not None
    order = session.get(Order, shipment.order_id)
    assert order is not None
    if not registry.get(order.channel).takes_delivery or not shipment.tracking_number:
        return
    outbox.enqueue(
        session, order.id, kind=outbox.DELIVERY, key=f"delivered:{order.id}:s{shipment.id}",
        payload={"tracking_number": shipment.tracking_number,
                 "delivered_at": (shipment.delivered_at or utcnow()).strftime(
                     "%Y-%m-%dT%H:%M:%SZ")},
        deliver_it=after_commit(deliver.si), shipment_id=shipment.id,
    )  # fmt: skip


@app.task(base=OrdersyncTask, bind=True, name=carrier_events.TASK, ignore_result=True)
def carrier_event(self: OrdersyncTask, event_id: int) -> str:
    """One stored tracking webhook of the carrier, applied as the poll's tracking is
    (``orders.carrier_events.apply``)."""
    with self.transaction() as session:
        return carrier_events.apply(session, event_id, parse_track_event,
                                    delivered=_tell_delivered).result  # fmt: skip


@app.task(base=OrdersyncTask, bind=True, name="ordersync.maintenance.track_due",
          ignore_result=True)  # fmt: skip
def track_due(self: OrdersyncTask, limit: int = 500) -> int:
    """Beat, every ``TRACK_INTERVAL_S``: ask the carrier about every shipped parcel not
    delivered yet (each at most once an interval)."""
    interval = dt.timedelta(seconds=get_settings().track_interval_s)
    with self.transaction() as session:
        shipment_ids = tracking.due(session, interval=interval, limit=limit)
        for shipment_id in shipment_ids:
            publish_after_commit(session, track_shipment.si(shipment_id))
    return len(shipment_ids)


@_task("credit_note", "documents")
def credit_note(self: StepTask, order_id: int) -> str:
    return self.report(documents.credit_note(self.transaction, order_id))


@_task("refund_payment", "orders", base=RefundTask)
def refund_payment(self: RefundTask, order_id: int) -> str:
    with self.lock(order_id):
        outcome = refunds.refund(self.transaction, order_id, payments_client, self.keys())
        return self.report(outcome)


class StaffRefundTask(StepTask):
    abstract = True

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        order_id, refund_id = (args or (kwargs["order_id"], kwargs["refund_id"]))[:2]
        with self.transaction() as session:
            refunds.refund_refused(session, order_id, refund_id, error=describe(exc))


@_task("staff_refund", "orders", base=StaffRefundTask)
def staff_refund(self: StepTask, order_id: int, refund_id: int) -> str:
    credit = after_commit(credit_note.si)
    with self.lock(order_id):
        outcome = refunds.make_refund(self.transaction, order_id, refund_id, payments_client,
                                      self.keys(), credit=credit)  # fmt: skip
        return self.report(outcome)


def request_refund(
    session: Session, order_id: int, *, actor: str, lines: dict[str, int] | None = None,
    amount: Decimal | None = None, request_key: str | None = None,
) -> tuple[Refund, bool]:  # fmt: skip
    """Staff refund of lines or an amount (``orders.refunds.request_refund``), made at the
    provider once the transaction commits; a repeated request is the same refund."""
    refund, new = refunds.request_refund(session, order_id, actor=actor, lines=lines,
                                         amount=amount, request_key=request_key)  # fmt: skip
    if new:
        publish_after_commit(session, staff_refund.si(order_id, refund.id))
    return refund, new


# --- canvas, and what cancelling, staff and new stock set off ---------------------------------


def pipeline(order_id: int) -> Signature:
    return chain(
        reserve_stock.si(order_id),
        capture_payment.si(order_id),
        chord(
            [issue_invoice.si(order_id), buy_label.si(order_id)], mark_ready_to_ship.si(order_id)
        ),
    )


def pipelines(order_ids: Sequence[int]) -> Signature:
    """The pipelines of many orders (a sync's page), as one message: publishing a pipeline
    costs about 0.7 ms of the publisher's CPU (Celery builds and freezes the canvas), which
    would be most of a backfill's cost per order; ``enter_pipelines`` publishes them from a
    worker of the ``orders`` queue instead."""
    return enter_pipelines.si(list(order_ids))


@app.task(base=OrdersyncTask, bind=True, name="ordersync.orders.enter_pipelines",
          ignore_result=True)  # fmt: skip
def enter_pipelines(self: OrdersyncTask, order_ids: list[int]) -> int:
    """Publish each order's pipeline on one producer. Redelivered after a crash, it publishes
    them again: every step does its work only if it is not done yet (as a staff push does);
    lost, the sweeper pushes the orders that made no progress."""
    with self.app.producer_or_acquire() as producer:
        for order_id in order_ids:
            pipeline(order_id).apply_async(producer=producer)
    return len(order_ids)


def on_cancelled(session: Session, order_id: int) -> None:
    """In the transaction that cancelled the order: stock back, credit note and refund later,
    and the labels that never left voided at the carrier."""
    cancellation.on_cancelled(session, order_id, credit_note=after_commit(credit_note.si),
                              refund=after_commit(refund_payment.si))  # fmt: skip
    _void_if_labelled(session, order_id)


def void_unused(session: Session, order_id: int) -> None:
    """After commit: void the labels of the order's shipments that will not leave."""
    publish_after_commit(session, void_labels.si(order_id))


def _void_if_labelled(session: Session, order_id: int) -> None:
    labelled = session.scalar(
        select(Shipment.id).where(
            Shipment.order_id == order_id, Shipment.status.in_(["pending", "labelled"])
        )
    )
    if labelled is not None:
        publish_after_commit(session, void_labels.si(order_id))


def cancel_order(session: Session, order_id: int, *, reason: str, actor: str) -> None:
    """Staff cancel (``orders.staff.cancel``): the order, its stock, credit note, refund, label
    voids and the cancellation pushed to its marketplace."""
    from integrations import registry

    order = session.get(Order, order_id)
    if order is None:
        raise LookupError(f"no order {order_id}")
    staff.cancel(
        session, order_id, reason=reason, actor=actor,
        marketplace_cancels=registry.get(order.channel).seller_cancels,
        on_cancelled=on_cancelled, deliver_it=after_commit(deliver.si),
    )  # fmt: skip


def retry_order(session: Session, order_id: int, *, actor: str) -> OrderState:
    """Staff retry (``orders.recovery.retry``): the failed step again, or the missing refund."""
    resume, shipping, refund = (after_commit(s) for s in (pipeline, ship.si, refund_payment.si))
    deliver_it = after_commit(deliver.si)

    def push(session: Session, order_id: int) -> None:
        outbox.retry_for_order(session, order_id, actor=actor, deliver_it=deliver_it)

    return recovery.retry(
        session, order_id, actor=actor, pipeline=resume, ship=shipping, refund=refund, push=push
    )


def void_shipment_label(
    session: Session, shipment_id: int, *, actor: str, rebuy: bool
) -> int | None:
    """Staff void (and re-buy) a shipment's label (``orders.staff.void_label``)."""
    return staff.void_label(session, shipment_id, actor=actor, rebuy=rebuy,
                            void_it=void_unused, label_it=after_commit(buy_label.si))  # fmt: skip


def ship_lines(
    session: Session, order_id: int, lines: dict[str, int], *, actor: str,
    request_key: str | None = None,
) -> staff.ShipRequest:  # fmt: skip
    """Staff ship chosen lines and units now (``orders.staff.ship_lines``): split off their
    shipments, voids, labels and the ship, each after commit."""
    return staff.ship_lines(
        session, order_id, lines, actor=actor, request_key=request_key, void_it=void_unused,
        label_it=after_commit(buy_label.si), ship_it=_ship_these,
    )  # fmt: skip


def mark_shipped(
    session: Session, order_id: int, *, tracking_number: str, carrier: str, actor: str
) -> int:
    """Staff mark an order shipped by hand with a tracking number (``orders.staff``)."""
    return staff.mark_shipped(
        session, order_id, tracking_number=tracking_number, carrier=carrier, actor=actor,
        void_it=void_unused, deliver_it=after_commit(deliver.si),
    )  # fmt: skip


def retry_message(session: Session, message_id: int, *, actor: str) -> str:
    """Staff retry of one outbox message (``orders.outbox.retry``)."""
    return outbox.retry(session, message_id, actor=actor, deliver_it=after_commit(deliver.si))


def release_waiting(session: Session, sku: str) -> list[int]:
    """After stock arrived: push the on-hold orders that wait for ``sku`` through again."""
    return reservation.release_waiting(session, sku, resume=after_commit(pipeline))
