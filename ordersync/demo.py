"""``ordersync demo``: the whole system against the sandbox marketplaces, in one command.

Starts the embedded Redis (when no URL is set), migrates the database, starts the sandbox
server, the web app, a worker and Beat; creates run-scoped demo accounts; has the Shopify
simulator send N signed ``orders/create`` webhooks (some delivered twice with the same webhook
id, some followed by an ``orders/updated`` under a new id, a few reordered); waits until the
inbox is drained and prints a summary. ``--json`` adds the summary as one JSON object on the
last line of stdout. ``--keep`` leaves everything running with the dashboard URL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import secrets
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from celery import Celery
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from db.migrate import upgrade
from db.models import ChannelAccount, InboxEvent, Order
from db.session import session_scope
from orders.states import InboxStatus
from ordersync.logging import configure_logging
from ordersync.runtime import embedded_redis, redis_url
from ordersync.settings import get_settings
from ordersync.supervisor import ProcessGroup
from sandbox.server import Sandbox

__all__ = ["run_demo"]

SEND_THREADS = 8


@dataclass
class Deliveries:
    items: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    distinct_ids: set[str] = field(default_factory=set)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _plan_deliveries(
    sandbox: Sandbox, n: int, secret: str, duplicate_rate: float, rng: random.Random
) -> tuple[list[str], Deliveries]:
    """N orders created in the simulator and the webhook deliveries Shopify would make."""
    sim = sandbox.shopify
    ids = sim.add_orders(n)
    plan = Deliveries()
    for external_id in ids:
        headers, body = sim.webhook_delivery(external_id, "orders/create", secret)
        plan.items.append((headers, body))
        plan.distinct_ids.add(headers["X-Shopify-Webhook-Id"])
        roll = rng.random()
        if roll < duplicate_rate:  # Shopify retried: the same delivery again
            plan.items.append((headers, body))
        elif roll < duplicate_rate * 1.5:  # edited in the admin: a new delivery, same order
            sim.touch_order(external_id)
            headers2, body2 = sim.webhook_delivery(external_id, "orders/updated", secret)
            plan.items.append((headers2, body2))
            plan.distinct_ids.add(headers2["X-Shopify-Webhook-Id"])
    # webhooks are not ordered: shuffle within small windows (a retry may overtake its original)
    window = 8
    for start in range(0, len(plan.items), window):
        chunk = plan.items[start : start + window]
        rng.shuffle(chunk)
        plan.items[start : start + window] = chunk
    return ids, plan


def _inbox_progress(account_ids: list[int]) -> tuple[int, int]:
    """(rows stored, rows no longer waiting) for the run's accounts."""
    with session_scope() as session:
        rows = dict(
            session.execute(
                select(InboxEvent.status, func.count())
                .where(InboxEvent.channel_account_id.in_(account_ids))
                .group_by(InboxEvent.status)
            ).all()
        )
    total = sum(rows.values())
    return total, total - rows.get(InboxStatus.RECEIVED, 0)


def _summary(
    account_ids: list[int], orders_sent: int, deliveries: int, seconds: float
) -> dict[str, Any]:
    with session_scope() as session:
        in_run = Order.channel_account_id.in_(account_ids)
        by_state = dict(
            session.execute(
                select(Order.state, func.count()).where(in_run).group_by(Order.state)
            ).all()
        )
        by_channel = dict(
            session.execute(
                select(Order.channel, func.count()).where(in_run).group_by(Order.channel)
            ).all()
        )
        failed = session.scalar(
            select(func.count())
            .select_from(InboxEvent)
            .where(
                InboxEvent.channel_account_id.in_(account_ids),
                InboxEvent.status == InboxStatus.FAILED,
            )
        )
    created = sum(by_state.values())
    return {
        "orders_sent": orders_sent,
        "deliveries_sent": deliveries,
        "orders_created": created,
        # deliveries that did not make a new order: same webhook id again, or another event of
        # an order we already had
        "duplicates_absorbed": deliveries - created - int(failed or 0),
        "failed": int(failed or 0),
        "by_state": by_state,
        "by_channel": by_channel,
        "seconds": round(seconds, 2),
        "orders_per_s": round(created / seconds, 1) if seconds else None,
    }


def _print_table(summary: dict[str, Any], console: Console) -> None:
    table = Table("", "", title="ordersync demo", show_header=False)
    for key in ("orders_sent", "deliveries_sent", "orders_created", "duplicates_absorbed",
                "failed", "seconds", "orders_per_s"):  # fmt: skip
        table.add_row(key.replace("_", " "), str(summary[key]))
    for state, count in sorted(summary["by_state"].items()):
        table.add_row(f"state: {state}", str(count))
    for channel, count in sorted(summary["by_channel"].items()):
        table.add_row(f"channel: {channel}", str(count))
    console.print(table)


