"""One chaos run: a fresh PostgreSQL database and a redis-server of its own, the sandbox, the
web app, N workers and Beat as real processes (``tests.support.world.running_world``, as the
e2e tests start them), a steady load from the sandbox marketplaces, staff at work through the
API, then quiet, then the facts the invariants read.

The load: the marketplaces' listings are found first (``ordersync listings sync``); Shopify
and WooCommerce orders arrive by signed webhooks (Shopify also cancels some from its admin; the
buyers who had not paid at checkout pay, as in the demo), Amazon's and eBay's are found by
Beat's polls; staff raise stock through the
API (releasing orders on hold), then cancel a share of the ready orders and ship the rest; a share
of the Shopify orders is edited or partly refunded in the admin as they arrive; the
sandbox carrier delivers and Beat's tracking sees it. "Quiet": every order final, nothing in
the inbox, the outbox or the stock pushes waiting; then Beat stops and the queues drain
before the facts are read.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from bench.chaos.invariants import FINAL_STATES, Facts
from db.models import (
    ChannelAccount,
    IdempotencyKey,
    InboxEvent,
    Invoice,
    InvoiceCounter,
    Label,
    Listing,
    Order,
    OrderEvent,
    OutboxMessage,
    Payment,
    Shipment,
    StockItem,
    SyncRun,
)
from integrations import registry
from orders.money_check import check as money_check
from orders.stock import set_on_hand
from orders.stock_push import quantity_for
from ordersync.demo import _demo_skus, _pay_pending
from tests.support.postgres_server import PostgresServer, find_pg_bin
from tests.support.redis_server import RedisServer
from tests.support.world import World, running_world
from workflows.broker import DEAD_LETTERS

T = TypeVar("T")

#: the harness's own reads of the run's database: a fault may cut them too (postgres_terminate
#: kills every backend of the database, the harness's included, between its ping and its query)
_READ_ATTEMPTS = 20


def _retried(read: Callable[..., T]) -> Callable[..., T]:
    """Retry a harness read whose connection a fault took away (the fault is the scenario's,
    not a finding): the pool reconnects on the next attempt."""

    @functools.wraps(read)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        for attempt in range(_READ_ATTEMPTS - 1):
            try:
                return read(*args, **kwargs)
            except (sa.exc.OperationalError, sa.exc.InterfaceError):
                time.sleep(0.25 * min(attempt + 1, 4))
        return read(*args, **kwargs)  # the last attempt's error is the harness's to report

    return wrapper


__all__ = [
    "PROFILES", "Profile", "Run", "chaos_database", "own_postgres", "own_redis", "world_for",
]  # fmt: skip

#: what the run's processes are told: everything that waits, short (the sweeper every 5 s,
#: polls every 5 s, tracking every 2 s, an idempotency key taken over after 10 s)
ENV = {
    "ORDERSYNC_POLL_INTERVAL_S": "5",
    "ORDERSYNC_TRACK_INTERVAL_S": "2",
    "ORDERSYNC_SWEEP_AFTER_S": "10",
    "ORDERSYNC_STUCK_AFTER_S": "10",
    "ORDERSYNC_IDEMPOTENCY_LOCK_TIMEOUT_S": "10",
    "ORDERSYNC_RETRY_BACKOFF_BASE_S": "0.2",
    "ORDERSYNC_RETRY_BACKOFF_MAX_S": "2",
    "ORDERSYNC_LOG_LEVEL": "WARNING",
}
QUEUES = ("intake", "orders", "sync", "documents", "outbound")
PIPELINE = {"new", "reserved", "paid", "documented"}
CANCEL_SHARE = 0.15
#: of the new Shopify orders (paid, not cancelled): edited in the admin; as many partly refunded
AFTER_SALES_SHARE = 0.15
#: the sandbox's raised ("fast") limits, told to our client as an account's own would be: at
#: Amazon's documented getOrders rate (one a minute once the burst is spent) a storm of 429s
#: leaves a poll waiting minutes, which the short profile cannot
SANDBOX_RATE_LIMITS: dict[str, dict[str, Any]] = {
    "amazon": {
        "getOrders": {"rate": 5.0, "burst": 20},
        "getOrderItems": {"rate": 50.0, "burst": 60},
    },
}
SECRET = "chaos-webhook-secret"  # noqa: S105  (signs the sandbox's webhooks)


@dataclass(frozen=True)
class Profile:
    name: str
    rounds: int  # rounds of load (orders from every marketplace each)
    per_channel: int  # orders per marketplace per round
    workers: int
    stall_s: float  # how long a SIGSTOPped worker stays stopped
    settle_timeout_s: float  # to reach ready / on hold after the load
    quiet_timeout_s: float  # to reach quiet after staff acted


PROFILES = {
    # every scenario at a small scale: a few minutes on two cores
    "short": Profile(
        "short",
        rounds=2,
        per_channel=2,
        workers=2,
        stall_s=8.0,
        settle_timeout_s=90.0,
        quiet_timeout_s=90.0,
    ),
    # release checks: more orders, more workers, a worker stopped past the lock TTL (120 s)
    "long": Profile(
        "long",
        rounds=6,
        per_channel=6,
        workers=3,
        stall_s=130.0,
        settle_timeout_s=600.0,
        quiet_timeout_s=600.0,
    ),
}


@contextmanager
def chaos_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database for one run, dropped after: (url, name)."""
    name = f"ordersync_chaos_{uuid.uuid4().hex[:10]}"
    # pinged: the server may have been restarted under the pooled connection (postgres_restart)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False), name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def own_redis(directory: Path) -> Iterator[RedisServer]:
    """A redis-server of the run's own on a free port (never the machine's shared one): the
    redis scenario kills and restarts it."""
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def own_postgres(directory: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server of the run's own (the postgres scenario restarts it); removed after."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's initdb and pg_ctl are not installed (pg_config --bindir)")
    server = PostgresServer(directory, bin_dir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


@dataclass
class Run:
    """A running system under load, and what the run sent and saw."""

    world: World
    redis_server: RedisServer
    db_name: str
    admin_url: str
    profile: Profile
    rng: random.Random
    webhooks: bool = True
    accounts: dict[str, tuple[str, int]] = field(default_factory=dict)  # channel → (name, id)
    sent: list[tuple[str, str]] = field(default_factory=list)  # (channel, external id)
    acknowledged: set[tuple[int, str]] = field(default_factory=set)
    poison: set[tuple[int, str]] = field(default_factory=set)
    #: deliveries kept to be sent again later (stale retries): (channel, headers, body)
    kept: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    worker_seq: int = 0
    rounds_loaded: int = 0
    unreadable_pushed: int = 0  # queue items that are not messages (poison)
    killed: set[str] = field(default_factory=set)  # processes the scenario killed on purpose
    postgres_server: PostgresServer | None = None  # the run's own, when the scenario has one
    #: held while workers are killed and replaced: two faults at once must not both replace
    #: the same victims (the run would end with twice the profile's workers, then more)
    workers_lock: threading.RLock = field(default_factory=threading.RLock)
    _polled_at: float = 0.0

    # -- setup -------------------------------------------------------------------------------

    def connect_accounts(self) -> None:
        sandbox = self.world.sandbox
        with self.world.maker() as session, session.begin():
            for channel, spec in sandbox.accounts(SECRET).items():
                account = ChannelAccount(
                    name=f"chaos-{channel}",
                    channel=channel,
                    shop=spec.shop,
                    api_base_url=spec.api_base_url,
                    credentials=spec.credentials,
                    webhook_secret=spec.webhook_secret,
                    poll_cursor=None,
                    rate_limits=SANDBOX_RATE_LIMITS.get(channel, {}),
                )
                session.add(account)
                session.flush()
                self.accounts[channel] = (account.name, account.id)
            # enough for most of the run; the rest waits on hold until staff count more
            total = self.profile.rounds * self.profile.per_channel * 4
            for sku in sorted(_demo_skus(sandbox)):
                set_on_hand(session, sku, max(2, total // 3))

        # the marketplaces' listings of our SKUs, found and recorded as an operator would
        def sync(name: str) -> None:
            subprocess.run(
                [sys.executable, "-m", "ordersync", "listings", "sync", name],
                env=self.world.stack.env,
                check=True,
                capture_output=True,
                timeout=60,
            )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(sync, [name for name, _ in self.accounts.values()]))

    # -- load --------------------------------------------------------------------------------

    def load_round(self) -> None:
        """New orders in every marketplace; webhooks for those that send them."""
        n = self.profile.per_channel
        sandbox = self.world.sandbox
        shopify_new = sandbox.shopify.add_orders(n)
        for ext in shopify_new:
            self.sent.append(("shopify", ext))
            self.deliver("shopify", *sandbox.shopify.webhook_delivery(ext, "orders/create", SECRET))
            if self.rng.random() < 0.2:  # cancelled in the Shopify admin before we shipped
                sandbox.shopify.touch_order(ext, cancel=True)
                self.deliver(
                    "shopify", *sandbox.shopify.webhook_delivery(ext, "orders/cancelled", SECRET)
                )
        for ext in sandbox.woocommerce.add_orders(n):
            self.sent.append(("woocommerce", ext))
            self.deliver(
                "woocommerce", *sandbox.woocommerce.webhook_delivery(ext, "order.created", SECRET)
            )
        self.sent += [("amazon", ext) for ext in sandbox.add_amazon_orders(n)]
        sandbox.pay_pending_amazon_orders()
        self.sent += [("ebay", ext) for ext in sandbox.ebay.add_orders(n)]
        # the buyers who had not paid at checkout pay (as in the demo): the shops say so
        accounts = {channel: name for channel, (name, _) in self.accounts.items()}
        for path, headers, body in _pay_pending(sandbox, accounts, SECRET).deliveries:
            self.deliver(path.split("/")[2], headers, body)
        self.rounds_loaded += 1
        self.after_sales(shopify_new, last=self.rounds_loaded >= self.profile.rounds)

    def after_sales(self, external_ids: list[str], *, last: bool) -> None:
        """Some of the new Shopify orders, paid and not cancelled, are edited in the admin (a
        line added: ``orders/edited`` and ``orders/updated``) and some partly refunded (one
        unit of a line, restocked: ``refunds/create`` and ``orders/updated``), while our
        pipeline is at them; counted as "edits" and "refunds". At least one of each in a run
        (the last round makes it if the dice did not), so the short profile has them too."""
        shop = self.world.sandbox.shopify
        open_ = [ext for ext in external_ids if self._open_paid(ext)]
        edits = [ext for ext in external_ids if self.rng.random() < AFTER_SALES_SHARE]
        refunds = [ext for ext in external_ids if self.rng.random() < AFTER_SALES_SHARE]
        edits, refunds = [e for e in edits if e in open_], [e for e in refunds if e in open_]
        if last:
            earlier = [ext for c, ext in self.sent if c == "shopify" and self._open_paid(ext)]
            if not self.faults["edits"] and not edits and earlier:
                edits.append(self.rng.choice(earlier))
            if not self.faults["refunds"] and not refunds and earlier:
                refunds.append(self.rng.choice(earlier))
        for ext in edits:
            made = shop.edit_add_line(ext, self.rng.choice(sorted(shop.skus)), 1)
            self.deliver("shopify", *shop.edit_delivery(made, SECRET))
            self.deliver("shopify", *shop.webhook_delivery(ext, "orders/updated", SECRET))
            self.faults["edits"] += 1
        for ext in refunds:
            items = shop.orders[ext]["line_items"]
            lines = [i for i, item in enumerate(items)
                     if int(item.get("current_quantity", item["quantity"])) > 0]  # fmt: skip
            if not lines:
                continue
            back = shop.refund_line(ext, self.rng.choice(lines), 1, restock=True)
            self.deliver("shopify", *shop.refund_delivery(back, SECRET))
            self.deliver("shopify", *shop.webhook_delivery(ext, "orders/updated", SECRET))
            self.faults["refunds"] += 1

    def _open_paid(self, external_id: str) -> bool:
        """Paid at Shopify (not only authorised) and not cancelled."""
        order = self.world.sandbox.shopify.orders[external_id]
        return not order.get("cancelled_at") and order["financial_status"] in (
            "paid", "partially_refunded",
        )  # fmt: skip

    def deliver(
        self, channel: str, headers: dict[str, str], body: bytes, *, keep: bool = True
    ) -> int:
        """POST one webhook as the marketplace would (retrying what was not answered 2xx a
        few times); records what was acknowledged. Webhooks off: kept, not sent."""
        if keep:
            self.kept.append((channel, headers, body))
        if not self.webhooks:
            return 0
        name, account_id = self.accounts[channel]
        receiver = registry.get(channel).webhooks
        assert receiver is not None
        status = 599
        for attempt in range(6):
            try:
                status = httpx.post(
                    f"{self.world.stack.base_url}/webhooks/{channel}/{name}",
                    content=body,
                    headers=headers,
                    timeout=15,
                ).status_code
            except httpx.TransportError:
                status = 599
            if status < 500:
                break
            time.sleep(0.2 * 2**attempt)
        if 200 <= status < 300:
            self.acknowledged.add((account_id, receiver.dedupe_key(headers, body)[:255]))
        return status

    def skus(self) -> list[str]:
        return sorted(_demo_skus(self.world.sandbox))

    def restock(self) -> None:
        """Staff count more stock through the API (orders on hold are released)."""
        for sku in self.skus():
            self.staff("PUT", f"/stock/{sku}", params={"on_hand": 10_000})

    def staff(self, method: str, path: str, **kwargs: Any) -> int:
        """A staff API call, retried while the answer is a 5xx or no answer (faults)."""
        for attempt in range(8):
            try:
                code = self.world.api(method, path, **kwargs).status_code
            except httpx.TransportError:
                code = 599
            if code < 500:
                return code
            self.faults["staff call refused (5xx), retried"] += 1
            time.sleep(0.25 * 2 ** min(attempt, 4))
        return code

    @_retried
    def ready_orders(self) -> list[tuple[int, str]]:
        with self.world.maker() as session:
            return [
                (order_id, channel)
                for order_id, channel in session.execute(
                    select(Order.id, Order.channel)
                    .where(
                        Order.channel_account_id.in_(self.account_ids()),
                        Order.state == "ready_to_ship",
                    )
                    .order_by(Order.id)
                )
            ]

    def staff_act(self) -> int:
        """Cancel a share of the ready orders (where the seller may), ship the rest."""
        ready = self.ready_orders()

        def act(row: tuple[int, str]) -> int:
            order_id, channel = row
            if registry.get(channel).seller_cancels and self.rng.random() < CANCEL_SHARE:
                return self.staff(
                    "POST",
                    f"/orders/{order_id}/cancel",
                    json={"reason": "chaos: the buyer changed their mind"},
                )
            return self.staff("POST", f"/orders/{order_id}/ship")

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(act, ready))
        refused = Counter(c for c in codes if c != 200)
        for code, n in refused.items():
            self.notes.append(f"{n} staff actions answered {code}")
        return len(ready)

    # -- waiting -----------------------------------------------------------------------------

    def account_ids(self) -> list[int]:
        return [i for _, i in self.accounts.values()]

    @_retried
    def states(self) -> Counter[str]:
        with self.world.maker() as session:
            return Counter(
                dict(
                    session.execute(
                        select(Order.state, func.count())
                        .where(Order.channel_account_id.in_(self.account_ids()))
                        .group_by(Order.state)
                    ).all()
                )
            )

    @_retried
    def parked_polls(self, channel: str) -> int:
        """Sync runs of the channel's account parked by a marketplace's Retry-After."""
        with self.world.maker() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(SyncRun)
                    .where(
                        SyncRun.channel_account_id == self.accounts[channel][1],
                        SyncRun.status == "parked",
                    )
                )
                or 0
            )

    @_retried
    def pending_outbox(self) -> int:
        with self.world.maker() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.status == "pending")
                )
                or 0
            )

    @_retried
    def _waiting(self) -> int:
        """Inbox rows, outbox messages and stock pushes still to do."""
        with self.world.maker() as session:
            dirty = session.scalar(
                select(func.count())
                .select_from(Listing)
                .where(
                    Listing.channel_account_id.in_(self.account_ids()),
                    Listing.want_version > Listing.pushed_version,
                    Listing.fulfilled_by_marketplace.is_(False),
                )
            )
            inbox = session.scalar(
                select(func.count())
                .select_from(InboxEvent)
                .where(
                    InboxEvent.channel_account_id.in_(self.account_ids()),
                    InboxEvent.status == "received",
                )
            )
            outbox = session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.status == "pending")
            )
        return int(inbox or 0) + int(outbox or 0) + int(dirty or 0)

    def settled(self) -> bool:
        """Every order the marketplaces made is ours and out of the pipeline."""
        states = self.states()
        return (
            sum(states.values()) >= len(self.sent)
            and not any(states[s] for s in PIPELINE)
            and not self._waiting()
        )

    def quiet(self) -> bool:
        states = self.states()
        return (
            sum(states.values()) >= len(self.sent)
            and all(s in FINAL_STATES for s in states)
            and not self._waiting()
        )

    def poll_now(self) -> None:
        """What Beat sends every minute (``poll_due``: accounts whose poll is due), sent now:
        the run's poll interval is 5 s, Beat's tick for it 60 s. Best effort (Redis may be
        down: the next call sends it)."""
        now = time.monotonic()
        if now - self._polled_at < 3.0:
            return
        self._polled_at = now
        from celery import Celery

        probe = Celery("chaos", broker=self.redis_server.url)
        try:
            probe.send_task("ordersync.sync.poll_due", queue="sync", expires=30, retry=False)
        except Exception as exc:  # the broker is down on purpose: the next call sends it
            self.faults[f"poll not sent ({type(exc).__name__})"] += 1
        finally:
            probe.close()

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            self.poll_now()
            time.sleep(0.5)
        self.notes.append(f"timed out after {timeout_s:.0f} s waiting for {what}")
        return False

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, socket_connect_timeout=2)

    def drained(self) -> bool:
        client = self.redis()
        try:
            return not sum(int(client.llen(q)) for q in QUEUES) and not client.hlen("unacked")
        except redis.RedisError:
            return False
        finally:
            client.close()

    def keep_evidence(self, path: Path) -> None:
        """What a broken run leaves to read before its database is dropped: every row of the
        tables the invariants read (orders and their timelines, payments, invoices, shipments,
        labels, idempotency keys, outbox rows), and the sandbox's money and label ledgers, as
        JSON in ``path``."""
        import json

        def plain(row: Any) -> dict[str, Any]:  # a PDF is its size
            return {k: f"<{len(v)} bytes>" if isinstance(v, bytes) else v
                    for k, v in dict(row).items()}  # fmt: skip

        tables = (Order, OrderEvent, Payment, Invoice, Shipment, Label, IdempotencyKey,
                  OutboxMessage)  # fmt: skip
        evidence: dict[str, Any] = {}
        with self.world.maker() as session:
            for model in tables:
                rows = session.execute(select(model.__table__))
                evidence[model.__tablename__] = [plain(r._mapping) for r in rows]
        sandbox = self.world.sandbox
        evidence["sandbox"] = {
            "captures": list(sandbox.payments.captures),
            "shopify_captures": dict(sandbox.shopify.captures),
            "shopify_transactions": dict(sandbox.shopify.transactions),
            "carrier_labels": [plain(vars(r)) for r in list(sandbox.carrier.labels.values())],
        }
        path.write_text(json.dumps(evidence, indent=1, default=str))

    def held(self) -> list[str]:
        """What the unacked messages are (task, retries, eta): why the queues are not empty."""
        import json

        client = self.redis()
        try:
            out = []
            for raw in client.hvals("unacked"):
                try:
                    headers = json.loads(raw)[0]["headers"]
                    out.append(
                        f"{headers.get('task')} retries={headers.get('retries')} "
                        f"eta={headers.get('eta')} args={headers.get('argsrepr')}"
                    )
                except (ValueError, KeyError, IndexError, TypeError):
                    out.append("(unreadable)")
            return out
        finally:
            client.close()

    def busy(self) -> list[str]:
        """What each live worker runs and holds reserved now (``inspect``): who holds what the
        queues wait for, when they do not drain."""
        from celery import Celery

        probe = Celery("chaos", broker=self.redis_server.url)
        try:
            inspect = probe.control.inspect(timeout=3.0)
            active, reserved = inspect.active() or {}, inspect.reserved() or {}
        except Exception as exc:  # a note, not a failure of its own
            return [f"no answer from the workers ({type(exc).__name__})"]
        finally:
            probe.close()
        out = []
        for worker in sorted(set(active) | set(reserved)):
            running = [f"{t.get('name')}{t.get('args')} pid={t.get('worker_pid')}"
                       for t in active.get(worker) or []]  # fmt: skip
            waiting = [f"{t.get('name')}{t.get('args')}" for t in reserved.get(worker) or []]
            out.append(f"{worker}: running {running or 'nothing'}; reserved {waiting or 'none'}")
        return out or ["no worker answered"]

    def stop_beats(self) -> list[str]:
        """Beat stops before the facts are read: a scheduled poll is not a leftover. Returns
        the Beats that were still running 20 s after SIGTERM (killed then): a finding of the
        run, which still reads its facts."""
        stuck = []
        for child in self.world.stack.group.children:
            if child.name.startswith("beat") and child.process and child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
                try:
                    child.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(child.process.pid, signal.SIGKILL)
                    child.process.wait()
                    stuck.append(f"{child.name} (still running 20 s after SIGTERM; killed)")
        return stuck

    # -- workers -----------------------------------------------------------------------------

    def live_workers(self) -> list[Any]:
        return [
            c
            for c in self.world.stack.group.children
            if c.name.startswith("worker") and c.process and c.process.poll() is None
        ]

    def start_worker(self) -> None:
        self.worker_seq += 1
        self.world.stack.group.start(f"worker-r{self.worker_seq}", ["worker", "--concurrency", "2"])

    def replace_killed_workers(self) -> None:
        """As many live workers as the profile's again: one started per worker gone."""
        with self.workers_lock:
            for _ in range(self.profile.workers - len(self.live_workers())):
                self.start_worker()

    # -- facts -------------------------------------------------------------------------------

    def facts(self) -> Facts:
        f = Facts(acknowledged=set(self.acknowledged), poison=set(self.poison))
        f.sandbox_orders = set(self.sent)
        ids = self.account_ids()
        with self.world.maker() as session:
            run_orders = select(Order.id).where(Order.channel_account_id.in_(ids))
            for oid, channel, ext, state in session.execute(
                select(Order.id, Order.channel, Order.external_id, Order.state).where(
                    Order.channel_account_id.in_(ids)
                )
            ):
                f.orders[oid] = (channel, str(ext), state)
            f.transitions = [
                (oid, a, b)
                for oid, a, b in session.execute(
                    select(OrderEvent.order_id, OrderEvent.from_state, OrderEvent.to_state)
                    .where(OrderEvent.order_id.in_(run_orders))
                    .order_by(OrderEvent.id)
                )
            ]
            for oid, amount, by_mp, status in session.execute(
                select(
                    Payment.order_id,
                    Payment.amount,
                    Payment.collected_by_marketplace,
                    Payment.status,
                ).where(Payment.order_id.in_(run_orders))
            ):
                if status in ("captured", "succeeded", "collected", "paid"):
                    f.payments[oid] = (Decimal(amount), bool(by_mp))
                else:
                    self.notes.append(f"payment of order {oid}: {status}")
            f.money_mismatches = [
                f"order {m.order_id}: {'; '.join(m.reasons)}" for m in money_check(session, ids)
            ]
            shown = self.world.sandbox.channel_stock()
            for listing, account in session.execute(
                select(Listing, ChannelAccount)
                .join(ChannelAccount, ChannelAccount.id == Listing.channel_account_id)
                .where(
                    Listing.channel_account_id.in_(ids), Listing.fulfilled_by_marketplace.is_(False)
                )
            ).all():
                want = quantity_for(session, listing, account)
                if want is not None:
                    f.channel_stock[(account.channel, listing.sku)] = (
                        shown[account.channel].get(listing.sku),
                        want,
                    )
            for series, number in session.execute(select(Invoice.series, Invoice.number)):
                f.invoice_numbers.setdefault(series, []).append(number)
            f.invoice_counters = dict(
                session.execute(select(InvoiceCounter.series, InvoiceCounter.next_number)).all()
            )
            for sid, oid, status, tracking in session.execute(
                select(Shipment.id, Shipment.order_id, Shipment.status, Shipment.tracking_number)
            ):
                f.shipments[sid] = (oid, status, tracking)
            f.labels = [
                (sid, tracking, voided is not None)
                for sid, tracking, voided in session.execute(
                    select(Label.shipment_id, Label.tracking_number, Label.voided_at)
                )
            ]
            f.stock = {
                sku: (on_hand, reserved)
                for sku, on_hand, reserved in session.execute(
                    select(StockItem.sku, StockItem.on_hand, StockItem.reserved)
                )
            }
            for key, dedupe, status, attempts in session.execute(
                select(
                    InboxEvent.channel_account_id,
                    InboxEvent.dedupe_key,
                    InboxEvent.status,
                    InboxEvent.attempts,
                )
            ):
                f.inbox[(key, dedupe)] = (status, attempts)
            f.unfinished_keys = [
                k
                for (k,) in session.execute(
                    select(IdempotencyKey.key).where(
                        IdempotencyKey.recovery_point.not_in(("finished", "rejected"))
                    )
                )
            ]
            for i, kind, outbox_status, error in session.execute(
                select(
                    OutboxMessage.id,
                    OutboxMessage.kind,
                    OutboxMessage.status,
                    OutboxMessage.last_error,
                ).where(OutboxMessage.status.in_(("pending", "failed")))
            ):
                f.undelivered_outbox.append(i)
                self.notes.append(f"outbox {i} ({kind}) {outbox_status}: {(error or '')[:120]}")
        sandbox = self.world.sandbox
        f.captures = _ledger_captures(sandbox)
        f.carrier_labels = [
            (r.label_id, r.external_shipment_id, r.tracking_number, r.voided)
            for r in list(sandbox.carrier.labels.values())
        ]
        f.fulfilments = _ledger_fulfilments(sandbox)
        client = self.redis()
        try:
            f.lock_keys = sorted(k.decode() for k in client.scan_iter("ordersync:lock:*"))
            f.queued = {q: int(client.llen(q)) for q in QUEUES}
            f.queued["unacked"] = int(client.hlen("unacked"))
            f.dead_letters = int(client.llen(DEAD_LETTERS))
            f.unreadable_pushed = self.unreadable_pushed
        finally:
            client.close()
        return f


