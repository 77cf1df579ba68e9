"""Delays never outlive the broker: a step told to wait two hours waits in the database.

Real web server, real Celery workers, real Redis and the sandbox carrier over real HTTP. The
carrier answers the label request ``429`` with ``Retry-After: 7200``: the step must not sleep,
no message may sit in Redis with a long ETA (it would be redelivered after the visibility
timeout), the work is parked in ``outbox_messages`` until ``not_before``, neither the
stuck-order sweep nor the sweep of unfinished outside calls may push the order before then, and
a sweep past ``not_before`` finishes the order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import select

from db.models import Label, Order, OrderEvent, OutboxMessage, Shipment
from sandbox.knobs import Knobs
from tests.support.stack import wait_until
from tests.support.world import World, fixture_order, module_database_url, running_world, stock_for

pytestmark = pytest.mark.slow


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[World]:
    var_dir = tmp_path_factory.mktemp("parking")
    url = module_database_url(request, var_dir, request.param)
    # an unfinished outside call is run again after 1 s without an owner: the label key the
    # 429 left unfinished would be, were the order's parked work not respected
    env = {"ORDERSYNC_IDEMPOTENCY_LOCK_TIMEOUT_S": "1"}
    with running_world(url, redis_url, var_dir, extra_env=env) as world:
        yield world


def _sweep(world: World, now: dt.datetime) -> None:
    """Run the sweeper in a real worker as if the clock said ``now``, and wait until it and
    whatever it published have run."""
    probe = Celery("probe", broker=world.redis_url)
    try:
        probe.send_task("ordersync.maintenance.sweep", kwargs={"now": now.isoformat()},
                        queue="intake")  # fmt: skip
    finally:
        probe.close()
    world.wait_idle()


def _parked(world: World, order_id: int) -> list[OutboxMessage]:
    with world.maker() as session:
        return list(
            session.scalars(select(OutboxMessage).where(OutboxMessage.order_id == order_id))
        )


def _broker_holds_nothing(world: World) -> None:
    """No message queued, and none held unacknowledged (where a countdown would wait)."""
    client = redis.Redis.from_url(world.redis_url)
    try:
        queues = ("intake", "orders", "sync", "documents", "outbound")
        assert {q: client.llen(q) for q in queues} == dict.fromkeys(queues, 0)
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    finally:
        client.close()
    probe = Celery("probe", broker=world.redis_url)
    try:
        scheduled = probe.control.inspect(timeout=1).scheduled() or {}
        assert scheduled and all(tasks == [] for tasks in scheduled.values()), scheduled
    finally:
        probe.close()


def test_a_two_hour_retry_after_parks_the_step_until_then_and_a_later_sweep_finishes_it(
    world: World, fixtures_dir: Path
) -> None:
    # given a carrier that answers the next label request 429, Retry-After: two hours
    carrier_knobs = world.sandbox.carrier.knobs
    world.sandbox.carrier.knobs = Knobs(throttle_next=1, retry_after="7200")
    try:
        shop = world.account()
        payload = fixture_order(fixtures_dir)
        stock_for(world, payload)
        before = dt.datetime.now(dt.UTC)

        # when the order runs into it
        world.post(shop, payload, topic="orders/create")
        order = wait_until(lambda: world.order(shop, str(payload["id"])), what="order stored")
        (parked,) = wait_until(lambda: _parked(world, order.id), what="parked label")
        world.wait_idle()
    finally:
        world.sandbox.carrier.knobs = carrier_knobs

    # then the carrier was asked once, the work waits in the database for two hours, and
    # nothing waits in a worker or in Redis
    assert world.sandbox.carrier.knobs is carrier_knobs
    assert parked.task_name == "ordersync.outbound.buy_label" and parked.args == [order.id]
    assert parked.published_at is None and parked.not_before is not None
    expected = before + dt.timedelta(seconds=7200)
    assert expected <= parked.not_before <= expected + dt.timedelta(seconds=60)
    assert parked.options is not None and parked.options["retries"] == 1
    assert parked.options["chord"], "the chord's body (mark_ready_to_ship) goes with it"
    _broker_holds_nothing(world)
    stuck = world.order(shop, str(payload["id"]))
    assert stuck is not None and stuck.state == "paid"
    with world.maker() as session:
        waiting = session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order.id, OrderEvent.kind == "waiting")
        ).one()
    assert waiting.detail["step"] == "buy_label" and "RateLimited" in waiting.detail["reason"]
    assert waiting.detail["until"] == parked.not_before.isoformat()
    assert f"label:{order.id}" not in world.sandbox.carrier.labels

    # when the sweeper runs before the time: now (after the label key counts as abandoned),
    # and after the order counts as stuck
    wait_until(lambda: dt.datetime.now(dt.UTC) > parked.created_at + dt.timedelta(seconds=2),
               timeout=10, what="the label key idle past its lock timeout")  # fmt: skip
    _sweep(world, dt.datetime.now(dt.UTC))
    _sweep(world, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=601))

    # then it published nothing and did not push the order past its park
    (still,) = _parked(world, order.id)
    assert still.published_at is None
    again = world.order(shop, str(payload["id"]))
    assert again is not None and again.state == "paid"
    assert f"label:{order.id}" not in world.sandbox.carrier.labels

    # when it runs once the time has come
    _sweep(world, parked.not_before + dt.timedelta(seconds=1))

    # then the parked retry is published once and the order completes, with one label
    done = world.wait_state(shop, str(payload["id"]), "ready_to_ship")
    (published,) = _parked(world, order.id)
    assert published.published_at is not None and published.attempts == 1
    with world.maker() as session:
        labels = session.scalars(
            select(Label).join(Shipment).where(Shipment.order_id == done.id)
        ).all()
        kinds = session.scalars(select(OrderEvent.kind).where(OrderEvent.order_id == done.id)).all()
        state = session.scalar(select(Order.state).where(Order.id == done.id))
    assert len(labels) == 1 and state == "ready_to_ship"
    assert f"label:{order.id}" in world.sandbox.carrier.labels
    assert kinds.count("waiting") == 1
