"""The sweeper's searches: committed work that never got done, found and marked in one
transaction; the sweep task (``workflows.tasks.sweep``) publishes what it is told after commit.

Each search reads an index of the rows still to do (``db.models``: the partial indexes'
predicates are the queries' own text), so a sweep costs the same on a long history as on a
new shop (``bench.sweep``). What is found is marked in the same transaction (an outbox row's
``published_at`` and ``attempts``, a stuck order's ``updated_at``, a key's or a sync run's
heartbeat), so the next sweep does not publish it again before its wait is over.

- **webhooks** received before the cutoff and not processed: ``process_event`` again;
- **carrier events** (tracking webhooks) received and not applied: applied again;
- **due work**: tasks in the outbox not published, parked work whose ``not_before`` has come
  and work whose own publish after commit had time to happen;
- **effects** on a marketplace still pending after their publish had time to happen, not
  published again in the last ``stuck_after_s`` (a delivery may be waiting out its retries);
- **credits**: orders whose refund's credit note was never published;
- **orders** in a pipeline state with no progress for ``stuck_after_s``: pushed on;
- **calls**: outside calls whose attempt died (``orders.recovery.unfinished_calls``);
- **runs**: sync runs still reading whose worker died (``orders.syncing.stalled_runs``).

An order with parked work (a 429 that said "in two hours") is left to it by the stuck-order and
the unfinished-call searches. After Redis came back empty (``lost``), nothing in flight can
still arrive: everything is found at once, not after the usual waits (parked work still waits
for its time: it is in the database, not lost).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Exists, exists, select, update
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import utcnow
from db.models import (
    PENDING_EFFECT,
    RECEIVED_EVENT,
    UNPUBLISHED_WORK,
    CarrierEvent,
    InboxEvent,
    Order,
    OutboxMessage,
)
from domain.states import InboxStatus, OrderState
from orders.documents import uncredited_refunds
from orders.recovery import UnfinishedCall, unfinished_calls
from orders.syncing import stalled_runs

__all__ = ["PIPELINE_STATES", "DueWork", "Found", "find"]

#: the states an order waits in for the pipeline's next step
PIPELINE_STATES = (OrderState.NEW, OrderState.RESERVED, OrderState.PAID, OrderState.DOCUMENTED)


@dataclass(frozen=True)
class DueWork:
    """A task kept in the outbox (parked, or committed to be published): published as it was
    stored (name, arguments, options, its queue)."""

    id: int
    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]


@dataclass
class Found:
    """What one sweep found, each list in the order it is to be published."""

    webhooks: list[int] = field(default_factory=list)
    carrier_events: list[int] = field(default_factory=list)
    work: list[DueWork] = field(default_factory=list)
    effects: list[int] = field(default_factory=list)
    credits: list[int] = field(default_factory=list)
    orders: list[int] = field(default_factory=list)
    calls: list[UnfinishedCall] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"inbox": len(self.webhooks), "carrier": len(self.carrier_events),
                "outbox": len(self.work), "effects": len(self.effects),
                "credits": len(self.credits), "orders": len(self.orders),
                "calls": len(self.calls), "runs": len(self.runs)}  # fmt: skip


def find(session: Session, *, at: dt.datetime, limit: int, lost: bool = False) -> Found:
    """Everything the sweep should publish again, at most ``limit`` of each kind, judged at
    ``at`` (parked work and progress; a test moves it instead of waiting), each marked as
    published now in ``session``'s transaction."""
    settings = get_settings()
    cutoff = at - dt.timedelta(seconds=0 if lost else settings.sweep_after_s)
    found = Found(
        webhooks=unprocessed_webhooks(session, limit, cutoff),
        carrier_events=unapplied_carrier_events(session, limit, cutoff),
        work=due_work(session, limit, at, cutoff),
        effects=undelivered_effects(session, limit, at, cutoff),
        credits=uncredited_refunds(session, before=cutoff, limit=limit),
        orders=stuck_orders(session, limit, at, lost=lost),
    )
    key_idle = dt.timedelta(seconds=0 if lost else settings.idempotency_lock_timeout_s)
    calls = unfinished_calls(session, idle_for=key_idle, limit=limit)
    found.calls = _not_parked(session, calls, at)
    run_idle = dt.timedelta(seconds=0 if lost else settings.task_time_limit_s)
    found.runs = stalled_runs(session, idle_for=run_idle, limit=limit)
    return found


