"""Backfill: a first sync of a Shopify account holding N orders, against a plain bulk insert.

``python -m bench.backfill [--orders N] [--database-url URL] [--redis-url URL] [--json]
[--profile DIR]``

Set-up: a fresh database (a new PostgreSQL database created on ``--database-url``'s server and
dropped after, by default on ``ORDERSYNC_TEST_POSTGRES_URL``'s; SQLite in a temp dir only when
no PostgreSQL answers, and said so), migrated; the embedded Redis (or ``--redis-url``); the
sandbox in a thread of this process with the Shopify simulator's throttling off (and the
account's cost bucket as large); N orders in the simulator; **one real worker process**
(``ordersync worker --concurrency L -Q sync``: a prefork child per lane, ``SYNC_LANES`` on
PostgreSQL, default 2; one on SQLite). Nothing consumes the pipelines the sync publishes: the
figure is the intake's.

Backfill: ``poll_account`` of the account (no cursor: a first sync), its slices published by
each other as in production. Two times: end to end, from the publish to the run's ``ok``; and
the intake, from the moment the export completed at the marketplace (its JSONL file written) to
the run's ``ok``. The goals are the intake's: before it, the worker only asks the export's
status while the simulator writes the file in this process (about 0.1 ms of its CPU per order
here; Shopify's own export of a large shop takes minutes on Shopify's machines, which no intake
can shorten). The export's file is read in lanes (byte ranges, a prefork child each: see
``orders.syncing``). The worker's RSS (main process + prefork children, and the largest one
process) is read when the run has seen 10 % of the orders and at the end.

Baseline, same run, same database: the same rows (every order and line the backfill stored,
read back in chunks) inserted with plain SQLAlchemy Core ``insert(table)`` of 1,000 rows at a
time into copies of ``orders`` and ``order_lines`` (same columns and unique key, no foreign
keys), one commit per chunk; only the inserts are timed.

    orders/s = N / (run ok - export completed);  baseline = N / insert seconds;  ratio = ÷
    end to end = N / (run ok - poll published)

Goals (issue 14): >= 2,000 orders/s, ratio >= 0.5, RSS after 100 % within 10 % of RSS after
10 %, peak < 300 MB (read per process: the worker is a main process and a child per lane,
about 100 MB each at idle). What bounds it: the process with the most CPU per order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.pipeline_throughput import (
    BENCH_ROLE,
    PG_ROLE,
    CpuMeter,
    Processes,
    _cpu_rows,
    _descendants,
    _log,
    _postmaster,
    _start_workers,
    _wait_ready,
    profile_report,
)

__all__ = ["main", "rss_each", "rss_mb", "run", "scratch_database"]

ORDERS_PER_S_GOAL = 2000.0
RATIO_GOAL = 0.5
RSS_GROWTH_GOAL = 1.10
RSS_PEAK_GOAL_MB = 300.0
DEFAULT_ORDERS = 100_000
UNLIMITED = 1e9
WORKER_ROLE = "worker (main + prefork children)"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def rss_each(pid: int) -> list[float]:
    """Resident memory of a process and of each of its descendants, MB (``/proc``)."""
    found = []
    for p in _descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found.append(int(line.split()[1]) / 1024)
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MB."""
    return sum(rss_each(pid))