def _ledger_captures(sandbox: Any) -> list[tuple[str, tuple[str, str], Decimal]]:
    """Captures at the payment provider (its ``order_ref`` is ``channel:external id``, the
    marketplace's authorization) and on Shopify (``orderCapture``). A Shopify capture counts
    with what the buyer paid Shopify for the order's edits after it (the edit's ``SALE``): the
    money Shopify holds for the order by our capture, which our payment follows
    (``orders.edits._follow_collection``); a captured order has no other SALE."""
    out = []
    for capture in list(sandbox.payments.captures):
        channel, _, ext = str(capture["order_ref"]).partition(":")
        out.append((str(capture["id"]), (channel, ext), Decimal(int(capture["amount"])) / 100))
    for key, capture in list(sandbox.shopify.captures.items()):
        ext = str(capture["order_id"])
        edits_paid = sum(
            (Decimal(tx["amountSet"]["presentmentMoney"]["amount"])
             for tx in list(sandbox.shopify.transactions.get(ext, []))
             if tx["kind"] == "SALE" and tx["status"] == "SUCCESS"),
            Decimal(0),
        )  # fmt: skip
        out.append((str(key), ("shopify", ext), Decimal(capture["amount"]) + edits_paid))
    return out


def _ledger_fulfilments(sandbox: Any) -> Counter[tuple[str, str]]:
    """Fulfilments per (channel, external order id) as each marketplace counts them."""
    out: Counter[tuple[str, str]] = Counter()
    for fulfilment in list(sandbox.shopify.fulfillments):
        out[("shopify", str(fulfilment["order_id"]).rsplit("/", 1)[-1])] += 1
    for key, notes in list(sandbox.woocommerce.ledger.items()):
        if key.startswith("note:"):
            out[("woocommerce", key.removeprefix("note:"))] += len(notes)
    for order_id, _ in list(sandbox.amazon.shipments):
        out[("amazon", str(order_id))] += 1
    for order_id, _ in list(sandbox.ebay.ledger):
        out[("ebay", str(order_id))] += 1
    return out


@contextmanager
def world_for(
    admin_url: str, var_dir: Path, *, seed: int, workers: int, extra_env: dict[str, str]
) -> Iterator[tuple[World, RedisServer, str]]:
    """A fresh database, an own redis-server and the running system on them."""
    with chaos_database(admin_url) as (url, name), own_redis(var_dir / "redis") as server:
        with running_world(
            url,
            server.url,
            var_dir,
            seed=seed,
            workers=workers,
            beat=True,
            extra_env={**ENV, **extra_env},
        ) as world:
            yield world, server, name
