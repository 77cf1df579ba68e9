"""A poll of 1,000 Shopify orders across pages while the webhooks for the same orders arrive
(the first version of each, and a newer one for a fifth of them, in random order, from 16
connections): every order ends once, at its newest version, whichever of the poll's page, the
old delivery or the new one came last. Real web app, workers, Redis and the Shopify simulator
over HTTP; the poll is an incremental one (the account's cursor an hour back), in pages of 250.
"""

from __future__ import annotations

import datetime as dt
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from celery import Celery
from sqlalchemy import func, select

from db.base import utcnow
from db.models import ChannelAccount, InboxEvent, Order, SyncRun
from tests.support.stack import wait_until
from tests.support.world import SECRET, World, running_world

pytestmark = pytest.mark.slow

ORDERS = 1000


def _as_utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _settled(world: World, account_id: int) -> bool:
    with world.maker() as session:
        run = session.scalar(select(SyncRun).where(SyncRun.channel_account_id == account_id))
        waiting = session.scalar(
            select(func.count()).select_from(InboxEvent).where(
                InboxEvent.channel_account_id == account_id, InboxEvent.status == "received")
        )  # fmt: skip
    return run is not None and run.status == "ok" and not waiting


def test_a_poll_racing_the_webhooks_of_its_orders_keeps_each_once_at_its_newest(
    tmp_path: Path, redis_url: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    with running_world(url, redis_url, tmp_path / "var", workers=2,
                       extra_env={"ORDERSYNC_SYNC_SLICE_PAGES": "1"}) as world:  # fmt: skip
        shop = world.account()
        sim = world.sandbox.shopify
        with world.maker() as session, session.begin():
            account = session.scalars(select(ChannelAccount).filter_by(name=shop)).one()
            account.poll_cursor = utcnow() - dt.timedelta(hours=1)  # polled an hour ago
            account_id = account.id
        created = sim.add_orders(ORDERS)
        deliveries = [sim.webhook_delivery(ext, "orders/create", SECRET) for ext in created]
        touched = created[::5]  # changed in the admin after: a newer version exists
        for ext in touched:
            sim.touch_order(ext)
        deliveries += [sim.webhook_delivery(ext, "orders/updated", SECRET) for ext in touched]
        random.Random(3).shuffle(deliveries)
        # the search is second-granular and Shopify's stamps too (an update in the same
        # second is stamped a second later): a window that ends before the last stamp would
        # leave those orders to the next poll
        latest = max(dt.datetime.fromisoformat(sim.orders[ext]["updated_at"]) for ext in created)
        wait_until(lambda: utcnow() - latest > dt.timedelta(seconds=1.1),
                   what="the second after the last change")  # fmt: skip

        # when the poll runs while every delivery arrives
        probe = Celery("probe", broker=world.redis_url)
        probe.send_task("ordersync.sync.poll_account", args=[account_id], queue="sync")
        probe.close()
        with httpx.Client(base_url=world.stack.base_url, timeout=30) as client:

            def post(delivery: tuple[dict[str, str], bytes]) -> int:
                headers, body = delivery
                return client.post(f"/webhooks/shopify/{shop}", content=body,
                                   headers=headers).status_code  # fmt: skip

            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(post, deliveries))
        assert set(statuses) == {200}

        # then the poll's pages and every delivery are applied
        wait_until(lambda: _settled(world, account_id), timeout=300,
                   what="the poll done and every delivery processed")  # fmt: skip
        with world.maker() as session:
            rows = session.execute(
                select(Order.external_id, Order.external_updated_at)
                .where(Order.channel_account_id == account_id)
            ).all()  # fmt: skip
            run = session.scalars(select(SyncRun).filter_by(channel_account_id=account_id)).one()
        newest = {ext: dt.datetime.fromisoformat(sim.orders[ext]["updated_at"]) for ext in created}

    assert sorted(r.external_id for r in rows) == sorted(created)  # every order, once
    # an order our own pipeline changed on Shopify during the poll (a capture stamps it anew)
    # moved past the poll's window: the next poll's, with no webhook of that version sent
    # (the search is second-granular: the window ends where window_to's second begins, so a
    # change stamped in that second, such as a capture just after the window closed, is the
    # next poll's)
    assert run.window_to is not None
    window_end = _as_utc(run.window_to).replace(microsecond=0)
    moved = {ext for ext, at in newest.items() if at >= window_end}
    assert len(moved) < ORDERS // 4
    assert run.orders_seen >= ORDERS - len(moved) and run.pages >= (ORDERS - len(moved)) // 250
    stale = [
        r.external_id
        for r in rows
        if r.external_id not in moved and _as_utc(r.external_updated_at) != newest[r.external_id]
    ]
    assert stale == []  # each at its newest version, the touched ones included
    assert len(set(touched) - moved) > len(touched) // 2
