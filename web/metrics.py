"""What ``/metrics`` says about the whole system, read when Prometheus scrapes.

- counted by this web process: ``ordersync_webhooks_received_total{channel}`` (every delivery
  to a registered channel), ``…_rejected_total{channel, reason}`` (unknown_account,
  bad_signature, too_large) and ``…_duplicate_total{channel}``;
- read from the database at each scrape: orders by state, the ``needs_attention`` count, the
  outbox messages not yet delivered (and how many of them are parked), and the sync lag of each
  active account (now minus its poll cursor), and per account its stock listings not pushed
  yet, the age of the oldest such change and the listings whose push failed;
- read from Redis: messages waiting per queue and the age of the oldest.

The task series come from each worker's own exporter (``workflows/metrics.py``).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, Listing, Order, OutboxMessage
from db.session import get_sessionmaker
from domain.states import OrderState

__all__ = [
    "GAUGES",
    "WEBHOOKS_DUPLICATE",
    "WEBHOOKS_RECEIVED",
    "WEBHOOKS_REJECTED",
    "register",
    "scrape_registry",
]

log = structlog.get_logger(__name__)

WEBHOOKS_RECEIVED = Counter(
    "ordersync_webhooks_received", "Webhook deliveries to a registered channel", ["channel"]
)
WEBHOOKS_REJECTED = Counter(
    "ordersync_webhooks_rejected", "Webhook deliveries refused, by why", ["channel", "reason"]
)
WEBHOOKS_DUPLICATE = Counter(
    "ordersync_webhooks_duplicate", "Webhook deliveries we had stored already", ["channel"]
)


#: the gauges SystemCollector yields: (name, help, labels)
GAUGES: tuple[tuple[str, str, list[str]], ...] = (
    ("ordersync_orders", "Orders by state", ["state"]),
    ("ordersync_needs_attention", "Orders waiting for staff (a step failed for good)", []),
    ("ordersync_outbox_undelivered",
     "Outbox messages not published yet (parked: waiting for their time)", ["kind"]),
    ("ordersync_sync_lag_seconds",
     "Now minus the account's poll cursor (how far behind polling is)", ["account", "channel"]),
    ("ordersync_sync_never_polled", "1 for an active account that has no poll cursor yet",
     ["account", "channel"]),
    ("ordersync_stock_listings_dirty",
     "Listings with a stock change not pushed yet (FBA listings are never pushed)",
     ["account", "channel"]),
    ("ordersync_stock_dirty_oldest_age_seconds",
     "Age of the account's oldest unpushed stock change (0 when none)", ["account", "channel"]),
    ("ordersync_stock_listings_failed",
     "Listings whose last push failed for good or was refused (shown to staff)",
     ["account", "channel"]),
    ("ordersync_queue_depth", "Messages waiting", ["queue"]),
    ("ordersync_queue_oldest_age_seconds", "Age of the oldest message waiting (0 when none)",
     ["queue"]),
)  # fmt: skip


class SystemCollector(Collector):
    """The gauges read at scrape time (one short read transaction, one Redis round trip per
    queue). ``maker``: the database's sessions (the settings' by default); ``queues``: read
    Redis too."""

    def __init__(
        self, maker: Callable[[], Session] | None = None, *, queues: bool = True
    ) -> None:
        self._maker = maker
        self._read_queues = queues

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The series without reading anything (the registry asks when it is registered)."""
        for name, documentation, labels in GAUGES:
            yield GaugeMetricFamily(name, documentation, labels=labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._database()
        except Exception as exc:  # a scrape still answers with what it could read
            log.warning("metrics.database_unreadable", error=type(exc).__name__)
        if not self._read_queues:
            return
        try:
            yield from self._queues()
        except Exception as exc:
            log.warning("metrics.redis_unreadable", error=type(exc).__name__)

    def _database(self) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        # a read, ended with a COMMIT: a ROLLBACK drops psycopg's prepared statements
        with (self._maker or get_sessionmaker())() as session, session.begin():
            by_state = dict(
                session.execute(select(Order.state, func.count()).group_by(Order.state)).all()
            )
            undelivered = session.execute(
                select(OutboxMessage.not_before.is_not(None), func.count())
                .where(OutboxMessage.published_at.is_(None))
                .group_by(OutboxMessage.not_before.is_not(None))
            ).all()
            accounts = session.execute(
                select(ChannelAccount.name, ChannelAccount.channel, ChannelAccount.poll_cursor)
                .where(ChannelAccount.active.is_(True))
                .order_by(ChannelAccount.name)
            ).all()
            stock = session.execute(
                select(
                    ChannelAccount.name, ChannelAccount.channel,
                    func.sum(case((Listing.want_version > Listing.pushed_version, 1), else_=0)),
                    func.min(case((Listing.want_version > Listing.pushed_version,
                                   Listing.dirty_at))),
                    func.sum(case((Listing.last_error.is_not(None), 1), else_=0)),
                )
                .join(Listing, Listing.channel_account_id == ChannelAccount.id)
                .where(Listing.fulfilled_by_marketplace.is_(False))
                .group_by(ChannelAccount.name, ChannelAccount.channel)
                .order_by(ChannelAccount.name)
            ).all()  # fmt: skip
        orders = GaugeMetricFamily("ordersync_orders", "Orders by state", labels=["state"])
        for state in OrderState:
            orders.add_metric([state.value], by_state.get(state.value, 0))
        yield orders
        yield GaugeMetricFamily(
            "ordersync_needs_attention",
            "Orders waiting for staff (a step failed for good)",
            value=by_state.get(OrderState.NEEDS_ATTENTION.value, 0),
        )
        outbox = GaugeMetricFamily(
            "ordersync_outbox_undelivered",
            "Outbox messages not published yet (parked: waiting for their time)",
            labels=["kind"],
        )
        counts = {bool(parked): n for parked, n in undelivered}
        outbox.add_metric(["pending"], counts.get(False, 0))
        outbox.add_metric(["parked"], counts.get(True, 0))
        yield outbox
        lag = GaugeMetricFamily(
            "ordersync_sync_lag_seconds",
            "Now minus the account's poll cursor (how far behind polling is)",
            labels=["account", "channel"],
        )
        never = GaugeMetricFamily(
            "ordersync_sync_never_polled",
            "1 for an active account that has no poll cursor yet",
            labels=["account", "channel"],
        )
        for name, channel, cursor in accounts:
            if cursor is None:
                never.add_metric([name, channel], 1)
            else:
                lag.add_metric([name, channel], (now - cursor).total_seconds())
        yield lag
        yield never
        yield from _stock_gauges(stock, now)

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        from workflows.celery_app import app
        from workflows.metrics import queue_depths

        settings = get_settings()
        with app.connection_for_read() as connection:
            client = connection.default_channel.client
            depths = queue_depths(client, settings.queues, now=time.time())
        depth = GaugeMetricFamily("ordersync_queue_depth", "Messages waiting", labels=["queue"])
        age = GaugeMetricFamily(
            "ordersync_queue_oldest_age_seconds",
            "Age of the oldest message waiting (0 when none)",
            labels=["queue"],
        )
        for queue, (n, oldest) in depths.items():
            depth.add_metric([queue], n)
            age.add_metric([queue], oldest or 0.0)
        yield depth
        yield age


def _stock_gauges(rows: Any, now: dt.datetime) -> Iterator[GaugeMetricFamily]:
    labels = ["account", "channel"]
    dirty = GaugeMetricFamily("ordersync_stock_listings_dirty",
                              "Listings with a stock change not pushed yet (FBA listings are "
                              "never pushed)", labels=labels)  # fmt: skip
    oldest = GaugeMetricFamily("ordersync_stock_dirty_oldest_age_seconds",
                               "Age of the account's oldest unpushed stock change (0 when none)",
                               labels=labels)  # fmt: skip
    failed = GaugeMetricFamily("ordersync_stock_listings_failed",
                               "Listings whose last push failed for good or was refused (shown "
                               "to staff)", labels=labels)  # fmt: skip
    for name, channel, n_dirty, since, n_failed in rows:
        dirty.add_metric([name, channel], int(n_dirty or 0))
        age = 0.0
        if since is not None:
            if since.tzinfo is None:  # SQLite's MIN() hands back the stored text's naive time
                since = since.replace(tzinfo=dt.UTC)
            age = max(0.0, (now - since).total_seconds())
        oldest.add_metric([name, channel], age)
        failed.add_metric([name, channel], int(n_failed or 0))
    yield dirty
    yield oldest
    yield failed


_registered = False


def register() -> None:
    """Add the scrape-time gauges to the process's registry, once."""
    global _registered
    if not _registered:
        REGISTRY.register(SystemCollector())
        _registered = True


def scrape_registry() -> CollectorRegistry:
    """What ``/metrics`` serves: this process's registry; or, when several web processes share
    a port (``ordersync web --workers N``: prometheus_client's multiprocess mode), the sum of
    their counters and the scrape-time gauges, read once."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        register()
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(SystemCollector())
    return registry
