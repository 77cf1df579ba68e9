"""Webhook intake: signed Shopify order webhooks against ``/healthz`` on the same web processes.

``python -m bench.webhook_intake [--seconds S] [--connections C] [--web-workers N]
[--database-url URL | --sqlite] [--redis-url URL] [--json]``

Set-up: the database migrated: a scratch PostgreSQL database made on ``--database-url``'s
server (by default ``ORDERSYNC_TEST_POSTGRES_URL``'s) and dropped after, the set-up that takes
bursts in production; a fresh SQLite file with ``--sqlite`` (the laptop set-up: one writer at
a time), or when no PostgreSQL answers, said so), Redis (the embedded one, or
``--redis-url``), one Shopify account with a webhook secret, and ``ordersync web --workers N``
(real processes; no worker, so every accepted webhook's ``process_event`` waits in Redis, as
during a burst while the workers are busy).

Two phases of ``S`` seconds each, ``C`` keep-alive connections held by one asyncio client in
this process (raw HTTP/1.1 on sockets: the client's own CPU stays small and is measured):

1. the baseline: ``GET /healthz`` as fast as the server answers;
2. signed ``orders/create`` webhooks of the official Shopify order (about 3 KB), each with a
   webhook id of its own (every one is a new inbox row, committed before its 200).

Reported per phase: requests/s, p50/p99/max latency, and the CPU seconds of each process (web,
this client, redis-server, a local PostgreSQL server) per request, from ``/proc``. The ratio is
webhooks/s ÷ healthz/s. Goals (issue 14): ≥ 1,000 webhooks/s with p99 ≤ 50 ms on two cores, or
a ratio ≥ 0.7 with the rest explained by the CPU table. Every answer must be a 200 and every
webhook must be in the inbox afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.pipeline_throughput import percentile
from bench.rawhttp import exchange

__all__ = ["RATIO_GOAL", "WEBHOOKS_PER_S_GOAL", "main", "run"]

WEBHOOKS_PER_S_GOAL = 1000.0
P99_GOAL_S = 0.050
RATIO_GOAL = 0.7
FIXTURE = (
    Path(__file__).resolve().parents[1]
    / "tests/fixtures/official/shopify/rest-2026-07/order.get.json"
)
CLIENT_ROLE = "bench client (this process)"


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _connection(
    host: str, port: int, make: Callable[[], bytes], stop_at: float, out: list[tuple[float, int]]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at:
            request = make()
            started = time.monotonic()
            status = await exchange(reader, writer, request)
            out.append((time.monotonic() - started, status))
    finally:
        writer.close()


def _phase(
    url: str, connections: int, seconds: float, make: Callable[[], bytes]
) -> tuple[list[tuple[float, int]], float]:
    host, port = url.removeprefix("http://").split(":")
    out: list[tuple[float, int]] = []

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(_connection(host, int(port), make, stop_at, out) for _ in range(connections))
        )

    started = time.monotonic()
    asyncio.run(main())
    return out, time.monotonic() - started


def _summary(
    results: list[tuple[float, int]], wall: float, cpu: dict[str, float]
) -> dict[str, Any]:
    latencies = [latency for latency, _ in results]
    n = len(results)
    return {
        "requests": n,
        "not_200": sum(status != 200 for _, status in results),
        "per_s": n / wall if wall > 0 else 0.0,
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "max_s": max(latencies) if latencies else math.nan,
        "cpu_ms_per_request": {role: 1000 * s / n if n else math.nan for role, s in cpu.items()},
    }


def run(
    *,
    seconds: float,
    connections: int,
    web_workers: int,
    database_url: str | None,
    redis_url: str | None,
    sqlite: bool = False,
    keep: bool = False,
) -> dict[str, Any]:
    import sqlalchemy as sa

    from bench.backfill import scratch_database
    from bench.pipeline_throughput import PG_ROLE, CpuMeter, Processes, _postmaster, _wait_ready
    from core.embedded_redis import EmbeddedRedis
    from core.net import free_port
    from db.migrate import upgrade
    from db.models import ChannelAccount, InboxEvent
    from db.session import make_engine
    from integrations.shopify.webhooks import sign

    tmp = Path(tempfile.mkdtemp(prefix="ordersync-bench-intake-"))
    embedded = None if redis_url else EmbeddedRedis(tmp / "redis")
    broker = redis_url or embedded.ensure()  # type: ignore[union-attr]
    database = contextlib.ExitStack()
    if sqlite:
        url, label = f"sqlite:///{tmp / 'ordersync.db'}", "sqlite"
    else:
        url, label = database.enter_context(scratch_database(database_url))
    upgrade(url)
    secret = secrets.token_hex(16)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(ChannelAccount).values(
            name="bench-shop", channel="shopify", webhook_secret=secret, credentials={},
            rate_limits={}, active=True))  # fmt: skip
    port = free_port()
    web_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ORDERSYNC_DATABASE_URL": url, "ORDERSYNC_REDIS_URL": broker,
           "ORDERSYNC_VAR_DIR": str(tmp), "ORDERSYNC_WEB_PORT": str(port),
           "ORDERSYNC_LOG_LEVEL": "WARNING",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    procs = Processes(env=env, log_dir=tmp / "logs")
    body = json.dumps(json.loads(FIXTURE.read_text())["order"]).encode()
    signature = sign(secret, body)

    def webhook() -> bytes:
        return _request("POST", "/webhooks/shopify/bench-shop", {
            "Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
            "X-Shopify-Hmac-Sha256": signature, "X-Shopify-Webhook-Id": uuid.uuid4().hex,
            "X-Shopify-Triggered-At": dt.datetime.now(dt.UTC).isoformat(),
            "X-Shopify-Shop-Domain": "bench-shop.myshopify.com"}, body)  # fmt: skip

    healthz = _request("GET", "/healthz", {})
    try:
        procs.start("web", "ordersync", ["web", "--workers", str(web_workers)])
        _wait_ready(procs, broker, 0, web_url)
        roles: dict[str, list[int]] = {"web": [p.pid for _, p, _ in procs.children],
                                       CLIENT_ROLE: [os.getpid()]}  # fmt: skip
        if embedded is not None and embedded.process is not None:
            roles["redis-server"] = [embedded.process.pid]
        postmaster = _postmaster()
        if postmaster and url.startswith("postgresql"):
            roles[PG_ROLE] = [postmaster]
        phases: dict[str, Any] = {}
        for name, make in (("healthz", lambda: healthz), ("webhooks", webhook)):
            _phase(web_url, connections, min(2.0, seconds), make)  # warm-up, not counted
            meter = CpuMeter(roles, alone=[CLIENT_ROLE])
            meter.start()
            results, wall = _phase(web_url, connections, seconds, make)
            phases[name] = _summary(results, wall, meter.stop())
        with engine.connect() as conn:
            stored = conn.scalar(sa.select(sa.func.count()).select_from(InboxEvent)) or 0
    finally:
        procs.stop()
        engine.dispose()
        if embedded is not None:
            embedded.stop()
        database.close()  # the scratch database dropped
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    hooks = phases["webhooks"]
    accepted = 0 if hooks["not_200"] else stored  # warm-up webhooks are stored too
    ratio = hooks["per_s"] / phases["healthz"]["per_s"] if phases["healthz"]["per_s"] else 0.0
    return {
        "database": label,
        "web_workers": web_workers,
        "connections": connections,
        "seconds": seconds,
        "phases": phases,
        "ratio": ratio,
        "stored_in_inbox": accepted,
        "goal_met": hooks["not_200"] == 0
        and (
            (hooks["per_s"] >= WEBHOOKS_PER_S_GOAL and hooks["p99_s"] <= P99_GOAL_S)
            or ratio >= RATIO_GOAL
        ),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"webhook intake: {result['database']}, {result['web_workers']} web process(es), "
        f"{result['connections']} connections, {result['seconds']:g} s per phase",
        "",
        f"{'phase':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'not 200':>8}",
    ]
    for name, p in result["phases"].items():
        lines.append(
            f"{name:<10} {p['per_s']:>8.0f} {1000 * p['p50_s']:>8.1f} {1000 * p['p99_s']:>8.1f} "
            f"{1000 * p['max_s']:>8.1f} {p['not_200']:>8}"
        )
    lines += ["", f"ratio webhooks/healthz {result['ratio']:.2f} (goal >= {RATIO_GOAL}, or "
              f">= {WEBHOOKS_PER_S_GOAL:.0f}/s with p99 <= {1000 * P99_GOAL_S:.0f} ms): "
              f"{'met' if result['goal_met'] else 'NOT met'}", "",
              "CPU ms per request, by process (which one bounds the figure):"]  # fmt: skip
    roles = list(result["phases"]["webhooks"]["cpu_ms_per_request"])
    lines.append(f"{'process':<34} " + " ".join(f"{n:>10}" for n in result["phases"]))
    for role in roles:
        values = " ".join(
            f"{p['cpu_ms_per_request'].get(role, math.nan):>10.2f}"
            for p in result["phases"].values()
        )
        lines.append(f"{role:<34} {values}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhook_intake", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--web-workers", type=int, default=1, help="ordersync web --workers N")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", default=None,
                       help="a PostgreSQL server: a scratch database is made on it (default: "
                            "ORDERSYNC_TEST_POSTGRES_URL's)")  # fmt: skip
    where.add_argument("--sqlite", action="store_true", help="a fresh SQLite file instead")
    parser.add_argument("--redis-url", default=None, help="default: the embedded redis-server")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    result = run(seconds=args.seconds, connections=args.connections,
                 web_workers=args.web_workers, database_url=args.database_url,
                 redis_url=args.redis_url, sqlite=args.sqlite, keep=args.keep)  # fmt: skip
    print(json.dumps(result) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
