"""The sweeper's cost against the size of the history: a sweep on a database holding N finished
orders, against the same sweep on the same database empty (the baseline, measured first).

The sweeper runs every ``sweep_after_s / 2`` (30 s by default) on one worker and looks for the
few rows still to do: inbox and carrier events not processed, outbox messages not published,
pending effects on a marketplace, orders with no progress, idempotency keys whose call died,
sync runs whose worker died, refunds without their credit note. None of that grows with the
history, so neither should a sweep: the goal is a sweep at N orders within 2 x the empty one.

Set-up: a scratch PostgreSQL database (SQLite, said so, when none answers), migrated; the
embedded Redis (the task asks it whether Redis lost its data, and restores orphaned messages).
The history is what N delivered orders leave behind: an invoice, two finished idempotency keys,
one delivered fulfilment effect and one processed webhook each, a finished sync run per ten orders,
an old credited refund per thirty (``seed_history``, which the planner test
``tests/integration/test_sweeper_indexes.py`` uses too). Each phase runs one sweep to warm up
(the first after an empty Redis republishes everything at once), then ``--sweeps`` sweeps of the
real task (``ordersync.maintenance.sweep``, run in this process); the figure is their median.

``python -m bench.sweep [--orders 300000] [--sweeps 20] [--database-url URL | --sqlite] [--json]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.backfill import scratch_database
from bench.pipeline_throughput import _log

__all__ = ["RATIO_GOAL", "main", "run", "seed_history"]

RATIO_GOAL = 2.0
_BATCH = 20_000


def _batches(rows: Sequence[dict[str, Any]]) -> list[Sequence[dict[str, Any]]]:
    return [rows[i : i + _BATCH] for i in range(0, len(rows), _BATCH)]


def _insert(conn: sa.Connection, sql: str, rows: Sequence[dict[str, Any]]) -> None:
    statement = sa.text(sql)
    for batch in _batches(rows):
        conn.execute(statement, batch)


def seed_history(conn: sa.Connection, orders: int) -> None:
    """What ``orders`` delivered orders leave behind, a month old (see the module docstring);
    then ``ANALYZE``, as autovacuum would have by then."""
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    conn.execute(sa.text(
        "INSERT INTO channel_accounts (name, channel, shop, credentials, rate_limits, active) "
        "VALUES ('shop', 'shopify', 'shop.test', '{}', '{}', true)"))  # fmt: skip
    account = conn.execute(sa.text("SELECT max(id) FROM channel_accounts")).scalar_one()
    _insert(conn,
        "INSERT INTO orders (channel_account_id, channel, external_id, state, currency, "
        "subtotal, tax_total, shipping_total, discount_total, total, "
        "payment_collected_by_marketplace, external_updated_at, raw, version, attempts, "
        "created_at, updated_at) VALUES (:a, 'shopify', :e, 'delivered', 'EUR', 10, 0, 0, 0, "
        "10, false, :at, '{}', 1, 0, :at, :at)",
        [{"a": account, "e": f"hist-{i}", "at": old} for i in range(orders)])  # fmt: skip
    order_ids = conn.execute(
        sa.text("SELECT id FROM orders WHERE external_id LIKE 'hist-%' ORDER BY id")
    ).scalars().all()
    _insert(conn,
        "INSERT INTO idempotency_keys (key, request_hash, recovery_point, created_at) "
        "VALUES (:k, 'h', 'finished', :at)",
        [{"k": f"{step}:{o}", "at": old}
         for o in order_ids for step in ("capture", "label")])  # fmt: skip
    _insert(conn,
        "INSERT INTO outbox_messages (task_name, args, created_at, attempts, kind, status, "
        "published_at, order_id, channel_account_id) VALUES ('ordersync.deliver', '[]', :at, "
        "1, 'fulfillment', 'delivered', :at, :o, :a)",
        [{"at": old, "o": o, "a": account} for o in order_ids])  # fmt: skip
    _insert(conn,
        "INSERT INTO inbox_events (channel_account_id, channel, topic, dedupe_key, headers, "
        "body, status, attempts, received_at) VALUES (:a, 'shopify', 'orders/create', :d, "
        "'{}', :b, 'processed', 1, :at)",
        [{"a": account, "d": f"hist-{o}", "b": b"{}", "at": old} for o in order_ids])  # fmt: skip
    _insert(conn,
        "INSERT INTO invoices (order_id, kind, series, number, full_number, total, currency, "
        "issued_at, source_key) VALUES (:o, 'invoice', 'HIST-INV', :n, :f, 10, 'EUR', :at, :k)",
        [{"o": o, "n": n, "f": f"HIST-INV-{n:06d}", "at": old, "k": f"invoice:{o}:1"}
         for n, o in enumerate(order_ids, 1)])  # fmt: skip
    _insert(conn,
        "INSERT INTO sync_runs (channel_account_id, kind, status, orders_seen, orders_changed, "
        "started_at, heartbeat_at) VALUES (:a, 'poll', 'finished', 10, 1, :at, :at)",
        [{"a": account, "at": old} for _ in range(max(1, orders // 10))])  # fmt: skip
    _insert(conn,
        "INSERT INTO refunds (order_id, provider, amount, currency, status, idempotency_key, "
        "created_at, source, shipping) VALUES (:o, 'shopify', 5, 'EUR', 'succeeded', :k, :at, "
        "'marketplace', 0)",
        [{"o": o, "k": f"hist-refund:{o}", "at": old} for o in order_ids[::30]])  # fmt: skip
    conn.execute(sa.text("ANALYZE"))


def _sweeps(count: int) -> dict[str, Any]:
    from workflows.tasks import sweep

    took: list[float] = []
    found: dict[str, int] = {}
    # the task's log lines to stderr: stdout is for the result (--json)
    with contextlib.redirect_stdout(sys.stderr):
        sweep.apply().get()  # warm-up (and the first sweep after an empty Redis)
        for _ in range(count):
            started = time.perf_counter()
            found = sweep.apply().get()
            took.append(1000 * (time.perf_counter() - started))
    return {"ms": statistics.median(took), "min_ms": min(took), "max_ms": max(took),
            "found": found}  # fmt: skip


def run(
    orders: int, sweeps: int, database_url: str | None = None, *, sqlite: bool = False
) -> dict[str, Any]:
    var_dir = Path(tempfile.mkdtemp(prefix="ordersync-bench-"))
    with scratch_database(database_url, sqlite=sqlite) as (url, label):
        os.environ["ORDERSYNC_VAR_DIR"] = str(var_dir)
        os.environ["ORDERSYNC_DATABASE_URL"] = url
        os.environ.pop("ORDERSYNC_REDIS_URL", None)
        from core.settings import get_settings

        get_settings.cache_clear()
        from core.runtime import embedded_redis, redis_url
        from db.migrate import upgrade
        from db.session import get_engine

        try:
            redis_url()
            upgrade()
            _log(f"baseline: {sweeps} sweeps of the empty database")
            empty = _sweeps(sweeps)
            _log(f"seeding the history of {orders} orders")
            started = time.monotonic()
            with get_engine().begin() as conn:
                seed_history(conn, orders)
            seeded_s = time.monotonic() - started
            _log(f"{sweeps} sweeps with the history")
            full = _sweeps(sweeps)
        finally:
            embedded_redis().stop()
            get_engine().dispose()  # before the database is dropped
            shutil.rmtree(var_dir, ignore_errors=True)
    ratio = full["ms"] / empty["ms"]
    return {"orders": orders, "database": label, "sweeps": sweeps, "seeded_s": seeded_s,
            "empty": empty, "history": full, "ratio": ratio,
            "pass": ratio <= RATIO_GOAL and not any(full["found"].values())}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--orders", type=int, default=300_000, help="orders of history")
    parser.add_argument("--sweeps", type=int, default=20, help="sweeps measured per phase")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", default=None,
                       help="PostgreSQL server to make the scratch database on "
                            "(default: ORDERSYNC_TEST_POSTGRES_URL's)")  # fmt: skip
    where.add_argument("--sqlite", action="store_true", help="a SQLite file in a temp dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.sweeps < 1:
        parser.error("--orders and --sweeps must be at least 1")
    result = run(args.orders, args.sweeps, args.database_url, sqlite=args.sqlite)
    if args.json:
        print(json.dumps(result))
        return 0
    empty, full = result["empty"], result["history"]
    print(f"sweep, {result['database']}: empty {empty['ms']:.1f} ms "
          f"({empty['min_ms']:.1f} to {empty['max_ms']:.1f}); with {result['orders']:,} orders "
          f"of history {full['ms']:.1f} ms ({full['min_ms']:.1f} to {full['max_ms']:.1f}); "
          f"ratio {result['ratio']:.2f} (goal <= {RATIO_GOAL}) "
          f"{'PASS' if result['pass'] else 'FAIL'}; found {full['found']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
