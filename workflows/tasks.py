"""Tasks. Each takes ids, reloads state, does its one step only if not done yet.

- ``ordersync.intake.process_event(inbox_id)``: parse and apply one webhook delivery.
- ``ordersync.maintenance.sweep()``: republish committed work that never got processed
  (webhooks, the carrier's tracking webhooks),
  parked work (``workflows.base``) once its ``not_before`` has passed, and effects on a
  marketplace (``orders.outbox``) not delivered yet.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import pydantic
import structlog
from celery.canvas import Signature
from sqlalchemy import Exists, bindparam, exists, select, update

from core.settings import get_settings
from db.base import utcnow
from db.models import (
    PENDING_EFFECT,
    RECEIVED_EVENT,
    UNPUBLISHED_WORK,
    CarrierEvent,
    ChannelAccount,
    InboxEvent,
    Order,
    OutboxMessage,
)
from domain.errors import OrderNotKnown, PayloadError
from domain.states import InboxStatus, OrderState
from integrations import registry
from integrations.marketplace import Delivery
from orders import carrier_events
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
        _settle(event, InboxStatus.PROCESSED, attempts,
                "stale: older than the stored order" if result.outcome == "stale" else None)
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
    """Republish inbox events and outbox messages committed but not processed in time, parked
    work whose ``not_before`` has passed, push on orders with no progress, run again outside
    calls whose attempt died, and resume sync runs whose worker died.

    After Redis came back empty (``redis_lost_its_data``), nothing in flight can still arrive:
    everything unfinished is republished at once, not after the usual waits (parked work still
    waits for its time: it is in the database, not lost). ``now`` (ISO 8601; default: the
    clock) is the moment the sweep judges parked work and progress by: a test moves it past a
    parked message's ``not_before`` instead of waiting for it."""
    from workflows.locks import redis_lost_its_data

    at = dt.datetime.fromisoformat(now).astimezone(dt.UTC) if now else utcnow()
    lost = redis_lost_its_data()
    if lost:
        log.warning("sweep.redis_lost_its_data", action="republishing all unfinished work")
    cutoff = at - dt.timedelta(seconds=0 if lost else get_settings().sweep_after_s)
    with self.transaction() as session:
        stuck = _unprocessed_webhooks(session, limit, cutoff)
        outbox = _due_work(session, limit, at, cutoff)
        # the carrier's tracking webhooks stored but not applied (the poll would catch the
        # parcel up anyway; the event is applied all the same, for its timeline row)
        tracked = session.scalars(
            select(CarrierEvent.id)
            .where(CarrierEvent.status == InboxStatus.RECEIVED, CarrierEvent.received_at < cutoff)
            .order_by(CarrierEvent.id)
            .limit(limit)
        ).all()
        for event_id in tracked:
            publish_after_commit(session, app.signature(carrier_events.TASK, (event_id,)))
        effects = _undelivered_effects(session, limit, at, cutoff)
        credits = _uncredited(session, limit, cutoff)
        orders = _stuck_orders(session, limit, at, now=lost)
        calls = _unfinished_calls(session, limit, at, now=lost)
        runs = _stalled_runs(session, limit, now=lost)
    orphans = 0 if lost else restore_orphans(app)  # after an empty Redis there are none
    if stuck or tracked or outbox or effects or credits or orders or calls or runs or orphans:
        log.info("sweep.republished", inbox=len(stuck), carrier=len(tracked),
                 outbox=len(outbox), effects=len(effects), credits=len(credits),
                 orders=len(orders), calls=len(calls), runs=len(runs),
                 orphans=orphans)  # fmt: skip
    return {"inbox": len(stuck), "carrier": len(tracked), "outbox": len(outbox),
            "effects": len(effects), "credits": len(credits),
            "orders": len(orders), "calls": len(calls), "runs": len(runs),
            "orphans": orphans}  # fmt: skip


def _unprocessed_webhooks(session: Any, limit: int, cutoff: dt.datetime) -> list[int]:
    """Webhooks committed before ``cutoff`` and not processed: their ``process_event`` again."""
    stuck = session.scalars(
        select(InboxEvent.id)
        # RECEIVED, as its partial index has it (db.models)
        .where(RECEIVED_EVENT, InboxEvent.received_at < cutoff)
        .order_by(InboxEvent.id)
        .limit(limit)
    ).all()
    for inbox_id in stuck:
        publish_after_commit(session, process_event.si(inbox_id))
    return list(stuck)


def _due_work(session: Any, limit: int, at: dt.datetime, cutoff: dt.datetime) -> list[int]:
    """Tasks in the outbox not published: parked work whose time has come, and messages whose
    own publish after commit has had time to happen (committed before ``cutoff``)."""
    outbox = session.scalars(
        select(OutboxMessage)
        .where(
            UNPUBLISHED_WORK,  # its partial index (db.models)
            (OutboxMessage.not_before <= at)
            | (OutboxMessage.not_before.is_(None) & (OutboxMessage.created_at < cutoff)),
        )
        .order_by(OutboxMessage.id)
        .limit(limit)
    ).all()
    for message in outbox:
        options = {**(message.options or {})}
        if message.queue:
            options["queue"] = message.queue
        publish_after_commit(
            session,
            Signature(message.task_name, message.args, message.kwargs or {}, options, app=app),
        )
        message.published_at = at
        message.attempts += 1
    return [message.id for message in outbox]


