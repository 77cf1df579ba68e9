"""A Redis outage while orders run is a blip, not a failure (issue "Faults found from the
outside", finding 2).

Real web server, two real Celery workers and Beat (the sweeper) on a real ``redis-server`` of
the test's own, which the test stops and starts again on the same port while a batch of orders
is in the pipeline (the sandbox carrier answers slowly, so steps are mid-flight). Nothing is
persisted, as with the embedded Redis: the queues, the chord counters and the step locks are
lost. Every order must still reach ``ready_to_ship`` and none may go to ``needs_attention``:
the lock's ``redis.exceptions.ConnectionError`` is retried, a retry the broker cannot take
waits in the database, and the sweeper pushes on what the lost queues held.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import ChannelAccount, Order
from tests.support.redis_server import RedisServer
from tests.support.stack import wait_until
from tests.support.world import World, fixture_order, module_database_url, running_world, stock_for

pytestmark = pytest.mark.slow

ORDERS = 12


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world_and_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[World, RedisServer]]:
    var_dir = tmp_path_factory.mktemp("redis-outage")
    server = RedisServer(tmp_path_factory.mktemp("restarted-redis"))  # each world its own
    server.start()
    url = module_database_url(request, var_dir, request.param)
    # the sweeper runs every 5 s; an order with no progress for 10 s is pushed on
    env = {"ORDERSYNC_SWEEP_AFTER_S": "2", "ORDERSYNC_STUCK_AFTER_S": "10"}
    try:
        with running_world(url, server.url, var_dir, beat=True, extra_env=env) as world:
            yield world, server
    finally:
        server.stop()


def test_orders_in_flight_through_a_three_second_redis_outage_never_need_attention(
    world_and_redis: tuple[World, RedisServer], fixtures_dir: Path
) -> None:
    world, server = world_and_redis
    # given a batch of orders in the pipeline, each step at the carrier taking a while
    shop = world.account()
    payloads = [fixture_order(fixtures_dir) for _ in range(ORDERS)]
    for payload in payloads:
        stock_for(world, payload)
    world.sandbox.carrier.knobs.latency_s = 0.5
    try:
        for payload in payloads:
            world.post(shop, payload, topic="orders/create")
        wait_until(lambda: _count(world, shop, "paid", "documented", "ready_to_ship") >= 2,
                   timeout=60, what="orders under way")  # fmt: skip
        assert _count(world, shop, "ready_to_ship") < ORDERS, "the restart must meet work"

        # when Redis goes away for three seconds (until the workers have noticed) and comes
        # back empty
        server.stop()
        went_down = time.monotonic()
        wait_until(lambda: time.monotonic() - went_down >= 3.0
                   and "Connection to broker lost" in _worker_logs(world),
                   timeout=30, what="the workers noticing the outage")  # fmt: skip
        server.start()
    finally:
        world.sandbox.carrier.knobs.latency_s = 0.0

    # then every order reaches ready_to_ship, and none went to needs_attention on the way
    def settled() -> bool:
        assert _count(world, shop, "needs_attention") == 0, _attention(world, shop)
        return _count(world, shop, "ready_to_ship") == ORDERS

    try:
        wait_until(settled, timeout=120, what=f"{ORDERS} orders ready to ship")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{world.stack.logs()}") from None


def _worker_logs(world: World) -> str:
    return "".join(
        child.log_path.read_text(errors="replace")
        for child in world.stack.group.children
        if child.name.startswith("worker") and child.log_path and child.log_path.exists()
    )


def _count(world: World, shop: str, *states: str) -> int:
    with world.maker() as session:
        return session.scalar(
            select(func.count()).select_from(Order).join(ChannelAccount)
            .where(ChannelAccount.name == shop, Order.state.in_(states))
        ) or 0  # fmt: skip


def _attention(world: World, shop: str) -> list[tuple[str | None, str | None]]:
    with world.maker() as session:
        rows = session.execute(
            select(Order.failed_step, Order.last_error).join(ChannelAccount)
            .where(ChannelAccount.name == shop, Order.state == "needs_attention")
        ).all()  # fmt: skip
    return [(step, error) for step, error in rows]
