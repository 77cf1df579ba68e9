"""Tasks. Each takes ids, reloads state, does its one step only if not done yet.

- ``ordersync.intake.process_event(inbox_id)``: parse and apply one webhook delivery.
- ``ordersync.maintenance.sweep()``: republish committed work that never got done
  (``orders.sweeper`` finds it: webhooks, tracking events, parked work once its
  ``not_before`` has passed, effects on a marketplace not delivered yet, stuck orders, outside
  calls whose attempt died, sync runs whose worker died).
- ``ordersync.maintenance.purge()``: buyer personal data past retention (``orders.retention``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pydantic
import structlog
from celery.canvas import Signature
from sqlalchemy import bindparam, select, update

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, InboxEvent, Order
from domain.errors import OrderNotKnown, PayloadError
from domain.states import InboxStatus, OrderState
from integrations import registry
from integrations.marketplace import Delivery
from orders import carrier_events, sweeper
from orders.intake import IntakeOutcome, IntakeResult
from workflows.base import OrdersyncTask, describe
from workflows.celery_app import app
from workflows.orphans import restore_orphans
from workflows.publish import publish_after_commit

__all__ = ["process_event", "sweep"]

log = structlog.get_logger(__name__)


class IntakeTask(OrdersyncTask):
    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        inbox_id = args[0] if args else kwargs.get("inbox_id")
        with self.transaction() as session:
            session.execute(
                update(InboxEvent)
                .where(InboxEvent.id == inbox_id, InboxEvent.status == InboxStatus.RECEIVED)
                .values(
                    status=InboxStatus.FAILED,
                    error=describe(exc),
                    attempts=attempts,
                    processed_at=utcnow(),
                )
            )


# prebuilt (see db.session.core)
_LOAD_EVENT = (
    select(InboxEvent, ChannelAccount)
    .join(ChannelAccount, ChannelAccount.id == InboxEvent.channel_account_id)
    .where(InboxEvent.id == bindparam("b_id"))
    .with_for_update(of=InboxEvent)
)


def after_page(
    session: Any, results: Sequence[IntakeResult], account_id: int | None = None
) -> None:
    """``after_intake`` for a page of a sync (``orders.syncing``) of ``account_id``: the
    pipelines of its new orders go out as one message (``workflows.pipeline.pipelines``), the
    rest one by one (an order whose refund came without its lines is fetched whole)."""
    from workflows.pipeline import pipelines

    new = [r.order_id for r in results if _batched(r)]
    if new:
        publish_after_commit(session, pipelines(new))
    for result in results:
        if not _batched(result):
            after_intake(session, result, account_id)


def _enters_pipeline(result: IntakeResult) -> bool:
    return (result.outcome == IntakeOutcome.CREATED and result.state == OrderState.NEW) or (
        result.outcome == IntakeOutcome.UPDATED
        and result.state in (OrderState.NEW, OrderState.RESERVED)  # e.g. a payment: news
    )


def _batched(result: IntakeResult) -> bool:
    """Nothing but its pipeline to start (no refunds to credit, nothing to fetch)."""
    return (
        _enters_pipeline(result)
        and not result.refunded
        and not result.relabel
        and result.refetch is None
    )


def after_intake(session: Any, result: IntakeResult, account_id: int | None = None) -> None:
    """New orders enter the pipeline; orders cancelled by the marketplace release their stock
    (and void their labels); an order fulfilled in the marketplace's admin is not shipped again;
    one cancelled there after it shipped expects a return; refunds it made get their credit
    notes; an order said to have changed is fetched; an edit that moved a parcel (address,
    lines) voids its old label and labels the new shipment."""
    from orders.fulfilment import cancelled_after_shipping, fulfilled_elsewhere
    from workflows.pipeline import (
        buy_label,
        credit_note,
        marketplace_shipped,
        on_cancelled,
        pipeline,
        ship,
        void_unused,
    )

    if result.refunded:
        publish_after_commit(session, credit_note.si(result.order_id))
    if result.relabel:
        void_unused(session, result.order_id)
        publish_after_commit(session, buy_label.si(result.order_id))
    if result.refetch is not None and account_id is not None:
        from workflows.sync import refresh_order

        publish_after_commit(session, refresh_order.si(account_id, result.refetch))

    if _enters_pipeline(result):
        publish_after_commit(session, pipeline(result.order_id))
    elif result.outcome == IntakeOutcome.UPDATED and result.cancelled_now:
        on_cancelled(session, result.order_id)
    elif result.outcome == IntakeOutcome.UPDATED and result.state in (
        OrderState.READY_TO_SHIP,
        OrderState.PARTIALLY_SHIPPED,
    ):
        order = session.get(Order, result.order_id)
        if order is not None and marketplace_shipped(order):  # e.g. Amazon shipped an FBA order
            publish_after_commit(session, ship.si(result.order_id))
        elif order is not None and order.fulfillment_status == "fulfilled":
            # fulfilled in the marketplace's admin: ours do not ship again, labels voided
            fulfilled_elsewhere(session, result.order_id, void_unused=void_unused)
    elif result.outcome == IntakeOutcome.UPDATED and result.state in (
        OrderState.SHIPPED,
        OrderState.PARTIALLY_SHIPPED,
        OrderState.DELIVERED,
    ):
        order = session.get(Order, result.order_id)
        if order is not None and order.cancelled_at is not None:
            cancelled_after_shipping(session, result.order_id)  # a return, not a silent no-op


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from exc
    except RecursionError:  # signed, stored, but nested deeper than any order is
        raise PayloadError("body is not JSON we can read: nested too deeply") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"body is JSON {type(payload).__name__}, expected an object")
    return payload


def _payload_error_message(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        # field paths and error types only: the values may be customer data
        parts = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        ]
        return f"payload does not map: {'; '.join(parts)}"
    return str(exc)


def _settle(event: InboxEvent, status: str, attempts: int, error: str | None) -> None:
    """The inbox row's outcome, with its attempts counted in the same UPDATE."""
    event.status, event.attempts, event.error = status, attempts, error
    event.processed_at = utcnow()


