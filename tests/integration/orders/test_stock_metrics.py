"""Stock metrics: what a flush did (workers' counters) and what is still to push (the web's
scrape-time gauges), read back with prometheus_client's own parser, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from db.models import Listing
from orders import stock, stock_push
from tests.integration.orders.test_stock_push import FakeChannel, _listings
from tests.support.shop import Shop
from web.metrics import SystemCollector
from workflows.metrics import count_check, count_flush

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _counted() -> Samples:
    return _parse(generate_latest(REGISTRY))


def _gauges(shop: Shop) -> Samples:
    registry = CollectorRegistry()
    registry.register(SystemCollector(shop.maker, queues=False))
    return _parse(generate_latest(registry))


def _delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_flush_is_counted_by_outcome_and_what_is_left_dirty_is_a_gauge(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workflows.stock

    monkeypatch.setattr(workflows.stock, "schedule_flush", lambda ids: None)  # no broker here
    _listings(shop, ["OK", "EDITED", "GONE", "LATER"])
    with shop.transaction() as session:
        for sku in ("OK", "EDITED", "GONE", "LATER"):
            stock.set_on_hand(session, sku, 5, actor="test")
    # LATER changes after the flush starts: it is the next window's, left dirty
    channel = FakeChannel(["OK", "EDITED", "LATER"], batch=10)  # GONE is not listed there
    channel.shown["EDITED"] = 9  # edited in the channel's admin: the compare-and-set sees it
    with shop.transaction() as session:
        session.execute(update(Listing).where(Listing.sku == "EDITED").values(last_pushed_qty=0))
        session.execute(update(Listing).where(Listing.sku == "LATER").values(
            dirty_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)))  # fmt: skip
    key = (("account", "shop"), ("channel", "shopify"))
    assert _gauges(shop)[("ordersync_stock_listings_dirty", key)] == 4

    before = _counted()
    flushed = stock_push.FlushResult()
    stock_push.flush(shop.transaction, shop.account.id, channel, owner="t", flushed=flushed,
                     clock=lambda: dt.datetime.now(dt.UTC))  # fmt: skip
    count_flush("shopify", flushed)
    count_check("shopify", 2)
    after = _counted()

    pushes = "ordersync_stock_pushes_total"
    assert _delta(after, before, pushes, channel="shopify", outcome="applied") == 2  # OK, EDITED
    assert _delta(after, before, pushes, channel="shopify", outcome="refused") == 1  # GONE
    assert _delta(after, before, pushes, channel="shopify", outcome="drifted") == 1  # EDITED
    drift = "ordersync_stock_drift_found_total"
    assert _delta(after, before, drift, channel="shopify", found_by="push") == 1
    assert _delta(after, before, drift, channel="shopify", found_by="nightly") == 2
    calls = "ordersync_stock_push_calls_total"
    assert _delta(after, before, calls, channel="shopify", kind="call") == flushed.calls == 2

    gauges = _gauges(shop)
    assert gauges[("ordersync_stock_listings_dirty", key)] == 1  # LATER, the next window's
    assert gauges[("ordersync_stock_listings_failed", key)] == 1  # GONE, refused
    assert gauges[("ordersync_stock_dirty_oldest_age_seconds", key)] == 0  # not yet

    with shop.transaction() as session:  # ten minutes on, still not pushed
        session.execute(update(Listing).where(Listing.sku == "LATER").values(
            dirty_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)))  # fmt: skip
    age = _gauges(shop)[("ordersync_stock_dirty_oldest_age_seconds", key)]
    assert 600 <= age < 660
