"""A first sync killed at random pages resumes from its last committed page: real worker
processes SIGKILLed mid-run (a new one started each time), Beat's sweeper, Redis, the Shopify
simulator over real HTTP. A first sync reads Shopify's bulk export (its operation started, asked
about, then its JSONL result in pages of 250 orders), so a kill may land while the export runs
or between pages of its result. The run ends with every order once, one export, and the cursor
at its window's end. On PostgreSQL the result is read in two lanes (byte ranges of the file, a
slice of each at once on the worker's two processes), and a kill takes both.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
from functools import partial
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select

from db.base import utcnow
from db.models import ChannelAccount, Order, SyncRun
from ordersync.supervisor import Child
from tests.support.stack import wait_until
from tests.support.world import World, running_world

pytestmark = pytest.mark.slow

#: SQLite: the export started, one question while it runs, then 4 pages of 250 orders; a page
#: a slice (a slice resumed after a kill may find the export done at its first question: one
#: fewer). PostgreSQL: 2,400 orders (about 4.8 MB, two lanes of ``LANE_MIN_BYTES`` or more),
#: the same two pages, then 5 pages in each lane
CASES = [
    pytest.param("sqlite", 1000, 6, id="sqlite"),
    pytest.param("postgres", 2400, 12, id="postgres-lanes", marks=pytest.mark.postgres),
]


def _run(world: World, account_id: int) -> SyncRun | None:
    with world.maker() as session:
        return session.scalar(select(SyncRun).where(SyncRun.channel_account_id == account_id))


def _at_page(world: World, account_id: int, page: int) -> bool:
    run = _run(world, account_id)
    return run is not None and run.pages >= page


def _kill(world: World, worker: Child) -> None:
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()


@pytest.mark.parametrize(("database", "orders", "pages"), CASES)
def test_a_first_sync_killed_at_random_pages_resumes_and_ends_with_every_order_once(
    tmp_path: Path, redis_url: str, request: pytest.FixtureRequest, database: str, orders: int,
    pages: int,
) -> None:
    seed = 1
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    settings = {"ORDERSYNC_SYNC_SLICE_PAGES": "1", "ORDERSYNC_SWEEP_AFTER_S": "4",
                "ORDERSYNC_SYNC_LANES": "2"}  # fmt: skip
    with running_world(url, redis_url, tmp_path / "var", workers=1, beat=True,
                       extra_env=settings) as world:  # fmt: skip
        # given: a Shopify account with a history of ORDERS orders, never polled
        spec = world.sandbox.accounts("unused")["shopify"]
        created = set(world.sandbox.shopify.add_orders(orders))
        # the marketplace's search is second-granular: a window that ends in the second the
        # orders were made would leave them to the next poll. The account exists only after
        # that second, so whichever poll starts the first sync (ours below, or Beat's
        # ``poll_due``, which may find the new account first) reads every order
        made = utcnow()
        wait_until(lambda: utcnow() - made > dt.timedelta(seconds=1.1), what="the next second")
        with world.maker() as session, session.begin():
            account = ChannelAccount(name="big-shop", channel="shopify", shop=spec.shop,
                                     api_base_url=spec.api_base_url,
                                     credentials=spec.credentials)  # fmt: skip
            session.add(account)
            session.flush()
            account_id = account.id
        kills = sorted(random.Random(seed).sample(range(1, pages), 2))

        # when: the first poll runs, and its worker is killed as the run reaches random pages
        probe = Celery("probe", broker=world.redis_url)
        probe.send_task("ordersync.sync.poll_account", args=[account_id], queue="sync")
        probe.close()
        worker = next(c for c in world.stack.group.children if c.name == "worker-1")
        for n, page in enumerate(kills):
            wait_until(partial(_at_page, world, account_id, page), timeout=120,
                       what=f"the run at page {page}")  # fmt: skip
            _kill(world, worker)
            worker = world.stack.group.start(f"worker-again-{n}", ["worker", "--concurrency", "2"])

        # then: the run finishes (the redelivered or swept slice goes on from its last page)
        def finished() -> SyncRun | None:
            run = _run(world, account_id)
            return run if run is not None and run.status == "ok" else None

        run = wait_until(finished, timeout=180, what="the run finished")
        assert run.pages >= pages - 1 and run.page_token is None
        with world.maker() as session:
            ids = session.scalars(
                select(Order.external_id).where(Order.channel_account_id == account_id)
            ).all()
            runs = session.scalar(select(func.count()).select_from(SyncRun)
                                  .where(SyncRun.channel_account_id == account_id))  # fmt: skip
            stored = session.get_one(ChannelAccount, account_id)
        assert sorted(ids) == sorted(created)  # every order, once
        assert runs == 1
        assert stored.poll_cursor == run.window_to
        requests = [op for op, _ in world.sandbox.shopify.request_log]
        assert requests.count("BulkOperationRunQuery") == 1
        if database == "postgres":  # the second lane was asked from the byte before its range
            from integrations.shopify.connector import LANE_MIN_BYTES, lane_bounds

            [operation] = world.sandbox.shopify.bulk_operations.values()
            bounds = lane_bounds(int(operation["fileSize"]), 2, LANE_MIN_BYTES)
            assert len(bounds) == 2
            ranges = [asked for _, asked in world.sandbox.shopify.bulk_downloads]
            assert f"bytes={bounds[1][0] - 1}-" in ranges
