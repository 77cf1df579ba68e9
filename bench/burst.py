"""A burst of signed webhooks while the workers are busy, and the processes' footprint.

``python -m bench.burst [--webhooks N] [--seconds S] [--database-url URL] [--json]``

Set-up, as production runs it: a scratch PostgreSQL database (``bench.backfill``'s; SQLite only
when no PostgreSQL answers), the embedded Redis, the sandbox in a thread of this process
(Shopify, the payment provider, the carrier), ``ordersync web``, two ``ordersync worker
--concurrency 1`` and ``ordersync beat``: all real processes.

Burst: N new Shopify orders' signed ``orders/create`` webhooks sent **open loop** at N / S per
second (each has its send time fixed in advance, as the marketplace's fires them; a slow
answer does not slow the sender down) from ``--connections`` keep-alive connections of one
asyncio client. Each webhook's latency is from its scheduled send time to its answer:
Shopify gives up after 5 s. The workers start on the burst's pipelines as they come, so the
later webhooks meet busy workers and a growing queue. Then the drain: the time from the first
webhook to the last order ``ready_to_ship``.

Footprint: resident memory (RSS, ``/proc``, each process with its children: a worker with its
prefork child) of web, each worker, Beat and redis-server, at idle (after start-up, before the
burst) and the peak under load (sampled during the burst and the drain).

Goals (issue 14): 100 % answered 2xx within 5 s, every order processed afterwards. What bounds
each: the process with the most CPU per webhook (burst), per order (drain).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.backfill import rss_mb, scratch_database
from bench.pipeline_throughput import (
    BENCH_ROLE,
    PG_ROLE,
    CpuMeter,
    Processes,
    _cpu_rows,
    _create_account,
    _deliveries,
    _log,
    _postmaster,
    _states,
    _wait_ready,
    percentile,
)
from bench.rawhttp import exchange

__all__ = ["main", "run"]

ANSWER_WITHIN_S = 5.0  # Shopify's timeout for a webhook delivery
DEFAULT_WEBHOOKS = 20_000
DEFAULT_SECONDS = 20.0
DEFAULT_WEB_PROCESSES = 2


def _request(path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _send_burst(
    url: str, requests: list[bytes], seconds: float, connections: int
) -> list[tuple[float, int]]:
    """Each request sent at its scheduled time (open loop) on the first free connection:
    (latency from its scheduled time, HTTP status) per request."""
    host, port = url.removeprefix("http://").split(":")
    interval = seconds / max(1, len(requests))
    out: list[tuple[float, int]] = []

    async def main() -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        start = time.monotonic() + 0.2
        for i, request in enumerate(requests):
            queue.put_nowait((start + i * interval, request))

        async def connection() -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                while not queue.empty():
                    due, request = queue.get_nowait()
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    status = await exchange(reader, writer, request)
                    out.append((time.monotonic() - due, status))
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(connections)))

    asyncio.run(main())
    return out


class RssSampler:
    """The peak RSS of each named process (with its children) while running."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.5) -> None:
        self.pids, self.every_s = pids, every_s
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> dict[str, float]:
        return {name: rss_mb(pid) for name, pid in self.pids.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for name, value in self.now().items():
                self.peak[name] = max(self.peak[name], value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(
    *, webhooks: int = DEFAULT_WEBHOOKS, seconds: float = DEFAULT_SECONDS, connections: int = 64,
    database_url: str | None = None, drain_timeout_s: float = 3600.0, keep: bool = False,
    web_processes: int = DEFAULT_WEB_PROCESSES,
) -> dict[str, Any]:  # fmt: skip
    var_dir = Path(tempfile.mkdtemp(prefix="ordersync-bench-burst-"))
    with scratch_database(database_url) as (url, label):
        os.environ["ORDERSYNC_VAR_DIR"] = str(var_dir)
        os.environ["ORDERSYNC_DATABASE_URL"] = url
        os.environ.pop("ORDERSYNC_REDIS_URL", None)
        from core.settings import get_settings

        get_settings.cache_clear()
        from core.net import free_port
        from core.runtime import embedded_redis
        from core.runtime import redis_url as resolve_redis
        from db.migrate import upgrade
        from sandbox import carrier as sandbox_carrier
        from sandbox import payments as sandbox_payments
        from sandbox.server import Sandbox

        broker = resolve_redis()
        redis_process = embedded_redis().process
        upgrade()
        sandbox = Sandbox(seed=5)
        sandbox.start()
        port = free_port()
        web_url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "ORDERSYNC_REDIS_URL": broker, "ORDERSYNC_WEB_PORT": str(port),
               "ORDERSYNC_LOG_LEVEL": "WARNING",
               "ORDERSYNC_PAYMENTS_URL": f"{sandbox.url}/payments",
               "ORDERSYNC_PAYMENTS_API_KEY": sandbox_payments.SANDBOX_API_KEY,
               "ORDERSYNC_CARRIER_URL": f"{sandbox.url}/carrier",
               "ORDERSYNC_CARRIER_API_KEY": sandbox_carrier.SANDBOX_API_KEY,
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
        procs = Processes(env=env, log_dir=var_dir / "logs")
        ok = False
        try:
            setup = _create_account(sandbox, "burst", sandbox.shopify.skus, units=webhooks * 3)
            _log(f"preparing {webhooks} signed webhooks")
            deliveries = _deliveries(sandbox, setup, webhooks, capture_share=0.9)
            requests = [_request(path, headers, body) for _, path, headers, body in deliveries]
            del deliveries
            procs.start("web", "ordersync", ["web", "--workers", str(web_processes)])
            for i in range(2):
                procs.start(f"worker-{i + 1}", "ordersync", ["worker", "--concurrency", "1"])
            procs.start("beat", "ordersync", ["beat"])
            _wait_ready(procs, broker, 2, web_url)
            time.sleep(3.0)  # settle: imports done, Beat's first ticks sent
            pids = {name: p.pid for name, p, _ in procs.children}
            if redis_process is not None:
                pids["redis-server"] = redis_process.pid
            sampler = RssSampler(pids)
            idle = sampler.now()
            roles: dict[str, list[int]] = {
                "web": [pids["web"]], "workers (main + prefork child)":
                [pids["worker-1"], pids["worker-2"]], "beat": [pids["beat"]],
                BENCH_ROLE: [os.getpid()],
            }  # fmt: skip
            if redis_process is not None:
                roles["redis-server"] = [redis_process.pid]
            postmaster = _postmaster()
            if postmaster and url.startswith("postgresql"):
                roles[PG_ROLE] = [postmaster]
            _log(f"burst: {webhooks} webhooks in {seconds:g} s")
            with sampler:
                meter = CpuMeter(roles, alone=[BENCH_ROLE])
                meter.start()
                started = time.monotonic()
                answers = _send_burst(web_url, requests, seconds, connections)
                sent_s = time.monotonic() - started
                burst_cpu = meter.stop()
                _log("drain: until every order is ready to ship")
                meter.start()
                ready = 0
                while time.monotonic() - started < drain_timeout_s and not procs.dead():
                    states = _states(setup.account_id)
                    ready = states.get("ready_to_ship", 0)
                    if sum(states.values()) >= webhooks and ready + states.get(
                        "on_hold", 0
                    ) + states.get("needs_attention", 0) >= webhooks:
                        break
                    time.sleep(0.5)
                drained_s = time.monotonic() - started
                drain_cpu = meter.stop()
            latencies = [latency for latency, _ in answers]
            within = sum(1 for latency, status in answers
                         if 200 <= status < 300 and latency <= ANSWER_WITHIN_S)  # fmt: skip
            burst_rows = _cpu_rows(burst_cpu, webhooks, sent_s)
            drain_rows = _cpu_rows(drain_cpu, webhooks, max(0.001, drained_s - sent_s))

            def heaviest(rows: list[dict[str, Any]]) -> str:
                row = max((r for r in rows if r["process"] != "all of the above"),
                          key=lambda r: r["cpu_ms_per_item"])  # fmt: skip
                return f"CPU of {row['process']} ({row['cpu_ms_per_item']:.2f} ms/item)"

            result = {
                "database": label, "webhooks": webhooks, "seconds": seconds,
                "answered": len(answers), "share_2xx_within_5s": within / webhooks,
                "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
                "max_s": max(latencies) if latencies else float("nan"),
                "sent_per_s": len(answers) / sent_s, "drained_s": drained_s,
                "ready": ready, "drain_per_s": ready / drained_s if drained_s else 0.0,
                "burst_bound": heaviest(burst_rows), "drain_bound": heaviest(drain_rows),
                "burst_cpu": burst_rows, "drain_cpu": drain_rows,
                "footprint_mb": {name: {"idle": idle[name], "peak": sampler.peak[name]}
                                 for name in pids},
                "loadavg": os.getloadavg(),
            }  # fmt: skip
            result["pass"] = bool(within == webhooks and ready == webhooks)
            ok = True
            return result
        finally:
            procs.stop()
            sandbox.stop()
            embedded_redis().stop()
            from db.session import get_engine

            get_engine().dispose()
            if keep or not ok:
                _log(f"state and logs kept in {var_dir}")
            else:
                shutil.rmtree(var_dir, ignore_errors=True)


def render(result: dict[str, Any]) -> str:
    lines = [
        f"burst of {result['webhooks']:,} webhooks in {result['seconds']:g} s into "
        f"{result['database']}: {100 * result['share_2xx_within_5s']:.1f} % answered 2xx within "
        f"5 s (p50 {result['p50_s'] * 1000:.0f} ms, p99 {result['p99_s'] * 1000:.0f} ms, max "
        f"{result['max_s'] * 1000:.0f} ms); bound by {result['burst_bound']}",
        f"drained: {result['ready']:,} ready to ship {result['drained_s']:.1f} s after the "
        f"first webhook ({result['drain_per_s']:.1f} orders/s); bound by {result['drain_bound']}",
        "footprint (RSS MB, idle → peak under load): "
        + ", ".join(
            f"{name} {v['idle']:.0f} → {v['peak']:.0f}"
            for name, v in result["footprint_mb"].items()
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--webhooks", type=int, default=DEFAULT_WEBHOOKS)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--web-processes", type=int, default=DEFAULT_WEB_PROCESSES)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--drain-timeout", type=float, default=3600.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    result = run(webhooks=args.webhooks, seconds=args.seconds, connections=args.connections,
                 database_url=args.database_url, drain_timeout_s=args.drain_timeout,
                 keep=args.keep, web_processes=args.web_processes)  # fmt: skip
    print(json.dumps(result, indent=2, default=str) if args.json else render(result))
    return 1 if args.strict and not result["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
