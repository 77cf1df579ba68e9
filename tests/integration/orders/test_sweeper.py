"""orders.sweeper: what the sweep publishes again, found once per wait, marked in its own
transaction; parked work waits for its time; after Redis lost its data, nothing waits."""

from __future__ import annotations

import datetime as dt
import uuid

from db.base import utcnow
from db.models import IdempotencyKey, InboxEvent, Order, OutboxMessage
from domain.states import InboxStatus, OrderState
from orders import sweeper
from orders.recovery import UnfinishedCall
from tests.support.shop import Shop

S = OrderState
MINUTE = dt.timedelta(minutes=1)


def _find(shop: Shop, at: dt.datetime, *, lost: bool = False) -> sweeper.Found:
    with shop.transaction() as session:
        return sweeper.find(session, at=at, limit=500, lost=lost)


def _webhook(shop: Shop, received_at: dt.datetime, status: str = InboxStatus.RECEIVED) -> int:
    with shop.transaction() as session:
        event = InboxEvent(channel_account_id=shop.account.id, channel="shopify",
                           topic="orders/create", dedupe_key=uuid.uuid4().hex,
                           body=b"{}", status=status, received_at=received_at)  # fmt: skip
        session.add(event)
        session.flush()
        return event.id


def _message(shop: Shop, **fields: object) -> int:
    with shop.transaction() as session:
        message = OutboxMessage(task_name="ordersync.orders.reserve_stock", **fields)
        session.add(message)
        session.flush()
        return message.id


def _stale(shop: Shop, order_id: int, at: dt.datetime) -> None:
    with shop.transaction() as session:
        session.get_one(Order, order_id).updated_at = at


def test_a_webhook_not_processed_after_the_wait_is_found_and_not_a_fresh_or_done_one(
    shop: Shop,
) -> None:
    now = utcnow()
    old = _webhook(shop, now - 2 * MINUTE)
    _webhook(shop, now - 2 * MINUTE, status=InboxStatus.PROCESSED)
    fresh = _webhook(shop, now)  # its own publish may still be on the way

    assert _find(shop, now).webhooks == [old]
    assert _find(shop, utcnow(), lost=True).webhooks == [old, fresh]  # nothing on the way


def test_parked_work_is_published_once_its_time_has_come_as_it_was_stored(shop: Shop) -> None:
    now = utcnow()
    order_id = shop.order(S.RESERVED)
    parked = _message(shop, args=[order_id], options={"task_id": "t-1", "retries": 3},
                      queue="orders", order_id=order_id, not_before=now + MINUTE,
                      reason="retry after")  # fmt: skip

    assert _find(shop, now).work == []
    assert _find(shop, now, lost=True).work == []  # an empty Redis does not make it due
    (due,) = _find(shop, now + MINUTE).work
    assert due == sweeper.DueWork(parked, "ordersync.orders.reserve_stock", [order_id], {},
                                  {"task_id": "t-1", "retries": 3, "queue": "orders"})  # fmt: skip
    message = shop.rows(OutboxMessage, id=parked)[0]
    assert (message.published_at, message.attempts) == (now + MINUTE, 1)
    assert _find(shop, now + 2 * MINUTE).work == []  # published: not again


def test_a_pending_effect_is_published_again_once_per_stuck_wait(shop: Shop) -> None:
    now = utcnow()
    effect = _message(shop, kind="fulfilment", status="pending", idempotency_key="fulfill:1:s1",
                      created_at=now - 2 * MINUTE)  # fmt: skip
    _message(shop, kind="fulfilment", status="delivered", idempotency_key="fulfill:2:s2",
             created_at=now - 2 * MINUTE)  # fmt: skip

    assert _find(shop, now).effects == [effect]
    assert _find(shop, now + MINUTE).effects == []  # its delivery may be waiting out retries
    assert _find(shop, now + 11 * MINUTE).effects == [effect]  # stuck_after_s (600 s) later
    assert shop.rows(OutboxMessage, id=effect)[0].attempts == 2


def test_an_order_without_progress_is_pushed_on_once_per_wait_unless_its_work_is_parked(
    shop: Shop,
) -> None:
    now = utcnow()
    stuck, waiting, done = shop.order(S.PAID), shop.order(S.PAID), shop.order(S.READY_TO_SHIP)
    fresh = shop.order(S.RESERVED)
    for order_id in (stuck, waiting, done):
        _stale(shop, order_id, now - 11 * MINUTE)
    _message(shop, order_id=waiting, not_before=now + MINUTE, reason="retry after")

    assert _find(shop, now).orders == [stuck]
    assert shop.get(stuck).updated_at > now - MINUTE  # moved to now: not pushed again at once
    assert _find(shop, now).orders == []
    assert set(_find(shop, utcnow(), lost=True).orders) == {stuck, fresh}


def test_an_outside_call_whose_attempt_died_runs_again_unless_its_order_waits(
    shop: Shop,
) -> None:
    now = utcnow()
    dead, waiting = shop.order(S.RESERVED), shop.order(S.RESERVED)
    with shop.transaction() as session:
        for order_id in (dead, waiting):
            session.add(IdempotencyKey(key=f"capture:{order_id}", request_hash="h",
                                       recovery_point="started",
                                       locked_at=now - 2 * MINUTE))  # fmt: skip
    _message(shop, order_id=waiting, not_before=now + MINUTE, reason="retry after")

    assert _find(shop, now).calls == [UnfinishedCall("capture_payment", dead, f"capture:{dead}")]
    assert _find(shop, now).calls == []  # marked as run now: once per lock timeout


def test_counts_name_every_kind(shop: Shop) -> None:
    now = utcnow()
    _webhook(shop, now - 2 * MINUTE)
    counts = _find(shop, now).counts()
    assert counts == {"inbox": 1, "carrier": 0, "outbox": 0, "effects": 0, "credits": 0,
                      "orders": 0, "calls": 0, "runs": 0}  # fmt: skip
