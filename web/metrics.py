"""What ``/metrics`` says about the whole system, read when Prometheus scrapes.

- counted by this web process: ``ordersync_webhooks_received_total{channel}`` (every delivery
  to a registered channel), ``…_rejected_total{channel, reason}`` (unknown_account,
  bad_signature, too_large) and ``…_duplicate_total{channel}``;
- read from the database at each scrape: orders by state, the ``needs_attention`` count, the
  outbox messages not yet delivered (and how many of them are parked), and the sync lag of each
  active account (now minus its poll cursor);
- read from Redis: messages waiting per queue and the age of the oldest.

The task series come from each worker's own exporter (``workflows/metrics.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, Order, OutboxMessage
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
    ("ordersync_queue_depth", "Messages waiting", ["queue"]),
    ("ordersync_queue_oldest_age_seconds", "Age of the oldest message waiting (0 when none)",
     ["queue"]),
)  # fmt: skip


class SystemCollector(Collector):
    """The gauges read at scrape time (one short read transaction, one Redis round trip per
    queue)."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The series without reading anything (the registry asks when it is registered)."""
        for name, documentation, labels in GAUGES:
            yield GaugeMetricFamily(name, documentation, labels=labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._database()
        except Exception as exc:  # a scrape still answers with what it could read
            log.warning("metrics.database_unreadable", error=type(exc).__name__)
        try:
            yield from self._queues()
        except Exception as exc:
            log.warning("metrics.redis_unreadable", error=type(exc).__name__)

    def _database(self) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        with get_sessionmaker()() as session:
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
