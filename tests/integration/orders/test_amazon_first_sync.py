"""An Amazon seller's first sync of 10,000 orders at Amazon's documented rates (``getOrders``
one a minute after a burst of 20, ``getOrderItems`` one every two seconds after 30): about
5.6 hours of Amazon's time, far past any task's time limit. It runs as slices (pages until
``SYNC_SLICE_S`` has passed), each in a new connector as a new worker would build it, some of
them crashing mid-page; every slice stays well inside the task's hard limit, each committed page
is kept, and the run ends with every order once. Time is a fake clock shared by the simulator,
the rate limiter and the client's sleeps (the waits are counted, not spent); the HTTP is real
(the simulator on loopback), the database real (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.settings import Settings
from db.models import ChannelAccount, Order, SyncRun
from integrations.amazon.connector import AmazonConnector
from integrations.base import AccountConfig, ConnectorSeams
from integrations.ratelimit import MemoryRateLimiter
from orders.intake import IntakeResult
from orders.syncing import run_slice, start_run
from sandbox.amazon import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_MARKETPLACE_ID,
    SANDBOX_REFRESH_TOKEN,
    AmazonSimulator,
)
from tests.support.fake_time import FakeTime
from tests.support.servers import serve_app
from tests.support.shop import Shop

pytestmark = pytest.mark.slow

ORDERS = 10_000
SLICE_S = Settings().sync_slice_s  # the default slice, as workers run it
HARD_LIMIT_S = Settings().task_time_limit_s


class Crash(Exception):
    """The worker died mid-page (what a SIGKILL leaves: the page's transaction never commits)."""


def _credentials(base: str) -> dict[str, object]:
    return {"refresh_token": SANDBOX_REFRESH_TOKEN, "client_id": SANDBOX_CLIENT_ID,
            "client_secret": SANDBOX_CLIENT_SECRET, "lwa_url": base,
            "marketplace_ids": [SANDBOX_MARKETPLACE_ID]}  # fmt: skip


def _dies_mid_page(connector: AmazonConnector, *, after_items: int) -> None:
    """The connector's worker dies after ``after_items`` getOrderItems calls."""
    items = connector.client.all_order_items
    calls = 0

    def dying(order_id: str) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls > after_items:
            raise Crash(order_id)
        return items(order_id)

    connector.client.all_order_items = dying  # type: ignore[method-assign]


def test_a_first_sync_of_10000_orders_at_the_documented_rates_completes_in_slices(
    shop: Shop,
) -> None:
    fake = FakeTime(start=time.time())
    sim = AmazonSimulator(seed=11, pending_ratio=0.0, clock=fake.time)  # documented limits
    created = set(sim.add_orders(ORDERS))
    fake.sleep(180)  # Amazon answers only for what is at least two minutes old
    app = FastAPI()
    app.include_router(sim.build_router(), prefix="/amazon")

    def now() -> dt.datetime:
        return dt.datetime.fromtimestamp(fake.now, dt.UTC)

    with serve_app(app) as served:
        base = f"{served}/amazon"
        with shop.transaction() as session:
            account = ChannelAccount(name="big-seller", channel="amazon", shop="amazon",
                                     api_base_url=base, credentials=_credentials(base))  # fmt: skip
            session.add(account)
            session.flush()
            account_id = account.id
            run_id = start_run(session, account_id, "poll", window_from=now() - dt.timedelta(
                days=30), window_to=now())  # fmt: skip

        def after(session: Session, results: Sequence[IntakeResult], account_id: int) -> None:
            pass  # the pipeline is not this test's

        slices: list[float] = []
        crashes = 0
        while True:
            # a new worker: its own connector, limiter and tokens (what a restart leaves)
            connector = AmazonConnector(
                AccountConfig(name="big-seller", channel="amazon", api_base_url=base,
                              credentials=_credentials(base)),
                ConnectorSeams(sleep=fake.sleep, clock=now,
                               limiter=MemoryRateLimiter(clock=fake.clock)),
            )  # fmt: skip
            if len(slices) % 4 == 3:  # every fourth worker dies in the middle of its page
                _dies_mid_page(connector, after_items=50)
            began = fake.clock()
            try:
                outcome = run_slice(shop.transaction, run_id, connector, after,
                                    max_pages=Settings().sync_slice_pages, max_seconds=SLICE_S,
                                    clock=fake.clock)  # fmt: skip
            except Crash:
                crashes += 1
                outcome = None
            finally:
                connector.close()
            slices.append(fake.clock() - began)
            if outcome is not None and outcome.status == "ok":
                break
            assert len(slices) < 200, "the run does not progress"

    # every order once, the run finished with its cursor where its window ended
    with shop.maker() as session:
        ids = session.scalars(select(Order.external_id)
                              .where(Order.channel_account_id == account_id)).all()  # fmt: skip
        runs = session.scalar(select(func.count()).select_from(SyncRun)
                              .where(SyncRun.channel_account_id == account_id))  # fmt: skip
        run = session.get_one(SyncRun, run_id)
        stored = session.get_one(ChannelAccount, account_id)
    assert len(ids) == len(set(ids)) == ORDERS and set(ids) == created
    assert runs == 1 and run.status == "ok" and run.page_token is None
    assert stored.poll_cursor == run.window_to
    # Amazon's documented pace: one getOrderItems every 2 s after the burst of 30 (the pages
    # a crash lost are asked again)
    total = sum(slices)
    assert total >= (ORDERS - 30) / 0.5
    # no slice near the task's hard limit: a slice ends after the page that passed SLICE_S
    # (a page of 100 orders is about 200 s at 0.5/s)
    assert max(slices) < HARD_LIMIT_S * 0.75, max(slices)
    # a page a slice, and each crashed slice's page read again by the next
    assert crashes >= 20 and len(slices) == ORDERS / 100 + crashes