def _wait_ready(base_url: str, broker: str, group: ProcessGroup, timeout_s: float) -> None:
    probe = Celery("probe", broker=broker)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            dead = group.dead()
            if dead:
                raise RuntimeError(f"{dead[0].name} exited while starting; see {dead[0].log_path}")
            try:
                web_ok = httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                web_ok = False
            if web_ok and probe.control.ping(timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("web app or worker did not come up in time")
            time.sleep(0.2)
    finally:
        probe.close()


def run_demo(
    *, orders: int, as_json: bool, keep: bool, duplicate_rate: float, timeout_s: float
) -> int:
    settings = get_settings()
    configure_logging("WARNING", settings.log_json)
    out = Console()
    err = Console(stderr=True)
    run = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(2)
    rng = random.Random(run)

    broker = redis_url()
    upgrade()
    host = settings.web_host
    port = settings.web_port if _port_free(host, settings.web_port) else _free_port(host)
    base_url = f"http://{host}:{port}"
    secret = secrets.token_urlsafe(24)

    sandbox = Sandbox(seed=rng.randrange(2**31))
    sandbox.start()
    with session_scope() as session:
        account = ChannelAccount(
            name=f"demo-shopify-{run}",
            channel="shopify",
            shop=sandbox.shopify.shop,
            api_base_url=f"{sandbox.url}/shopify",
            webhook_secret=secret,
        )
        session.add(account)
        session.flush()
        account_ids = [account.id]
        account_name = account.name

    env = {**os.environ, "ORDERSYNC_WEB_PORT": str(port), "ORDERSYNC_REDIS_URL": broker}
    group = ProcessGroup(env=env, log_dir=settings.var_dir / "logs" / f"demo-{run}")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        group.start("web", ["web"])
        group.start("worker", ["worker"])
        group.start("beat", ["beat"])
        err.print(f"starting web ({base_url}), worker and Beat; logs in {group.log_dir}")
        _wait_ready(base_url, broker, group, timeout_s=60)

        ids, plan = _plan_deliveries(sandbox, orders, secret, duplicate_rate, rng)
        url = f"{base_url}/webhooks/shopify/{account_name}"
        started = time.monotonic()
        with httpx.Client(timeout=30) as client:

            def send(item: tuple[dict[str, str], bytes]) -> int:
                headers, body = item
                for attempt in range(5):  # like Shopify: retry what was not acknowledged
                    try:
                        response = client.post(url, content=body, headers=headers)
                        if response.status_code < 500:
                            return response.status_code
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2 * 2**attempt)
                return 599

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=as_json,
            ) as progress:
                sent_bar = progress.add_task("webhooks sent", total=len(plan.items))
                done_bar = progress.add_task("events processed", total=len(plan.distinct_ids))
                with ThreadPoolExecutor(SEND_THREADS) as pool:
                    statuses = []
                    for status in pool.map(send, plan.items):
                        statuses.append(status)
                        progress.advance(sent_bar)
                        _, done = _inbox_progress(account_ids)
                        progress.update(done_bar, completed=done)
                deadline = time.monotonic() + timeout_s
                while True:
                    stored, done = _inbox_progress(account_ids)
                    progress.update(done_bar, completed=done)
                    if stored >= len(plan.distinct_ids) and done == stored:
                        break
                    if group.dead():
                        raise RuntimeError("a process died during the demo; see the logs")
                    if time.monotonic() > deadline:
                        err.print("[red]timed out waiting for the workers")
                        break
                    time.sleep(0.2)
        rejected = [s for s in statuses if s != 200]
        if rejected:
            err.print(f"[red]{len(rejected)} deliveries were not accepted: {sorted(set(rejected))}")
        summary = _summary(account_ids, len(ids), len(plan.items), time.monotonic() - started)
        _print_table(summary, err if as_json else out)
        if as_json:
            print(json.dumps(summary, sort_keys=True), flush=True)
        if keep:
            err.print(
                f"still running: dashboard {base_url}/  sandbox {sandbox.url}  (Ctrl-C stops)"
            )
            dead = group.wait()
            err.print(f"[red]{dead.name} exited")
        ok = summary["failed"] == 0 and summary["orders_created"] == len(ids) and not rejected
        return 0 if ok else 1
    except KeyboardInterrupt:
        err.print("stopping…")
        return 130
    finally:
        group.stop()
        sandbox.stop()
        embedded_redis().stop()
