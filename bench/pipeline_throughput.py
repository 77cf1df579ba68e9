"""Order pipeline throughput: signed webhook in → ``ready_to_ship``, against a bare-Celery baseline.

``python -m bench.pipeline_throughput [--orders N] [--database-url URL] [--redis-url URL] [--json]``

Set-up, as the demo runs it: the embedded Redis (or ``--redis-url``), the database migrated
(a fresh SQLite file in a temporary directory, or ``--database-url``), the sandbox (Shopify,
the Stripe-like payment provider and the carrier on one real HTTP server in a thread of this
process), the web app (``ordersync web``) and **two worker processes** (``ordersync worker
--concurrency 1``, one prefork child each: two tasks at a time on this 2-core machine), all
real processes. No Beat: nothing is polled or swept during the run.

Pipeline: N orders created in the Shopify simulator, most of them ``authorized`` (so the
pipeline captures the authorization on Shopify over HTTP, ``orderCapture``; the rest are
``paid``, collected by Shopify), stock enough that none goes on hold. Their signed
``orders/create`` webhooks are posted as fast as a thread pool can; each order is timed from
the moment its webhook was answered 200 to its ``ready_to_ship`` row in ``order_events`` (read
from the database after the run). Every order runs ``process_event`` then reserve_stock →
capture_payment → chord([issue_invoice, buy_label]) → mark_ready_to_ship, with the invoice PDF
and the label bought from the sandbox carrier.

Baseline, same run, same broker, same Celery settings, same worker set-up (two
``worker --concurrency 1`` processes, the ordersync CLI): N chains of as many no-op tasks in
the same shape, ``chain(intake, a, b, chord([c, d], e))`` (``bench/noop_tasks.py``, ``bench``
queue), sent from the same thread pool; each timed from its ``apply_async`` to the time ``e``
returned (read from the result backend).

    orders/s  = N / (last ready_to_ship - first webhook sent)
    chains/s  = N / (last chain completed - first chain sent)
    ratio     = orders/s ÷ chains/s

Goals (issue 4, "Benchmark"): >= 25 orders/s and ratio >= 0.6. A few warm-up orders (and
chains) run first and are not counted. A phase that does not finish within ``--timeout`` is
reported over what completed, and fails.

Where the time goes, printed with the result: per-stage latencies from the timeline; per-task
run times from Celery's task events (``--no-task-stats`` to not consume them); CPU seconds of
each process (web, workers with their prefork children, redis-server, this process with the
sandbox, a local PostgreSQL server) from ``/proc``, per order and per chain. ``--profile DIR``
runs the pipeline's workers under cProfile (one ``.prof`` per prefork child, merged top
functions on stderr). Columns: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ORDERS_PER_S_GOAL",
    "RATIO_GOAL",
    "TaskEvents",
    "main",
    "percentile",
    "render",
    "run",
]

ORDERS_PER_S_GOAL = 25.0
RATIO_GOAL = 0.6
DEFAULT_ORDERS = 300
DEFAULT_WARMUP = 10
DEFAULT_WORKERS = 2  # worker processes ...
DEFAULT_CONCURRENCY = 1  # ... of one prefork child each
DEFAULT_SEND_THREADS = 8
DEFAULT_CAPTURE_SHARE = 0.9  # orders left "authorized" (captured by us); the rest are "paid"
DEFAULT_TIMEOUT_S = 90.0  # per phase: a run stays within about three minutes
BENCH_ROLE = "bench process (sandbox, senders, stats)"
PG_ROLE = "postgresql server (local)"
PROFILED = "profiled-worker"  # argv[1] of a worker started under cProfile (--profile)
SETTLED = {"ready_to_ship", "on_hold", "needs_attention", "cancelled", "shipped", "delivered"}
#: the pipeline's timeline, in order: (label, (event kind, to_state)) of the stage's end
STAGES = (
    ("webhook answered → intake done", ("received", None)),
    ("intake → reserved", ("transition", "reserved")),
    ("reserved → paid", ("transition", "paid")),
    ("paid → ready_to_ship (chord)", ("transition", "ready_to_ship")),
)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


@dataclass
class Processes:
    """Real child processes in their own sessions, logs under ``log_dir`` (like ProcessGroup,
    which only starts ``python -m ordersync``; the baseline workers start ``bench.noop_tasks``).
    """

    env: dict[str, str]
    log_dir: Path
    children: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, name: str, module: str, args: Sequence[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((name, process, log_path))

    def dead(self) -> list[str]:
        return [f"{n} (see {p})" for n, proc, p in self.children if proc.poll() is not None]

    def stop(self, timeout_s: float = 20.0) -> None:
        from ordersync.supervisor import Child, ProcessGroup

        group = ProcessGroup(env=self.env)
        group.children = [Child(n, [], proc, p) for n, proc, p in self.children]
        group.stop(timeout_s=timeout_s)  # SIGTERM (warm shutdown), then SIGKILL what is left
        self.children.clear()


def _wait_ready(
    procs: Processes, broker: str, workers: int, web_url: str | None, timeout_s: float = 60.0
) -> None:
    import httpx
    from celery import Celery

    probe = Celery("probe", broker=broker)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            dead = procs.dead()
            if dead:
                raise RuntimeError(f"exited while starting: {', '.join(dead)}")
            ok = True
            if web_url:
                try:
                    ok = httpx.get(f"{web_url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    ok = False
            if ok and len(probe.control.ping(timeout=0.5)) >= workers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes did not come up in {timeout_s:g}s ({procs.log_dir})")
            time.sleep(0.2)
    finally:
        probe.close()


def _start_workers(
    procs: Processes, module: str, n: int, concurrency: int, queues: str,
    profile_dir: Path | None = None,
) -> None:  # fmt: skip
    for i in range(n):
        args = ["worker", "--concurrency", str(concurrency), "--queues", queues]
        name = f"{module.rsplit('.', 1)[-1]}-worker-{i + 1}"
        if profile_dir is None:
            procs.start(name, module, args)
        else:  # the same command, under cProfile in each prefork child
            procs.start(name, "bench.pipeline_throughput", [PROFILED, str(profile_dir), *args])


def _profiled_worker(profile_dir: Path, args: Sequence[str]) -> int:
    """``ordersync worker ...`` with cProfile on in each prefork child, from its start to its
    shutdown: one ``worker-<pid>.prof`` per child in ``profile_dir``."""
    import cProfile

    from celery import signals

    profiler = cProfile.Profile()

    def start(**_kwargs: Any) -> None:
        profiler.enable()

    def stop(**_kwargs: Any) -> None:
        profiler.disable()
        profile_dir.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(profile_dir / f"worker-{os.getpid()}.prof")

    signals.worker_process_init.connect(start, weak=False)
    signals.worker_process_shutdown.connect(stop, weak=False)
    sys.argv = ["ordersync", *args]
    from ordersync.cli import main as ordersync_main

    ordersync_main()
    return 0


def profile_report(profile_dir: Path, top: int = 25) -> str:
    """The workers' profiles merged: the top functions by cumulative and by own time."""
    import io
    import pstats

    files = sorted(str(p) for p in profile_dir.glob("worker-*.prof"))
    if not files:
        return f"no profiles in {profile_dir}"
    out = io.StringIO()
    stats = pstats.Stats(*files, stream=out)
    stats.strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------- task events


