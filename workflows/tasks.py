"""Tasks. Each takes ids, reloads state, does its one step only if not done yet.

- ``ordersync.intake.process_event(inbox_id)``: apply one stored webhook delivery
  (``integrations.inbox``); ``after_intake`` / ``after_page``: what follows an applied order.
- ``ordersync.maintenance.sweep()``: republish committed work that never got done
  (``orders.sweeper`` finds it: webhooks, tracking events, parked work once its
  ``not_before`` has passed, effects on a marketplace not delivered yet, stuck orders, outside
  calls whose attempt died, sync runs whose worker died).
- ``ordersync.maintenance.purge()``: buyer personal data past retention (``orders.retention``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import structlog
from celery.canvas import Signature

from core.settings import get_settings
from db.base import utcnow
from db.models import Order
from domain.states import OrderState
from integrations import inbox
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
            inbox.fail(session, inbox_id, describe(exc), attempts)


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


def _fetch(session: Any, account_id: int, external_id: str) -> None:
    """A delivery overtook its order's own: the order is fetched as it is now, after commit."""
    from workflows.sync import refresh_order

    publish_after_commit(session, refresh_order.si(account_id, external_id))


@app.task(
    base=IntakeTask,
    bind=True,
    name="ordersync.intake.process_event",
    ignore_result=True,  # the web app publishes it per webhook and never reads a result
)
def process_event(self: IntakeTask, inbox_id: int) -> dict[str, Any]:
    """One stored webhook delivery applied by its marketplace's handler (``integrations.inbox``)."""
    with self.transaction() as session:
        return inbox.process(session, inbox_id, after_intake=after_intake, fetch=_fetch).as_dict()


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
