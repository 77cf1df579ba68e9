"""A worker machine lost mid-run (its main process and pool SIGKILLed): what it held is
unacknowledged in Redis, which would hand it out again only after ``visibility_timeout`` (an
hour). The sweeper finds the messages no live worker holds and puts them back, so the orders
finish on the other worker within a minute, each charged once.

Real processes: the web app, two workers, Beat and the sandbox, on the embedded or machine Redis.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Order
from tests.support.stack import wait_until
from tests.support.world import World, fixture_order, running_world, stock_for

pytestmark = pytest.mark.slow

ORDERS = 8
QUIET_WITHIN_S = 60


def _states(world: World, external_ids: list[str]) -> dict[str, int]:
    with world.maker() as session:
        rows = session.execute(
            select(Order.state, func.count())
            .where(Order.external_id.in_(external_ids))
            .group_by(Order.state)
        ).all()
    return {state: count for state, count in rows}


def test_orders_held_by_a_killed_worker_finish_on_another_within_a_minute(
    tmp_path: Path, fixtures_dir: Path, redis_url: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    with running_world(url, redis_url, tmp_path / "var", beat=True) as world:
        # given captures answered slowly, so both workers hold orders in flight
        shop = world.account()
        world.sandbox.shopify.capture_reply_delay_s = 4.0
        ids = []
        for _ in range(ORDERS):
            payload = fixture_order(fixtures_dir, financial_status="authorized")
            stock_for(world, payload)
            world.post(shop, payload, topic="orders/create")
            ids.append(str(payload["id"]))
        wait_until(lambda: sum(len(world.sandbox.shopify.captures_for(o)) for o in ids) >= 2,
                   timeout=60, what="captures in flight")  # fmt: skip

        # when one worker's whole process group dies at once
        victim = next(c for c in world.stack.group.children if c.name == "worker-1")
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        killed = time.monotonic()
        world.sandbox.shopify.capture_reply_delay_s = 0.0

        # then every order is ready to ship soon after, on the worker that is left
        wait_until(lambda: _states(world, ids) == {"ready_to_ship": ORDERS},
                   timeout=QUIET_WITHIN_S + 60, what="every order ready to ship")  # fmt: skip
        took = time.monotonic() - killed
        assert took <= QUIET_WITHIN_S, f"quiet {took:.0f} s after the kill"
        shopify = world.sandbox.shopify  # its transactions: one CAPTURE per order
        assert [len(shopify.captures_for(o)) for o in ids] == [1] * ORDERS
