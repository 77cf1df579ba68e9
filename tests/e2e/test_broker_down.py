"""A webhook that arrives while the broker (Redis) is down is still accepted: it is committed
to the inbox and answered 200 at once, and once Redis is back the sweeper publishes it and the
order is made. Real processes: the web app, a worker, Beat, the sandbox, and a redis-server
this test owns, stops and starts again (empty)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import ChannelAccount, InboxEvent
from domain.states import InboxStatus
from tests.support.redis_server import RedisServer
from tests.support.world import fixture_order, running_world, stock_for

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_webhook_during_a_broker_outage_is_answered_at_once_and_processed_after_it(
    server: RedisServer, tmp_path: Path, fixtures_dir: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    extra = {"ORDERSYNC_SWEEP_AFTER_S": "4"}  # the sweeper runs every few seconds
    with running_world(url, server.url, tmp_path / "var", workers=1, beat=True,
                       extra_env=extra) as world:  # fmt: skip
        shop = world.account()
        payload = fixture_order(fixtures_dir)
        stock_for(world, payload)

        # given: Redis is down
        server.stop()

        # when: the webhook arrives
        started = time.monotonic()
        world.post(shop, payload, topic="orders/create")  # asserts the 200
        answered_in = time.monotonic() - started

        # then: it was answered well within Shopify's 5 s, and is in the inbox, not lost
        assert answered_in < 2.0, f"answered in {answered_in:.1f} s"
        with world.maker() as session:
            statuses = session.scalars(
                select(InboxEvent.status).join(ChannelAccount).where(ChannelAccount.name == shop)
            ).all()
        assert statuses == [InboxStatus.RECEIVED]

        # and once Redis is back (empty), the sweeper publishes it and the order is made
        server.start()
        world.wait_state(shop, str(payload["id"]), "ready_to_ship", timeout=90)