def unprocessed_webhooks(session: Session, limit: int, cutoff: dt.datetime) -> list[int]:
    """Webhooks committed before ``cutoff`` and not processed."""
    return list(session.scalars(
        select(InboxEvent.id)
        .where(RECEIVED_EVENT, InboxEvent.received_at < cutoff)  # its partial index (db.models)
        .order_by(InboxEvent.id)
        .limit(limit)
    ))  # fmt: skip


def unapplied_carrier_events(session: Session, limit: int, cutoff: dt.datetime) -> list[int]:
    """The carrier's tracking webhooks stored and not applied (the poll would catch the parcel
    up anyway; the event is applied all the same, for its timeline row)."""
    return list(session.scalars(
        select(CarrierEvent.id)
        .where(CarrierEvent.status == InboxStatus.RECEIVED, CarrierEvent.received_at < cutoff)
        .order_by(CarrierEvent.id)
        .limit(limit)
    ))  # fmt: skip


def due_work(session: Session, limit: int, at: dt.datetime, cutoff: dt.datetime) -> list[DueWork]:
    """Tasks in the outbox not published: parked work whose time has come, and messages whose
    own publish after commit has had time to happen (committed before ``cutoff``)."""
    messages = _published(session, select(OutboxMessage).where(
        UNPUBLISHED_WORK,  # its partial index (db.models)
        (OutboxMessage.not_before <= at)
        | (OutboxMessage.not_before.is_(None) & (OutboxMessage.created_at < cutoff)),
    ), limit, at)  # fmt: skip
    return [
        DueWork(m.id, m.task_name, m.args, m.kwargs or {},
                {**(m.options or {}), **({"queue": m.queue} if m.queue else {})})
        for m in messages
    ]  # fmt: skip


def undelivered_effects(
    session: Session, limit: int, at: dt.datetime, cutoff: dt.datetime
) -> list[int]:
    """Effects on a marketplace (``orders.outbox``) committed before ``cutoff`` and still
    ``pending``, not published again in the last ``stuck_after_s``. A message that failed for
    good waits for staff."""
    again = at - dt.timedelta(seconds=get_settings().stuck_after_s)
    messages = _published(session, select(OutboxMessage).where(
        PENDING_EFFECT,  # its partial index (db.models)
        OutboxMessage.created_at < cutoff,
        OutboxMessage.published_at.is_(None) | (OutboxMessage.published_at < again),
    ), limit, at)  # fmt: skip
    return [message.id for message in messages]


def _published(session: Session, query: Any, limit: int, at: dt.datetime) -> list[OutboxMessage]:
    """The outbox rows ``query`` finds (oldest first, at most ``limit``), each marked as
    published at ``at`` once more."""
    messages = list(session.scalars(query.order_by(OutboxMessage.id).limit(limit)))
    for message in messages:
        message.published_at = at
        message.attempts += 1
    return messages


def parked_work(at: dt.datetime) -> Exists:
    """The order has parked work (``workflows.base``): still waiting for its time, or published
    less than ``stuck_after_s`` before ``at``. Nothing else pushes such an order on."""
    published_after = at - dt.timedelta(seconds=get_settings().stuck_after_s)
    return exists().where(
        OutboxMessage.order_id == Order.id,
        OutboxMessage.kind.is_(None),  # parked work, not an effect on the marketplace
        OutboxMessage.published_at.is_(None) | (OutboxMessage.published_at > published_after),
    )


def _not_parked(
    session: Session, calls: list[UnfinishedCall], at: dt.datetime
) -> list[UnfinishedCall]:
    """The calls whose order has no parked work: a call that waits for its time waits."""
    if not calls:
        return []
    parked = set(session.scalars(
        select(Order.id).where(Order.id.in_({c.order_id for c in calls}), parked_work(at))
    ))  # fmt: skip
    return [call for call in calls if call.order_id not in parked]


def stuck_orders(session: Session, limit: int, at: dt.datetime, *, lost: bool = False) -> list[int]:
    """Orders in a pipeline state with no progress for ``stuck_after_s`` (or any, ``lost``),
    without parked work, oldest first; each one's ``updated_at`` moves to now, so it is pushed
    on again at most once per ``stuck_after_s`` (every step skips what is done, so pushing it
    is safe however often)."""
    cutoff = at - dt.timedelta(seconds=0 if lost else get_settings().stuck_after_s)
    order_ids = list(session.scalars(
        select(Order.id)
        .where(Order.state.in_(PIPELINE_STATES), Order.updated_at < cutoff, ~parked_work(at))
        .order_by(Order.updated_at)
        .limit(limit)
    ))  # fmt: skip
    if order_ids:
        session.execute(update(Order).where(Order.id.in_(order_ids)).values(updated_at=utcnow()))
    return order_ids
