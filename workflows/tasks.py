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
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import structlog
from celery.canvas import Signature

from core.settings import get_settings
from db.base import utcnow
from integrations import inbox
from orders import carrier_events, sweeper
from orders.after_intake import Then, batched, follow
from orders.intake import IntakeResult
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

    new = [r.order_id for r in results if batched(r)]
    if new:
        publish_after_commit(session, pipelines(new))
    for result in results:
        if not batched(result):
            after_intake(session, result, account_id)


def after_intake(session: Any, result: IntakeResult, account_id: int | None = None) -> None:
    """What follows an order applied by intake (``orders.after_intake``), its follow-ups
    published as tasks after commit."""
    follow(session, result, account_id, _then())


@functools.cache
def _then() -> Then:
    from workflows.pipeline import (
        after_commit,
        buy_label,
        credit_note,
        on_cancelled,
        pipeline,
        ship,
        void_unused,
    )

    return Then(pipeline=after_commit(pipeline), credit_note=after_commit(credit_note.si),
                buy_label=after_commit(buy_label.si), void_unused=void_unused,
                ship=after_commit(ship.si), cancelled=on_cancelled, refetch=_fetch)  # fmt: skip


def _fetch(session: Any, account_id: int, external_id: str) -> None:
    """The order fetched as the marketplace has it now, after commit (a delivery overtook the
    order's own, or said it changed without carrying it)."""
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
    from workflows.pipeline import (
        capture_payment,
        credit_note,
        deliver,
        pipeline,
        refund_payment,
        void_labels,
    )
    from workflows.sync import sync_slice

    yield from (process_event.si(inbox_id) for inbox_id in found.webhooks)
    yield from (app.signature(carrier_events.TASK, (i,)) for i in found.carrier_events)
    yield from (Signature(w.task_name, w.args, w.kwargs, w.options, app=app) for w in found.work)
    yield from (deliver.si(message_id) for message_id in found.effects)
    yield from (credit_note.si(order_id) for order_id in found.credits)
    yield from (pipeline(order_id) for order_id in found.orders)
    # a step its pipeline would not reach (a cancelled order's pipeline stops at once)
    steps = {"capture_payment": capture_payment, "refund_payment": refund_payment,
             "void_labels": void_labels}  # fmt: skip
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
