"""Redis restarted mid-run, empty (it keeps nothing on disk, like the machine's): every queued
message, chord counter and step lock is gone. Orders must not stall until a timeout sized for the
slowest step, nor wait for a person: the sweeper sees Redis came back empty and republishes what
the database says is unfinished.

Real processes: the web app, two workers, Beat, the sandbox, and a redis-server this test owns
and restarts on the same port.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Order, Payment
from tests.support.redis_server import RedisServer
from tests.support.stack import wait_until
from tests.support.world import World, fixture_order, running_world, stock_for

pytestmark = pytest.mark.slow

ORDERS = 20
QUIET_WITHIN_S = 60


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _states(world: World, shop_orders: list[str]) -> dict[str, int]:
    with world.maker() as session:
        rows = session.execute(
            select(Order.state, func.count())
            .where(Order.external_id.in_(shop_orders))
            .group_by(Order.state)
        ).all()
    return {state: count for state, count in rows}


def test_a_redis_restart_mid_run_loses_no_order_and_is_quiet_within_a_minute(
    server: RedisServer, tmp_path: Path, fixtures_dir: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    with running_world(url, server.url, tmp_path / "var", beat=True) as world:
        # given orders in flight: captures answered slowly, so most are mid-pipeline
        shop = world.account()
        world.sandbox.shopify.capture_reply_delay_s = 0.5
        ids = []
        for _ in range(ORDERS):
            payload = fixture_order(fixtures_dir, financial_status="authorized")
            stock_for(world, payload)
            world.post(shop, payload, topic="orders/create")
            ids.append(str(payload["id"]))
        wait_until(lambda: _states(world, ids).get("ready_to_ship", 0) >= 1, timeout=60,
                   what="the first order through")  # fmt: skip
        assert _states(world, ids).get("ready_to_ship", 0) < ORDERS  # still mid-run

        # when Redis dies and comes back empty
        server.stop()
        server.start()
        restarted = time.monotonic()
        world.sandbox.shopify.capture_reply_delay_s = 0.0

        # then every order is ready to ship within the bound, none waits for a person
        try:
            wait_until(lambda: _states(world, ids) == {"ready_to_ship": ORDERS},
                       timeout=QUIET_WITHIN_S + 30, what="every order ready to ship")  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {_states(world, ids)}\n{world.stack.logs()}") from None
        took = time.monotonic() - restarted
        assert took <= QUIET_WITHIN_S, f"quiet {took:.0f} s after the restart"
        with world.maker() as session:
            paid = session.scalar(
                select(func.count()).select_from(Payment).join(Order)
                .where(Order.external_id.in_(ids))
            )  # fmt: skip
        assert paid == ORDERS
        captures = [len(world.sandbox.shopify.captures_for(o)) for o in ids]
        assert captures == [1] * ORDERS