class TaskEvents:
    """Celery task events (the app sends them: ``worker_send_task_events``), consumed in a
    thread: run time per task name, retries and failures, for "where the time goes"."""

    def __init__(self, app: Any, *, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled
        self.names: dict[str, str] = {}
        self.runtimes: dict[str, list[float]] = defaultdict(list)
        self.retried: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self._recv: Any = None
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind, uuid = event.get("type"), str(event.get("uuid"))
        if kind in ("task-received", "task-sent") and event.get("name"):
            self.names[uuid] = event["name"]
        elif kind == "task-succeeded":
            self.runtimes[self.names.get(uuid, "?")].append(float(event.get("runtime") or 0.0))
        elif kind == "task-retried":
            self.retried[self.names.get(uuid, "?")] += 1
        elif kind == "task-failed":
            self.failed[self.names.get(uuid, "?")] += 1

    def __enter__(self) -> TaskEvents:
        if not self.enabled:
            return self
        self._conn = self.app.connection_for_read()
        self._recv = self.app.events.Receiver(self._conn, handlers={"*": self._on_event})

        def consume() -> None:
            self._ready.set()
            try:
                self._recv.capture(limit=None, timeout=None, wakeup=False)
            except Exception as exc:  # statistics only: never fail the result
                _log(f"task events stopped: {type(exc).__name__}: {exc}")

        self._thread = threading.Thread(target=consume, name="task-events", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.3)  # the fanout binding exists before the first event we care about
        return self

    def __exit__(self, *_exc: object) -> None:
        if not self.enabled:
            return
        time.sleep(0.5)  # the last events are in flight behind the last result
        if self._recv is not None:
            self._recv.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._conn is not None:
            self._conn.release()

    def summary(self, worker_seconds: float) -> list[dict[str, Any]]:
        """Per task name: count, mean and p50 run time, total, share of the workers' time."""
        if not self.enabled:
            return []
        total = sum(sum(v) for v in self.runtimes.values())
        rows = []
        for name, values in sorted(self.runtimes.items(), key=lambda kv: -sum(kv[1])):
            rows.append(
                {
                    "task": name,
                    "count": len(values),
                    "mean_ms": 1000 * sum(values) / len(values),
                    "p50_ms": 1000 * percentile(values, 0.5),
                    "total_s": sum(values),
                    "share_of_task_time": sum(values) / total if total else 0.0,
                    "retried": self.retried.get(name, 0),
                    "failed": self.failed.get(name, 0),
                }
            )
        rows.append(
            {
                "task": "all",
                "count": sum(len(v) for v in self.runtimes.values()),
                "total_s": total,
                # Celery's run time (the task body, storing its result, sending the next step)
                # over what the worker processes had; the rest is receiving, acking, the
                # hand-off to the prefork child, and waiting
                "busy_share": total / worker_seconds if worker_seconds else 0.0,
                "retried": sum(self.retried.values()),
                "failed": sum(self.failed.values()),
            }
        )
        return rows


# --------------------------------------------------------------------------- CPU time


def _proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of one process (Linux ``/proc``); None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents[ppid].append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


class CpuMeter:
    """CPU seconds spent by each role's processes (and their children: a worker's prefork
    child) between ``start()`` and ``stop()``: which process the machine's time went to."""

    def __init__(self, roles: dict[str, list[int]], alone: Iterable[str] = ()) -> None:
        self.roles = roles
        self.alone = set(alone)  # roles metered without their children
        self._start: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for role, roots in self.roles.items():
            out[role] = {}
            for root in roots:
                for pid in [root] if role in self.alone else _descendants(root):
                    cpu = _proc_cpu(pid)
                    if cpu is not None:
                        out[role][pid] = cpu
        return out

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        self.used = {
            role: sum(cpu - self._start.get(role, {}).get(pid, 0.0) for pid, cpu in pids.items())
            for role, pids in end.items()
        }
        return self.used


def _postmaster() -> int | None:
    """The local PostgreSQL server's main process, when there is one and we may read it."""
    comms: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                comms[int(entry.name)] = (comm, int(stat.rsplit(")", 1)[1].split()[1]))
            except (OSError, ValueError):
                continue
    for pid, (comm, ppid) in comms.items():
        if comm == "postgres" and comms.get(ppid, ("", 0))[0] != "postgres":
            return pid
    return None


def _roles(procs: Processes, redis_pid: int | None) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = defaultdict(list)
    for name, process, _ in procs.children:
        roles["web" if name == "web" else "workers (main + prefork child)"].append(process.pid)
    if redis_pid:
        roles["redis-server"].append(redis_pid)
    roles[BENCH_ROLE].append(os.getpid())  # metered alone: the others are its children
    from core.settings import get_settings

    postmaster = _postmaster()
    if postmaster and get_settings().database_url.startswith("postgresql"):
        # its backends (our pooled connections live through the phase); the same machine's
        # cores, so it belongs in the total
        roles[PG_ROLE].append(postmaster)
    return dict(roles)


def _cpu_rows(used: dict[str, float], n: int, wall: float) -> list[dict[str, Any]]:
    cores = os.cpu_count() or 1
    rows = [
        {"process": role, "cpu_s": cpu, "cpu_ms_per_item": 1000 * cpu / n if n else math.nan}
        for role, cpu in used.items()
    ]
    total = sum(used.values())
    rows.append(
        {
            "process": "all of the above",
            "cpu_s": total,
            "cpu_ms_per_item": 1000 * total / n if n else math.nan,
            # of all the machine's cores over the measured wall time (other users excluded)
            "machine_share": total / (wall * cores) if wall > 0 else math.nan,
        }
    )
    return rows


# --------------------------------------------------------------------------- sending


def _send_all(
    items: Sequence[Any], send: Callable[[Any], Any], threads: int
) -> tuple[float, list[Any]]:
    """Send every item from a thread pool: (when the first send started, what each returned)."""
    first = time.time()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(send, items))
    return first, results