@contextlib.contextmanager
def _sqlite_file(label: str) -> Iterator[tuple[str, str]]:
    folder = Path(tempfile.mkdtemp(prefix="ordersync-bench-db-"))
    try:
        yield f"sqlite:///{folder / 'bench.db'}", label
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_database(url: str | None, *, sqlite: bool = False) -> Iterator[tuple[str, str]]:
    """A new, empty PostgreSQL database on ``url``'s server (dropped after): (URL, label);
    a SQLite file in a temp dir when asked (``sqlite``) or when no PostgreSQL answers."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if sqlite:
        with _sqlite_file("sqlite") as found:
            yield found
        return
    admin = make_url(url or os.environ.get("ORDERSYNC_TEST_POSTGRES_URL") or DEFAULT_PG)
    name = f"ordersync_bench_{secrets.token_hex(4)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no PostgreSQL here: say so, and measure on SQLite
        engine.dispose()
        _log(f"no PostgreSQL at {admin.render_as_string(hide_password=True)} "
             f"({type(exc).__name__}): SQLite instead")  # fmt: skip
        with _sqlite_file("sqlite (temp file; no PostgreSQL)") as found:
            yield found
        return
    try:
        yield admin.set(database=name).render_as_string(hide_password=False), "postgresql"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def _account(sandbox: Any) -> int:
    from db.models import ChannelAccount
    from db.session import session_scope

    spec = sandbox.accounts("unused")["shopify"]
    with session_scope() as session:
        account = ChannelAccount(
            name="bench-backfill", channel="shopify", shop=spec.shop,
            api_base_url=spec.api_base_url, credentials=spec.credentials,
            webhook_secret=secrets.token_urlsafe(16), poll_cursor=None,
            rate_limits={"cost_bucket": {"maximum": UNLIMITED, "restore_rate": UNLIMITED}},
        )  # fmt: skip
        session.add(account)
        session.flush()
        return account.id


def _progress(account_id: int) -> tuple[str | None, int]:
    from sqlalchemy import select

    from bench.pipeline_throughput import _reader
    from db.models import SyncRun

    with _reader()() as session:
        row = session.execute(
            select(SyncRun.status, SyncRun.orders_seen)
            .where(SyncRun.channel_account_id == account_id)
            .order_by(SyncRun.id.desc())
            .limit(1)
        ).one_or_none()
    return (row.status, row.orders_seen) if row else (None, 0)


def _bulk_insert_baseline(chunk: int = 1000) -> tuple[float, int]:
    """The backfill's rows inserted again with plain Core inserts into copies of the tables:
    (seconds spent in the inserts and commits, orders inserted)."""
    from sqlalchemy import Column, MetaData, Table, UniqueConstraint, select

    from db.base import table
    from db.models import Order, OrderLine
    from db.session import get_engine

    engine = get_engine()
    source_orders, source_lines = table(Order), table(OrderLine)
    meta = MetaData()

    def copy(source: Table, name: str, *unique: str) -> Table:
        columns = [Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                   for c in source.columns]  # fmt: skip
        return Table(name, meta, *columns, *([UniqueConstraint(*unique)] if unique else []))

    orders = copy(source_orders, "bench_orders", "channel_account_id", "external_id")
    lines = copy(source_lines, "bench_order_lines", "order_id", "external_id")
    meta.create_all(engine)
    spent, done, last = 0.0, 0, 0
    try:
        while True:
            with engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(
                    select(source_orders).where(source_orders.c.id > last)
                    .order_by(source_orders.c.id).limit(chunk))]  # fmt: skip
                if not rows:
                    return spent, done
                last = rows[-1]["id"]
                chunk_lines = source_lines.c.order_id.between(rows[0]["id"], last)
                found = conn.execute(select(source_lines).where(chunk_lines))
                line_rows = [dict(r._mapping) for r in found]
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(orders.insert(), rows)
                conn.execute(lines.insert(), line_rows)
            spent += time.perf_counter() - started
            done += len(rows)
    finally:
        meta.drop_all(engine)


def run(
    *, orders: int = DEFAULT_ORDERS, database_url: str | None = None,
    redis_url: str | None = None, timeout_s: float = 1800.0, keep: bool = False,
    profile_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    var_dir = Path(tempfile.mkdtemp(prefix="ordersync-bench-"))
    with scratch_database(database_url) as (url, label):
        os.environ["ORDERSYNC_VAR_DIR"] = str(var_dir)
        os.environ["ORDERSYNC_DATABASE_URL"] = url
        if redis_url:
            os.environ["ORDERSYNC_REDIS_URL"] = redis_url
        else:
            os.environ.pop("ORDERSYNC_REDIS_URL", None)
        from core.settings import get_settings

        get_settings.cache_clear()
        from core.runtime import embedded_redis
        from core.runtime import redis_url as resolve_redis
        from db.migrate import upgrade
        from sandbox.server import Sandbox

        broker = resolve_redis()
        redis_process = embedded_redis().process
        upgrade()
        sandbox = Sandbox(seed=11)
        shop = sandbox.shopify
        shop.bucket_max = shop.restore_rate = shop._available = UNLIMITED  # throttling off
        sandbox.start()
        procs = Processes(env={**os.environ, "ORDERSYNC_REDIS_URL": broker,
                               "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                          log_dir=var_dir / "logs")  # fmt: skip
        ok = False
        try:
            _log(f"seeding {orders} orders in the Shopify simulator")
            shop.add_orders(orders)
            account_id = _account(sandbox)
            # a prefork child per lane (SYNC_LANES, PostgreSQL): the lanes are read at once
            lanes = get_settings().sync_lanes if url.startswith("postgresql") else 1
            _start_workers(procs, "ordersync", 1, lanes, get_settings().queue_sync, profile_dir)
            _wait_ready(procs, broker, 1, None)
            worker_pid = procs.children[0][1].pid
            roles: dict[str, list[int]] = {WORKER_ROLE: [worker_pid], BENCH_ROLE: [os.getpid()]}
            if redis_process is not None:
                roles["redis-server"] = [redis_process.pid]
            postmaster = _postmaster()
            if postmaster and url.startswith("postgresql"):
                roles[PG_ROLE] = [postmaster]
            meter = CpuMeter(roles, alone=[BENCH_ROLE])
            intake_meter = CpuMeter(roles, alone=[BENCH_ROLE])
            rss_idle = rss_mb(worker_pid)
            from workflows.sync import poll_account

            _log(f"backfill: one first sync of {orders} orders")
            meter.start()
            started = time.monotonic()
            poll_account.delay(account_id)
            rss_10 = rss_peak = None
            process_peak = 0.0  # the largest one process of the worker grew to
            at_10 = exported = None
            status, seen = None, 0
            asked = 0.0  # the run's progress, asked every 0.1 s (a query of our database)
            while time.monotonic() - started < timeout_s:
                if exported is None:  # the export was running at the marketplace
                    exported = _export_completed(shop)
                    if exported is not None:
                        intake_meter.start()
                    elif time.monotonic() - asked < 0.1:  # the simulator's stamp, every 10 ms
                        time.sleep(0.01)
                        continue
                status, seen = _progress(account_id)
                asked = time.monotonic()
                each = rss_each(worker_pid)
                rss = sum(each)
                rss_peak = max(rss_peak or 0.0, rss)
                process_peak = max([process_peak, *each])
                if rss_10 is None and seen >= orders / 10:
                    rss_10, at_10 = rss, time.monotonic() - started
                if status in ("ok", "failed") or procs.dead():
                    break
                time.sleep(0.1 if exported is not None else 0.01)
            ended = time.monotonic()
            wall = ended - started
            used = meter.stop()
            intake_used = intake_meter.stop()
            rss_100 = rss_mb(worker_pid)
            if status != "ok":
                raise RuntimeError(f"the sync ended {status!r} after {seen} orders ({var_dir})")
            _log("baseline: the same rows by plain Core bulk insert")
            base_s, base_n = _bulk_insert_baseline()
            per_s = orders / wall
            assert exported is not None
            export_s, intake_s = exported - started, ended - exported
            intake_per_s = orders / intake_s
            base_per_s = base_n / base_s if base_s else float("nan")
            cpu = _cpu_rows(intake_used, orders, intake_s)
            heaviest = max((r for r in cpu if r["process"] != "all of the above"),
                           key=lambda r: r["cpu_ms_per_item"])  # fmt: skip
            rss_growth = rss_100 / rss_10 if rss_10 else float("nan")
            result = {
                "orders": orders, "database": label, "wall_s": wall, "per_s": per_s,
                "export_s": export_s, "intake_s": intake_s, "intake_per_s": intake_per_s,
                "seen_10_at_s": at_10, "baseline_per_s": base_per_s,
                "baseline_orders": base_n, "ratio": intake_per_s / base_per_s,
                "cpu_end_to_end": _cpu_rows(used, orders, wall),
                "rss_mb": {"idle": rss_idle, "after_10": rss_10, "after_100": rss_100,
                           "peak": rss_peak, "peak_process": process_peak},
                "worker_processes": 1 + lanes,
                "rss_growth": rss_growth, "cpu": cpu, "bound": heaviest["process"],
                "loadavg": os.getloadavg(),
            }  # fmt: skip
            result["pass"] = bool(
                intake_per_s >= ORDERS_PER_S_GOAL and result["ratio"] >= RATIO_GOAL
                and rss_growth <= RSS_GROWTH_GOAL and process_peak < RSS_PEAK_GOAL_MB
            )  # fmt: skip
            ok = True
            return result
        finally:
            procs.stop()
            sandbox.stop()
            embedded_redis().stop()
            from db.session import get_engine

            get_engine().dispose()  # before the database is dropped
            if keep or not ok:
                _log(f"state and logs kept in {var_dir}")
            else:
                shutil.rmtree(var_dir, ignore_errors=True)


def _export_completed(shop: Any) -> float | None:
    """When the simulator's export completed (its clock is this process's monotonic one), or
    None while it runs."""
    for op in list(shop.bulk_operations.values()):
        if op["status"] == "COMPLETED" and op.get("_completed_at") is not None:
            return float(op["_completed_at"])
    return None


def _cpu_line(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['process']} {r['cpu_ms_per_item']:.2f}" for r in rows)


def render(result: dict[str, Any]) -> str:
    rss = result["rss_mb"]
    lines = [
        f"backfill of {result['orders']:,} orders into {result['database']}: intake "
        f"{result['intake_per_s']:,.0f} orders/s ({result['intake_s']:.1f} s from the export's "
        f"file to the last page); plain bulk insert {result['baseline_per_s']:,.0f} orders/s; "
        f"ratio {result['ratio']:.2f} (goals >= {ORDERS_PER_S_GOAL:,.0f}/s, >= {RATIO_GOAL})",
        f"end to end {result['per_s']:,.0f} orders/s ({result['wall_s']:.1f} s, of which "
        f"{result['export_s']:.1f} s the export running at the marketplace: the simulator "
        "writing its file, in the bench process, while the worker asks for its status)",
        f"worker RSS: idle {rss['idle']:.0f} MB, after 10 % {rss['after_10']:.0f} MB, after "
        f"100 % {rss['after_100']:.0f} MB (x{result['rss_growth']:.2f}; goal <= "
        f"{RSS_GROWTH_GOAL}), peak {rss['peak']:.0f} MB over its "
        f"{result['worker_processes']} processes, of one process {rss['peak_process']:.0f} MB "
        f"(goal < {RSS_PEAK_GOAL_MB:.0f})",
        "CPU ms per order, the intake: " + _cpu_line(result["cpu"]),
        "CPU ms per order, end to end: " + _cpu_line(result["cpu_end_to_end"]),
        f"bound by: CPU of {result['bound']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--orders", type=int, default=DEFAULT_ORDERS)
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL server; a scratch database is made on it"
    )
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="DIR",
        help="run the worker under cProfile; its .prof file and the top functions (stderr) in DIR",
    )  # fmt: skip
    args = parser.parse_args(argv)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    result = run(orders=args.orders, database_url=args.database_url, redis_url=args.redis_url,
                 timeout_s=args.timeout, keep=args.keep,
                 profile_dir=args.profile.resolve() if args.profile else None)  # fmt: skip
    if args.profile:
        print(profile_report(args.profile), file=sys.stderr)
    print(json.dumps(result, indent=2, default=str) if args.json else render(result))
    return 1 if args.strict and not result["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