@app.task(
    base=IntakeTask,
    bind=True,
    name="ordersync.intake.process_event",
    ignore_result=True,  # the web app publishes it per webhook and never reads a result
)
def process_event(self: IntakeTask, inbox_id: int) -> dict[str, Any]:
    with self.transaction() as session:
        row = session.execute(_LOAD_EVENT, {"b_id": inbox_id}).one_or_none()
        if row is None:
            log.warning("inbox.missing", inbox_id=inbox_id)
            return {"inbox_id": inbox_id, "status": "missing"}
        event, account = row
        if event.status != InboxStatus.RECEIVED:
            return {"inbox_id": inbox_id, "status": event.status, "order_id": event.order_id}
        # counted with the outcome, in the same UPDATE (a rolled-back attempt counts nothing
        # either way: the failure handler records its attempts itself)
        attempts = event.attempts + 1
        # the marketplace's own topic → handler table; unknown topics are logged and kept as
        # ``ignored`` (a channel no longer registered fails: staff see it, and can retry it
        # once the plugin is back)
        try:
            marketplace = registry.get(event.channel)
        except registry.UnknownMarketplace as exc:
            log.warning("inbox.unknown_marketplace", inbox_id=inbox_id, channel=event.channel)
            _settle(event, InboxStatus.FAILED, attempts, str(exc))
            return {"inbox_id": inbox_id, "status": event.status, "error": event.error}
        handler = marketplace.topic_handlers.get(event.topic)
        if handler is None:
            log.info("inbox.ignored_topic", inbox_id=inbox_id, topic=event.topic)
            _settle(event, InboxStatus.IGNORED, attempts, f"topic {event.topic!r} is not handled")
            return {"inbox_id": inbox_id, "status": event.status}
        try:
            delivery = Delivery(account.id, account.name, event.topic, _parse(event.body))
            with session.begin_nested():  # a failed mapping must not leave half an order
                result = handler(session, marketplace, delivery)
        except OrderNotKnown as exc:
            if not account.credentials:
                raise  # a webhook-only account: tried again later, when the order is in
            # it overtook the order's own delivery: the order is fetched as it is now (what
            # this delivery says comes with it), and this delivery is done
            from workflows.sync import refresh_order

            publish_after_commit(session, refresh_order.si(account.id, exc.external_id))
            log.info("inbox.order_fetched", inbox_id=inbox_id, topic=event.topic)
            _settle(event, InboxStatus.PROCESSED, attempts,
                    f"{exc}: the order is fetched from the marketplace")  # fmt: skip
            return {"inbox_id": inbox_id, "status": event.status, "outcome": "fetched"}
        except (PayloadError, pydantic.ValidationError) as exc:
            message = _payload_error_message(exc)
            log.warning("inbox.unparseable", inbox_id=inbox_id, error=message[:300])
            _settle(event, InboxStatus.FAILED, attempts, message[:2000])
            return {"inbox_id": inbox_id, "status": event.status, "error": message}
        after_intake(session, result, account.id)
        _settle(
            event,
            InboxStatus.PROCESSED,
            attempts,
            "stale: older than the stored order" if result.outcome == "stale" else None,
        )
        event.order_id = result.order_id
        log.info(
            "inbox.processed",
            inbox_id=inbox_id,
            order_id=result.order_id,
            outcome=result.outcome,
        )
        return {
            "inbox_id": inbox_id,
            "status": event.status,
            "order_id": result.order_id,
            "outcome": result.outcome,
        }