def _latency_stats(
    starts: dict[Any, float], ends: dict[Any, float], first_sent: float, n: int
) -> dict[str, Any]:
    latencies = [ends[k] - starts[k] for k in starts if k in ends]
    last = max(ends.values()) if ends else math.nan
    wall = last - first_sent
    complete = len(latencies) == n
    return {
        "completed": len(latencies),
        "wall_s": wall,
        # N / (last completed - first sent); over the completed ones when some never were
        "per_s": len(latencies) / wall if wall > 0 else 0.0,
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "max_s": max(latencies) if latencies else math.nan,
        "all_completed": complete,
    }


# --------------------------------------------------------------------------- baseline


def _baseline(
    *, procs: Processes, broker: str, n: int, warmup: int, workers: int, concurrency: int,
    threads: int, timeout_s: float, task_stats: bool = True, redis_pid: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    from bench.noop_tasks import BENCH_QUEUE, chain_for, last_task_id
    from workflows.celery_app import app

    _start_workers(procs, "bench.noop_tasks", workers, concurrency, BENCH_QUEUE)
    try:
        _wait_ready(procs, broker, workers, None)
        backend = app.backend

        def run_chains(run: str, count: int) -> dict[str, Any]:
            sent: dict[int, float] = {}

            def send(i: int) -> None:
                chain_for(i, run).apply_async()
                sent[i] = time.time()

            first, _ = _send_all(range(count), send, threads)
            keys = {i: backend.get_key_for_task(last_task_id(run, i)) for i in range(count)}
            done: dict[int, float] = {}
            deadline = time.monotonic() + timeout_s
            while len(done) < count and time.monotonic() < deadline:
                pending = [i for i in keys if i not in done]  # read only what is not done
                values = backend.client.mget([keys[i] for i in pending])
                for i, raw in zip(pending, values, strict=True):
                    if raw is not None:
                        meta = json.loads(raw)
                        if meta.get("status") == "SUCCESS":
                            done[i] = float(meta["result"])
                if len(done) < count:
                    if procs.dead():
                        raise RuntimeError(f"worker died: {', '.join(procs.dead())}")
                    time.sleep(0.1)
            return _latency_stats(sent, done, first, count)

        if warmup:
            run_chains(f"warm-{secrets.token_hex(3)}", warmup)
        cpu = CpuMeter(_roles(procs, redis_pid), alone=[BENCH_ROLE])
        with TaskEvents(app, enabled=task_stats) as events:
            cpu.start()
            result = run_chains(secrets.token_hex(4), n)
            used = cpu.stop()
        result["tasks"] = events.summary(workers * concurrency * result["wall_s"])
        result["cpu"] = _cpu_rows(used, n, result["wall_s"])
        return result
    finally:
        # Building a chord subscribes this process to its header's results (Celery's pub/sub
        # result consumer); the AsyncResults unsubscribe when collected. Collect them now,
        # while Redis is up, not later (their unsubscribe would retry 20 s against no Redis).
        gc.collect()
        procs.stop()


# --------------------------------------------------------------------------- pipeline


@dataclass
class Setup:
    account_id: int
    account_name: str
    secret: str
    captures_expected: int = 0


def _create_account(sandbox: Any, run: str, skus: Iterable[str], units: int) -> Setup:
    from sqlalchemy import select

    from db.models import ChannelAccount, StockItem
    from db.session import session_scope
    from orders.stock import set_on_hand

    secret = secrets.token_urlsafe(24)
    spec = sandbox.accounts(secret)["shopify"]
    with session_scope() as session:
        account = ChannelAccount(
            name=f"bench-shopify-{run}",
            channel="shopify",
            shop=spec.shop,
            api_base_url=spec.api_base_url,
            credentials=spec.credentials,
            webhook_secret=secret,
            poll_cursor=None,
        )
        session.add(account)
        session.flush()
        for sku in sorted(skus):  # enough that nothing goes on hold, over earlier runs' holds
            reserved = session.scalar(select(StockItem.reserved).where(StockItem.sku == sku))
            set_on_hand(session, sku, int(reserved or 0) + units)
        return Setup(account.id, account.name, secret)


Delivery = tuple[str, str, dict[str, str], bytes]  # (external id, path, headers, body)


def _deliveries(sandbox: Any, setup: Setup, count: int, capture_share: float) -> list[Delivery]:
    """``count`` new Shopify orders, ``capture_share`` of them left ``authorized`` (we capture),
    the others ``paid`` (collected by Shopify); their signed ``orders/create`` deliveries."""
    shop = sandbox.shopify
    path = f"/webhooks/shopify/{setup.account_name}"
    out = []
    for i, external_id in enumerate(shop.add_orders(count)):
        order = shop.orders[external_id]
        # spread evenly: order i is authorized when the running share crosses an integer
        authorized = math.floor((i + 1) * capture_share) > math.floor(i * capture_share)
        order["financial_status"] = "authorized" if authorized else "paid"
        order["total_outstanding"] = order["current_total_price"] if authorized else "0.00"
        shop.put_order(order)  # its transactions as the new status implies (an AUTHORIZATION)
        setup.captures_expected += authorized
        headers, body = shop.webhook_delivery(external_id, "orders/create", setup.secret)
        out.append((external_id, path, headers, body))
    return out


@functools.cache
def _reader() -> Any:
    """Sessions for the bench's own reads. On SQLite not ``db.session``'s engine: its
    ``BEGIN IMMEDIATE`` would take the write lock for every progress poll, and the workers
    would queue behind the benchmark; a plain (deferred) transaction reads the WAL unblocked."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from core.settings import get_settings
    from db.session import get_sessionmaker

    url = get_settings().database_url
    if not url.startswith("sqlite"):
        return get_sessionmaker()
    return sessionmaker(bind=create_engine(url, connect_args={"timeout": 30}))


def _states(account_id: int) -> dict[str, int]:
    from sqlalchemy import func, select

    from db.models import Order

    with _reader()() as session:
        rows = session.execute(
            select(Order.state, func.count())
            .where(Order.channel_account_id == account_id)
            .group_by(Order.state)
        ).all()
    return {state: int(n) for state, n in rows}


def _timeline(account_id: int) -> dict[str, dict[tuple[str, str | None], float]]:
    """external id → {(kind, to_state): epoch seconds} (the first of each)."""
    from sqlalchemy import select

    from db.models import Order, OrderEvent

    out: dict[str, dict[tuple[str, str | None], float]] = defaultdict(dict)
    with _reader()() as session:
        rows = session.execute(
            select(Order.external_id, OrderEvent.kind, OrderEvent.to_state, OrderEvent.at)
            .join(OrderEvent, OrderEvent.order_id == Order.id)
            .where(Order.channel_account_id == account_id)
            .order_by(OrderEvent.id)
        ).all()
    for external_id, kind, to_state, at in rows:
        key = (kind, to_state if kind == "transition" else None)
        out[external_id].setdefault(key, at.astimezone(dt.UTC).timestamp())
    return out


def _post_all(
    base_url: str, deliveries: Sequence[Delivery], threads: int
) -> tuple[float, dict[str, float], Counter[int], int]:
    import httpx

    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    resent = 0
    with httpx.Client(base_url=base_url, timeout=30, limits=limits) as client:

        def send(delivery: Delivery) -> tuple[str, int, float]:
            nonlocal resent
            external_id, path, headers, body = delivery
            for attempt in range(5):  # as Shopify does: again what was not acknowledged
                try:
                    response = client.post(path, content=body, headers=headers)
                    if response.status_code < 500:
                        return external_id, response.status_code, time.time()
                except httpx.TransportError:
                    pass
                resent += 1
                time.sleep(0.2 * 2**attempt)
            return external_id, 599, time.time()

        first, results = _send_all(deliveries, send, threads)
    accepted = {ext: at for ext, status, at in results if status == 200}
    return first, accepted, Counter(status for _, status, _ in results), resent


def _pipeline(
    *, procs: Processes, broker: str, sandbox: Any, setup: Setup, n: int, warmup: int,
    workers: int, concurrency: int, threads: int, capture_share: float, timeout_s: float,
    profile_dir: Path | None = None, task_stats: bool = True, redis_pid: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    from tests.support.servers import free_port
    from workflows.celery_app import app

    port = free_port()
    procs.env["ORDERSYNC_WEB_PORT"] = str(port)
    web_url = f"http://127.0.0.1:{port}"
    procs.start("web", "ordersync", ["web"])
    _start_workers(
        procs, "ordersync", workers, concurrency, ",".join(_queues()), profile_dir=profile_dir
    )
    try:
        _wait_ready(procs, broker, workers, web_url)

        def run_orders(count: int) -> tuple[list[str], float, dict[str, float], dict[str, Any]]:
            deliveries = _deliveries(sandbox, setup, count, capture_share)
            before = sum(_states(setup.account_id).values())
            first, accepted, statuses, resent = _post_all(web_url, deliveries, threads)
            sending = {
                "webhooks_s": time.time() - first,
                "statuses": dict(statuses),
                "resent": resent,
            }
            expected = before + count
            deadline = time.monotonic() + timeout_s
            while True:
                states = _states(setup.account_id)
                settled = sum(v for k, v in states.items() if k in SETTLED)
                if sum(states.values()) >= expected and settled >= expected:
                    break
                if procs.dead():
                    raise RuntimeError(f"a process died: {', '.join(procs.dead())}")
                if time.monotonic() > deadline:
                    _log(f"timed out after {timeout_s:g}s waiting for the pipeline: {states}")
                    break
                time.sleep(0.2)
            sending["states"] = states
            return [d[0] for d in deliveries], first, accepted, sending

        if warmup:
            run_orders(warmup)
        cpu = CpuMeter(_roles(procs, redis_pid), alone=[BENCH_ROLE])
        with TaskEvents(app, enabled=task_stats) as events:
            cpu.start()
            measured, first, accepted, sending = run_orders(n)
            used = cpu.stop()
        timeline = _timeline(setup.account_id)
        ready = {
            ext: timeline[ext][("transition", "ready_to_ship")]
            for ext in measured
            if ("transition", "ready_to_ship") in timeline.get(ext, {})
        }
        result = _latency_stats(accepted, ready, first, n)
        result["webhooks"] = {
            **sending,
            "accepted_per_s": len(accepted) / sending["webhooks_s"],
        }
        result["stages"] = _stages(timeline, measured, accepted)
        result["tasks"] = events.summary(workers * concurrency * result["wall_s"])
        result["cpu"] = _cpu_rows(used, n, result["wall_s"])
        return result
    finally:
        procs.stop()


def _queues() -> list[str]:
    from core.settings import get_settings

    return get_settings().queues


def _stages(
    timeline: dict[str, dict[tuple[str, str | None], float]],
    measured: Sequence[str],
    accepted: dict[str, float],
) -> list[dict[str, Any]]:
    rows = []
    for label, key in STAGES:
        index = [k for _, k in STAGES].index(key)
        values = []
        for ext in measured:
            events = timeline.get(ext, {})
            if key not in events or ext not in accepted:
                continue
            start = accepted[ext] if index == 0 else events.get(STAGES[index - 1][1])
            if start is not None:
                values.append(events[key] - start)
        rows.append(
            {
                "stage": label,
                "mean_s": sum(values) / len(values) if values else math.nan,
                "p50_s": percentile(values, 0.5),
                "p99_s": percentile(values, 0.99),
            }
        )
    return rows


# --------------------------------------------------------------------------- the run


def run(
    *,
    orders: int = DEFAULT_ORDERS,
    warmup: int = DEFAULT_WARMUP,
    database_url: str | None = None,
    redis_url: str | None = None,
    workers: int = DEFAULT_WORKERS,
    concurrency: int = DEFAULT_CONCURRENCY,
    threads: int = DEFAULT_SEND_THREADS,
    capture_share: float = DEFAULT_CAPTURE_SHARE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    baseline: bool = True,
    log_level: str = "INFO",
    keep: bool = False,
    profile_dir: Path | None = None,
    task_stats: bool = True,
) -> dict[str, Any]:
    var_dir = Path(tempfile.mkdtemp(prefix="ordersync-bench-"))
    # before anything reads the settings: this run's state dir, database and Redis
    os.environ["ORDERSYNC_VAR_DIR"] = str(var_dir)
    os.environ["ORDERSYNC_DATABASE_URL"] = database_url or f"sqlite:///{var_dir / 'bench.db'}"
    if redis_url:
        os.environ["ORDERSYNC_REDIS_URL"] = redis_url
    else:
        os.environ.pop("ORDERSYNC_REDIS_URL", None)
    from core.settings import get_settings, mask_url

    get_settings.cache_clear()
    from core.runtime import embedded_redis
    from core.runtime import redis_url as resolve_redis
    from db.migrate import upgrade
    from sandbox import carrier as sandbox_carrier
    from sandbox import payments as sandbox_payments
    from sandbox.server import Sandbox

    settings = get_settings()
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(2)
    broker = resolve_redis()
    redis_process = embedded_redis().process  # None when --redis-url (not ours to meter)
    redis_pid = redis_process.pid if redis_process else None
    upgrade()
    sandbox = Sandbox(seed=7)
    sandbox.start()
    env = {
        **os.environ,
        "ORDERSYNC_REDIS_URL": broker,
        "ORDERSYNC_LOG_LEVEL": log_level,
        "ORDERSYNC_PAYMENTS_URL": f"{sandbox.url}/payments",
        "ORDERSYNC_PAYMENTS_API_KEY": sandbox_payments.SANDBOX_API_KEY,
        "ORDERSYNC_CARRIER_URL": f"{sandbox.url}/carrier",
        "ORDERSYNC_CARRIER_API_KEY": sandbox_carrier.SANDBOX_API_KEY,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p
        ),
    }
    procs = Processes(env=env, log_dir=var_dir / "logs")
    db_name = settings.database_url.split(":", 1)[0]
    result: dict[str, Any] = {
        "orders": orders,
        "warmup": warmup,
        "database": mask_url(settings.database_url) if database_url else f"{db_name} (temp file)",
        "redis": mask_url(broker) if redis_url else "embedded",
        "workers": f"{workers} x worker --concurrency {concurrency}",
        "log_level": log_level,
        "loadavg_before": os.getloadavg(),
    }
    ok = False
    try:
        if baseline:
            _log(f"baseline: {orders} no-op chains on {workers} worker processes")
            result["baseline"] = _baseline(
                procs=procs, broker=broker, n=orders, warmup=warmup, workers=workers,
                concurrency=concurrency, threads=threads, timeout_s=timeout_s,
                task_stats=task_stats, redis_pid=redis_pid,
            )  # fmt: skip
        skus = sandbox.shopify.skus
        setup = _create_account(sandbox, run_id, skus, units=(orders + warmup) * 3 + 10)
        _log(f"pipeline: {orders} orders by webhook on {workers} worker processes")
        result["pipeline"] = _pipeline(
            procs=procs, broker=broker, sandbox=sandbox, setup=setup, n=orders, warmup=warmup,
            workers=workers, concurrency=concurrency, threads=threads,
            capture_share=capture_share, timeout_s=timeout_s, profile_dir=profile_dir,
            task_stats=task_stats, redis_pid=redis_pid,
        )  # fmt: skip
        ledger = sandbox.ledger()
        # authorizations are captured on Shopify (orderCapture): the simulator's ledger
        result["pipeline"]["captures_in_ledger"] = ledger["shopify"]["captures"]
        result["pipeline"]["captures_expected"] = setup.captures_expected
        result["pipeline"]["labels_in_ledger"] = ledger["carrier"]["labels"]
        result["loadavg_after"] = os.getloadavg()
        _verdicts(result)
        ok = True
        return result
    finally:
        procs.stop()
        sandbox.stop()
        embedded_redis().stop()
        if keep or not ok:
            _log(f"state and logs kept in {var_dir}")
        else:
            shutil.rmtree(var_dir, ignore_errors=True)


def _verdicts(result: dict[str, Any]) -> None:
    pipe = result["pipeline"]
    base = result.get("baseline")
    pipe["orders_per_s_pass"] = pipe["all_completed"] and pipe["per_s"] >= ORDERS_PER_S_GOAL
    if base:
        ratio = pipe["per_s"] / base["per_s"] if base["per_s"] else math.nan
        result["ratio"] = ratio
        complete = pipe["all_completed"] and base["all_completed"]
        result["ratio_pass"] = complete and ratio >= RATIO_GOAL
    result["pass"] = pipe["orders_per_s_pass"] and result.get("ratio_pass", True)


# --------------------------------------------------------------------------- output


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


def render(result: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    pipe, base = result["pipeline"], result.get("baseline")
    title = (
        f"Pipeline throughput: {result['orders']} orders, webhook → ready_to_ship; "
        f"{result['workers']}; {result['database']}; redis {result['redis']}"
    )
    main = Table(title=title)
    for name, justify in (("", "left"), ("value", "right"), ("goal", "right"), ("", "center")):
        main.add_column(name, justify=justify)  # type: ignore[arg-type]
    states = pipe["webhooks"]["states"]
    main.add_row("orders/s", f"{pipe['per_s']:.1f}", f">= {ORDERS_PER_S_GOAL:g}",
                 _verdict(pipe["orders_per_s_pass"]))  # fmt: skip
    main.add_row("p50 latency", _ms(pipe["p50_s"]), "", "")
    main.add_row("p99 latency", _ms(pipe["p99_s"]), "", "")
    main.add_row("ready_to_ship", f"{pipe['completed']}/{result['orders']}", "all",
                 _verdict(pipe["all_completed"]))  # fmt: skip
    if base:
        main.add_row("baseline chains/s", f"{base['per_s']:.1f}", "", "")
        main.add_row("baseline p50 / p99", f"{_ms(base['p50_s'])} / {_ms(base['p99_s'])}", "", "")
        main.add_row("ratio", f"{result['ratio']:.3f}", f">= {RATIO_GOAL:g}",
                     _verdict(result["ratio_pass"]))  # fmt: skip
    main.add_row("wall (pipeline / baseline)",
                 f"{pipe['wall_s']:.2f} s / " + (f"{base['wall_s']:.2f} s" if base else "-"),
                 "", "")  # fmt: skip
    hooks = pipe["webhooks"]
    main.add_row("webhooks accepted/s", f"{hooks['accepted_per_s']:.0f}", "", "")
    main.add_row("captures in ledger", f"{pipe['captures_in_ledger']}",
                 f"= {pipe['captures_expected']}",
                 _verdict(pipe["captures_in_ledger"] == pipe["captures_expected"]))  # fmt: skip
    main.add_row("labels in ledger", str(pipe["labels_in_ledger"]), "", "")
    load = [result.get("loadavg_before"), result.get("loadavg_after")]
    main.add_row("load average (1 min) before / after",
                 " / ".join(f"{x[0]:.2f}" for x in load if x), "", "")  # fmt: skip
    main.add_row("states (incl. warm-up)", ", ".join(f"{k} {v}" for k, v in states.items()), "", "")

    stages = Table(title="Where an order's time goes (timeline, measured orders)")
    for name in ("stage", "mean", "p50", "p99"):
        stages.add_column(name, justify="left" if name == "stage" else "right")
    for row in pipe["stages"]:
        stages.add_row(row["stage"], _ms(row["mean_s"]), _ms(row["p50_s"]), _ms(row["p99_s"]))

    tables = [main, stages]
    cpu = Table(title="CPU seconds by process during the measured phase (per order / chain)")
    for name in ("process", "pipeline", "per order", "baseline", "per chain"):
        cpu.add_column(name, justify="left" if name == "process" else "right")
    base_cpu = {r["process"]: r for r in (base or {}).get("cpu", [])}
    for row in pipe.get("cpu", []):
        other = base_cpu.get(row["process"])
        share = f" ({row['machine_share']:.0%} of cores)" if "machine_share" in row else ""
        bshare = (
            f" ({other['machine_share']:.0%} of cores)"
            if other and "machine_share" in other
            else ""
        )
        cpu.add_row(
            row["process"],
            f"{row['cpu_s']:.1f} s{share}",
            f"{row['cpu_ms_per_item']:.1f} ms",
            f"{other['cpu_s']:.1f} s{bshare}" if other else "-",
            f"{other['cpu_ms_per_item']:.1f} ms" if other else "-",
        )
    tables.append(cpu)
    for label, part in (("pipeline", pipe), ("baseline", base)):
        if not part or not part["tasks"]:
            continue
        if not any(row["count"] for row in part["tasks"]):
            continue  # the workers sent no task events (ORDERSYNC_TASK_EVENTS=true for them)
        tasks = Table(title=f"Task run times ({label}, from Celery task events)")
        for name in ("task", "count", "mean", "p50", "total s", "share", "retried", "failed"):
            tasks.add_column(name, justify="left" if name == "task" else "right")
        for row in part["tasks"]:
            if row["task"] == "all":
                tasks.add_row(
                    "all (busy share of worker time)", str(row["count"]), "", "",
                    f"{row['total_s']:.2f}", f"{row['busy_share']:.0%}",
                    str(row["retried"]), str(row["failed"]),
                )  # fmt: skip
            else:
                tasks.add_row(
                    row["task"], str(row["count"]), f"{row['mean_ms']:.1f} ms",
                    f"{row['p50_ms']:.1f} ms", f"{row['total_s']:.2f}",
                    f"{row['share_of_task_time']:.0%}", str(row["retried"]), str(row["failed"]),
                )  # fmt: skip
        tables.append(tasks)
    return tables


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [PROFILED]:
        return _profiled_worker(Path(argv[1]), argv[2:])
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline_throughput", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=DEFAULT_ORDERS,
        help=f"orders (and baseline chains) measured (default {DEFAULT_ORDERS})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help=f"orders and chains run first, not counted (default {DEFAULT_WARMUP})",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL (default: a fresh SQLite file in a temp dir)",
    )
    where.add_argument(
        "--postgres",
        action="store_true",
        help="a new PostgreSQL database, dropped after, on ORDERSYNC_TEST_POSTGRES_URL's "
        "server (SQLite, said so, when none answers)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="broker and result backend (default: the embedded redis-server)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"worker processes (default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"prefork children per worker (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--send-threads",
        type=int,
        default=DEFAULT_SEND_THREADS,
        help=f"threads posting webhooks / sending chains (default {DEFAULT_SEND_THREADS})",
    )
    parser.add_argument(
        "--capture-share",
        type=float,
        default=DEFAULT_CAPTURE_SHARE,
        help="share of orders left 'authorized', captured by the pipeline "
        f"(default {DEFAULT_CAPTURE_SHARE:g}; the rest are 'paid')",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for each phase (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="ORDERSYNC_LOG_LEVEL of web and workers (default INFO, as deployed)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the pipeline's workers under cProfile; .prof files and the "
        "merged top functions (stderr) in DIR",
    )
    parser.add_argument(
        "--no-task-stats",
        action="store_true",
        help="do not consume Celery task events (per-task run times)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-op baseline")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (SQLite file, process logs)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)  # fmt: skip

    import structlog

    # our own process (sandbox, clients) logs nothing below WARNING: keep the output the result
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    database = contextlib.ExitStack()
    database_url = args.database_url
    if args.postgres:
        from bench.backfill import scratch_database

        database_url, _label = database.enter_context(scratch_database(None))
    with database:
        result = _run_from(args, database_url)
    if args.profile:
        print(profile_report(args.profile), file=sys.stderr)
    if args.json:
        print(json.dumps(_jsonable(result), indent=2))
    else:
        from rich.console import Console

        console = Console()
        console.width = max(console.width, 120)
        for table in render(result):
            console.print(table)
    return 1 if args.strict and not result["pass"] else 0


def _run_from(args: argparse.Namespace, database_url: str | None) -> dict[str, Any]:
    return run(
        orders=args.orders,
        warmup=args.warmup,
        database_url=database_url,
        redis_url=args.redis_url,
        workers=args.workers,
        concurrency=args.concurrency,
        threads=args.send_threads,
        capture_share=args.capture_share,
        timeout_s=args.timeout,
        baseline=not args.no_baseline,
        log_level=args.log_level,
        keep=args.keep,
        profile_dir=args.profile.resolve() if args.profile else None,
        task_stats=not args.no_task_stats,
    )


if __name__ == "__main__":
    sys.exit(main())