def _uncredited(session: Any, limit: int, cutoff: dt.datetime) -> list[int]:
    """Orders whose refund's credit note was never published (``orders.documents``): their
    ``credit_note`` again."""
    from orders.documents import uncredited_refunds
    from workflows.pipeline import credit_note

    order_ids = uncredited_refunds(session, before=cutoff, limit=limit)
    for order_id in order_ids:
        publish_after_commit(session, credit_note.si(order_id))
    return order_ids


def _stalled_runs(session: Any, limit: int, *, now: bool = False) -> list[int]:
    """Sync runs still reading whose last page is older than a slice can take (the task's
    hard time limit), or any after Redis came back empty: their next slice is published (a
    slice whose worker is alive holds the run's lock, and the duplicate returns at once)."""
    from orders.syncing import stalled_runs
    from workflows.sync import sync_slice

    idle = dt.timedelta(seconds=0 if now else get_settings().task_time_limit_s)
    run_ids = stalled_runs(session, idle_for=idle, limit=limit)
    for run_id in run_ids:
        publish_after_commit(session, sync_slice.si(run_id))
    return run_ids


def _undelivered_effects(
    session: Any, limit: int, at: dt.datetime, cutoff: dt.datetime
) -> list[int]:
    """Effects on a marketplace (``orders.outbox``) committed but still ``pending`` after their
    own publish had time to happen (``cutoff``), and not published again in the last
    ``stuck_after_s`` (a delivery may be waiting out its retries): their delivery again. A
    message that failed for good waits for staff."""
    from workflows.pipeline import deliver

    again = at - dt.timedelta(seconds=get_settings().stuck_after_s)
    messages = session.scalars(
        select(OutboxMessage)
        .where(
            PENDING_EFFECT,  # its partial index (db.models)
            OutboxMessage.created_at < cutoff,
            OutboxMessage.published_at.is_(None) | (OutboxMessage.published_at < again),
        )
        .order_by(OutboxMessage.id)
        .limit(limit)
    ).all()
    for message in messages:
        publish_after_commit(session, deliver.si(message.id))
        message.published_at = at
        message.attempts += 1
    return [message.id for message in messages]


def _parked_work(at: dt.datetime) -> Exists:
    """The order has parked work (``workflows.base``): still waiting for its time, or published
    less than ``stuck_after_s`` before ``at``. Nothing else pushes such an order on."""
    published_after = at - dt.timedelta(seconds=get_settings().stuck_after_s)
    return exists().where(
        OutboxMessage.order_id == Order.id,
        OutboxMessage.kind.is_(None),  # parked work, not an effect on the marketplace
        OutboxMessage.published_at.is_(None) | (OutboxMessage.published_at > published_after),
    )


def _unfinished_calls(session: Any, limit: int, at: dt.datetime, *, now: bool = False) -> list[str]:
    """Outside calls whose attempt died (key claimed, never finished, held by nobody for the
    idempotency lock timeout, or ``now``): their step runs again and resumes the key. A call
    whose order has parked work (a 429 that said "in two hours") waits for it."""
    from orders.recovery import unfinished_calls
    from workflows.pipeline import pipeline, refund_payment, void_labels

    idle = dt.timedelta(seconds=0 if now else get_settings().idempotency_lock_timeout_s)
    found = unfinished_calls(session, idle_for=idle, limit=limit)
    parked = set(
        session.scalars(
            select(Order.id).where(Order.id.in_({c.order_id for c in found}), _parked_work(at))
        )
    )
    found = [call for call in found if call.order_id not in parked]
    steps = {"refund_payment": refund_payment, "void_labels": void_labels}
    for call in found:
        step = steps.get(call.step)
        publish_after_commit(session, step.si(call.order_id) if step else pipeline(call.order_id))
    return [call.key for call in found]


def _stuck_orders(session: Any, limit: int, at: dt.datetime, *, now: bool = False) -> list[int]:
    """Orders in a pipeline state with no progress for ``stuck_after_s`` (or any, ``now``):
    push them on again (every step skips what is done, so this is safe however often). An
    order with parked work is left to it."""
    from workflows.pipeline import pipeline

    cutoff = at - dt.timedelta(seconds=0 if now else get_settings().stuck_after_s)
    order_ids = session.scalars(
        select(Order.id)
        .where(
            Order.state.in_(
                [OrderState.NEW, OrderState.RESERVED, OrderState.PAID, OrderState.DOCUMENTED]
            ),
            Order.updated_at < cutoff,
            ~_parked_work(at),
        )
        .order_by(Order.updated_at)
        .limit(limit)
    ).all()
    for order_id in order_ids:
        publish_after_commit(session, pipeline(order_id))
        session.execute(update(Order).where(Order.id == order_id).values(updated_at=utcnow()))
    return list(order_ids)


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