@app.task(base=OrdersyncTask, bind=True, name="ordersync.maintenance.sweep", ignore_result=True)
def sweep(self: OrdersyncTask, limit: int = 500, now: str | None = None) -> dict[str, int]:
    """Republish committed work that never got done (``orders.sweeper``: webhooks, tracking
    events, outbox work and effects, credit notes, stuck orders, outside calls whose attempt
    died, sync runs whose worker died), and restore orphaned messages (``workflows.orphans``).

    After Redis came back empty (``redis_lost_its_data``), everything unfinished is republished
    at once. ``now`` (ISO 8601; default: the clock) is the moment the sweep judges parked work
    and progress by: a test moves it past a parked message's ``not_before`` instead of waiting
    for it."""
    from workflows.locks import redis_lost_its_data

    at = dt.datetime.fromisoformat(now).astimezone(dt.UTC) if now else utcnow()
    lost = redis_lost_its_data()
    if lost:
        log.warning("sweep.redis_lost_its_data", action="republishing all unfinished work")
    with self.transaction() as session:
        found = sweeper.find(session, at=at, limit=limit, lost=lost)
        for signature in _signatures(found):
            publish_after_commit(session, signature)
    counts = {**found.counts(), "orphans": 0 if lost else restore_orphans(app)}
    if any(counts.values()):  # after an empty Redis there are no orphans
        log.info("sweep.republished", **counts)
    return counts


def _signatures(found: sweeper.Found) -> Iterator[Signature]:
    """The tasks that do what the sweep found."""
    from workflows.pipeline import credit_note, deliver, pipeline, refund_payment, void_labels
    from workflows.sync import sync_slice

    yield from (process_event.si(inbox_id) for inbox_id in found.webhooks)
    yield from (app.signature(carrier_events.TASK, (i,)) for i in found.carrier_events)
    yield from (Signature(w.task_name, w.args, w.kwargs, w.options, app=app) for w in found.work)
    yield from (deliver.si(message_id) for message_id in found.effects)
    yield from (credit_note.si(order_id) for order_id in found.credits)
    yield from (pipeline(order_id) for order_id in found.orders)
    steps = {"refund_payment": refund_payment, "void_labels": void_labels}
    for call in found.calls:
        step = steps.get(call.step)
        yield step.si(call.order_id) if step else pipeline(call.order_id)
    yield from (sync_slice.si(run_id) for run_id in found.runs)


@app.task(base=OrdersyncTask, bind=True, name="ordersync.maintenance.purge", ignore_result=True)
def purge(self: OrdersyncTask) -> dict[str, int]:
    """Daily: remove buyer personal data and idempotency keys past retention
    (``orders.retention``)."""
    from orders.retention import purge as purge_past_retention

    settings = get_settings()
    with self.transaction() as session:
        report = purge_past_retention(
            session,
            now=utcnow(),
            personal_data_days=settings.personal_data_retention_days,
            idempotency_days=settings.idempotency_retention_days,
        )
    log.info("purge.done", **report.as_dict())
    return report.as_dict()
