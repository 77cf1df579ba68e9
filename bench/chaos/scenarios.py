"""The chaos scenarios: each a fault injected into a run under load (``--scenario NAME``).

A scenario may set the processes' environment (``env``; ``injector_env`` arms the crash
injector of ``bench/chaos/inject`` in the workers), switch the webhooks off, and hook into the
run: ``start`` (before the load), ``during`` (after each round of load, and once while staff
act: ``round == -1``), ``heal`` (the fault ends; the system must then reach quiet on its own)
and ``finish`` (after the facts were read). Every fault injected is counted in ``run.faults``.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from bench.chaos.harness import Run
from integrations.shopify.webhooks import sign

__all__ = ["SCENARIOS", "Scenario", "make"]

#: the crash injector (``bench/chaos/inject/sitecustomize.py``), first on the workers' path
INJECT = Path(__file__).resolve().parent / "inject"
ROOT = Path(__file__).resolve().parents[2]
KILL_MARKER = "chaos:no-worker-survives-this"


def injector_env(**settings: str) -> dict[str, str]:
    """The processes' environment that arms the crash injector with ``settings`` (its
    ``ORDERSYNC_CHAOS_*``), its kills logged to a file of this run's own."""
    log = Path(tempfile.gettempdir()) / f"ordersync-chaos-{uuid.uuid4().hex[:10]}.kills"
    return {"PYTHONPATH": f"{INJECT}{os.pathsep}{ROOT}", "ORDERSYNC_CHAOS_LOG": str(log),
            **settings}  # fmt: skip


def kills(env: dict[str, str]) -> Counter[str]:
    """The injector's kills so far, by point (``before POST /x`` → ``before call``)."""
    try:
        lines = Path(env["ORDERSYNC_CHAOS_LOG"]).read_text().splitlines()
    except OSError:
        return Counter()
    points = (line.split(" ", 1)[1] for line in lines if " " in line)
    return Counter(f"{p.split(' ')[0]} an outside call" if "/" in p else p for p in points)


@dataclass
class Scenario:
    name: str = "baseline"
    doc: str = "no fault: the load alone (what every other scenario is compared with)"
    env: dict[str, str] = field(default_factory=dict)
    webhooks: bool = True
    own_postgres: bool = False  # a PostgreSQL server of the run's own (``run.postgres_server``)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, run: Run) -> None:
        run.webhooks = self.webhooks

    def during(self, run: Run, round: int) -> None:
        pass

    def heal(self, run: Run) -> None:
        for thread in self.threads:
            thread.join()
        self.threads.clear()

    def finish(self, run: Run) -> None:
        """After the facts: the crash injector's kills (if it was armed) become faults."""
        if "ORDERSYNC_CHAOS_LOG" not in self.env:
            return
        for point, n in kills(self.env).items():
            run.faults[f"worker SIGKILLed {point}"] = n
        Path(self.env["ORDERSYNC_CHAOS_LOG"]).unlink(missing_ok=True)

    def background(self, target: object) -> None:
        thread = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self.threads.append(thread)


class WorkerKill(Scenario):
    """SIGKILL of a whole worker (main process and pool) at a random moment, a new one started:
    what it held is unacknowledged and must be put back by the sweeper, charged once."""

    def during(self, run: Run, round: int) -> None:
        def kill() -> None:
            time.sleep(run.rng.uniform(0.2, 1.5))
            with run.workers_lock:
                workers = run.live_workers()
                if not workers:
                    return
                victim = run.rng.choice(workers)
                os.killpg(victim.process.pid, signal.SIGKILL)
                victim.process.wait()
                run.faults["worker SIGKILL"] += 1
                run.killed.add(victim.name)
                run.replace_killed_workers()

        self.background(kill)


class CrashPoints(Scenario):
    """SIGKILL of every worker at a crash point: the payment provider has applied a capture
    (and holds its answer 1.5 s), or the carrier is buying a label (1.5 s), when the workers
    die; new ones start. The charge or label exists outside and not in our database: the
    retry must find it, not make a second one."""

    def start(self, run: Run) -> None:
        super().start(run)
        run.world.sandbox.payments.reply_delay_s = 1.5
        run.world.sandbox.carrier.apply_latency_s = 1.5

    def during(self, run: Run, round: int) -> None:
        if round < 0:  # staff at work: nothing is captured or bought any more
            return
        sandbox = run.world.sandbox
        at_capture = round % 2 == 0  # the rounds take turns

        def reached() -> bool:
            if at_capture:
                return len(sandbox.payments.captures) > captures
            # a purchase whose key is taken and whose answer is not made yet (the carrier
            # simulator keeps no public "in flight" view: its key table is read as is)
            return any(k.body is None for k in list(sandbox.carrier._keys.values()))

        def crash() -> None:
            deadline = time.monotonic() + 20
            while not reached():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            point = "after a capture, before its answer" if at_capture else "mid label purchase"
            # one crash at a time: two rounds' threads that reach their points together kill
            # the workers once, and replace them once
            with run.workers_lock:
                workers = run.live_workers()
                for victim in workers:
                    os.killpg(victim.process.pid, signal.SIGKILL)
                    run.killed.add(victim.name)
                for victim in workers:
                    victim.process.wait()
                run.replace_killed_workers()
                run.faults[f"all workers SIGKILLed {point}"] += 1

        captures = len(sandbox.payments.captures)
        self.background(crash)

    def heal(self, run: Run) -> None:
        super().heal(run)
        run.world.sandbox.payments.reply_delay_s = 0.0
        run.world.sandbox.carrier.apply_latency_s = 0.0


class WorkerStall(Scenario):
    """SIGSTOP a worker (the long profile: past the lock TTL), then SIGCONT: the others take
    its work over; when it wakes, what it was doing must not happen twice."""

    def during(self, run: Run, round: int) -> None:
        if round != 0 and round != -1:
            return

        def stall() -> None:
            time.sleep(run.rng.uniform(0.2, 1.0))
            workers = run.live_workers()
            if not workers:
                return
            victim = run.rng.choice(workers)
            os.killpg(victim.process.pid, signal.SIGSTOP)
            run.faults["worker SIGSTOP"] += 1
            time.sleep(run.profile.stall_s)
            os.killpg(victim.process.pid, signal.SIGCONT)

        self.background(stall)


#: the marketplace writes whose next answers DropAfterApply drops, per simulator: (how many,
#: operations); the orders' writes twice each, the stock pushes once
MARKETPLACE_DROPS: dict[str, list[tuple[int, tuple[str, ...]]]] = {
    "woocommerce": [
        (2, ("add_note", "update_order", "create_refund")),
        (1, ("batch_products", "batch_variations")),
    ],
    "amazon": [(2, ("confirmShipment",)), (1, ("patchListingsItem", "createFeed"))],
    "ebay": [
        (2, ("createShippingFulfillment", "createCancellation")),
        (1, ("bulkUpdatePriceQuantity",)),
    ],
}


class DropAfterApply(Scenario):
    """The payment provider, the carrier and every marketplace's writes (Shopify's
    fulfilments; WooCommerce's notes, status updates, refunds and stock; Amazon's shipment
    confirmations and stock; eBay's fulfilments, cancellations and stock) apply the request,
    then the connection drops before the answer: the retry must find what was done, not do
    it again."""

    def start(self, run: Run) -> None:
        super().start(run)
        sandbox = run.world.sandbox
        # every first answer dropped (a retry with the same key is answered from the
        # provider's store, as Stripe and ShipEngine do)
        sandbox.payments.drop_after_apply_rate = 1.0
        sandbox.carrier.drop_after_apply_rate = 1.0
        sandbox.shopify.drop_fulfillment_answers = 3
        for channel, drops in MARKETPLACE_DROPS.items():
            for n, operations in drops:
                getattr(sandbox, channel).drop_write_answers.arm(n, *operations)

    def heal(self, run: Run) -> None:
        super().heal(run)
        # the fulfilments staff caused go out through the outbox: the knob stays until then
        run.wait(lambda: not run.pending_outbox(), 30, "the fulfilments to go out")
        sandbox = run.world.sandbox
        run.faults["payments dropped after apply"] = sandbox.payments.stats["dropped"]
        run.faults["shopify fulfilments dropped"] = 3 - sandbox.shopify.drop_fulfillment_answers
        for channel in MARKETPLACE_DROPS:
            drops = getattr(sandbox, channel).drop_write_answers
            for operation, n in sorted(drops.dropped.items()):
                run.faults[f"{channel} {operation} dropped"] = n
            drops.clear()
        sandbox.payments.drop_after_apply_rate = 0.0
        sandbox.carrier.drop_after_apply_rate = 0.0
        sandbox.shopify.drop_fulfillment_answers = 0

    def during(self, run: Run, round: int) -> None:
        if round == -1:  # the carrier keeps no counter: every label's first answer is dropped
            run.faults["carrier answers dropped"] = run.world.sandbox.carrier.label_count()


class RedisRestart(Scenario):
    """The run's redis-server killed and started again, empty (messages, chord counters,
    locks and Beat's schedule gone): mid-load, mid-chord (while a label is being bought, the
    invoice beside it: the chord's header in flight) and while staff act."""

    def start(self, run: Run) -> None:
        super().start(run)
        run.world.sandbox.carrier.apply_latency_s = 1.0  # a label purchase takes a second

    def during(self, run: Run, round: int) -> None:
        if round == 1:
            carrier = run.world.sandbox.carrier
            # the carrier keeps no public "in flight" view: its key table is read as is
            if run.wait(lambda: any(k.body is None for k in list(carrier._keys.values())),
                        20, "a label purchase in flight"):  # fmt: skip
                self._restart(run, "redis killed mid-chord")
            return
        if round in (0, -1):
            time.sleep(run.rng.uniform(0.3, 1.0))
            self._restart(run, "redis killed")

    def _restart(self, run: Run, what: str) -> None:
        run.redis_server.stop()
        run.faults[what] += 1
        time.sleep(2.0)
        run.redis_server.start()

    def heal(self, run: Run) -> None:
        super().heal(run)
        run.world.sandbox.carrier.apply_latency_s = 0.0


class RedisSlow(Scenario):
    """Redis stalls: every client paused for 400 ms out of every 600 ms (``CLIENT PAUSE``),
    for four seconds each round of load and while staff act: locks, publishes and chord
    counters all wait, past the clients' socket timeouts now and then."""

    def during(self, run: Run, round: int) -> None:
        def stall() -> None:
            client = run.redis()
            try:
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    client.client_pause(400, all=True)
                    run.faults["redis paused 400 ms"] += 1
                    time.sleep(0.6)
            finally:
                client.close()

        self.background(stall)


class PostgresTerminate(Scenario):
    """Every connection to the run's database terminated (pg_terminate_backend), several
    times, mid-load and while staff act: the transactions in flight are lost."""

    def during(self, run: Run, round: int) -> None:
        def terminate() -> None:
            admin = sa.create_engine(run.admin_url, isolation_level="AUTOCOMMIT")
            try:
                for _ in range(3):
                    time.sleep(run.rng.uniform(0.2, 0.8))
                    with admin.connect() as conn:
                        killed = conn.execute(
                            sa.text(
                                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = :db AND pid <> pg_backend_pid()"
                            ),
                            {"db": run.db_name},
                        ).scalar_one()
                    run.faults["postgres backends terminated"] += int(killed)
            finally:
                admin.dispose()

        self.background(terminate)


class PostgresRestart(Scenario):
    """The run's own PostgreSQL server killed (``pg_ctl stop -m immediate``: every backend
    gone mid-transaction, crash recovery at the start) and down for three seconds, mid-load
    and while staff act."""

    def during(self, run: Run, round: int) -> None:
        if round not in (0, -1):
            return
        server = run.postgres_server
        assert server is not None
        time.sleep(run.rng.uniform(0.3, 1.0))
        server.stop("immediate")
        run.faults["postgres killed and restarted"] += 1
        time.sleep(3.0)
        server.start()


class WebhookStorm(Scenario):
    """One delivery 50 times at once; an update before its create (out of order); after the
    staff acted, every old delivery again, as a retry and under a new webhook id (stale)."""

    def during(self, run: Run, round: int) -> None:
        sandbox = run.world.sandbox
        if round == -1:
            self._stale(run)
            return
        ext = sandbox.shopify.add_orders(1)[0]
        run.sent.append(("shopify", ext))
        created = sandbox.shopify.webhook_delivery(ext, "orders/create", "chaos-webhook-secret")
        with ThreadPoolExecutor(50) as pool:
            list(pool.map(lambda _: run.deliver("shopify", *created, keep=False), range(50)))
        run.faults["same webhook x50"] += 50
        # out of order: an edit's update arrives before the order's create
        ext = sandbox.shopify.add_orders(1)[0]
        run.sent.append(("shopify", ext))
        first = sandbox.shopify.webhook_delivery(ext, "orders/create", "chaos-webhook-secret")
        sandbox.shopify.touch_order(ext)
        update = sandbox.shopify.webhook_delivery(ext, "orders/updated", "chaos-webhook-secret")
        run.deliver("shopify", *update)
        run.deliver("shopify", *first)
        run.faults["out-of-order pair"] += 1

    def _stale(self, run: Run) -> None:
        def again(item: tuple[str, dict[str, str], bytes]) -> None:
            channel, headers, body = item
            run.deliver(channel, headers, body, keep=False)  # the marketplace retries
            fresh = dict(headers)
            for name in ("X-Shopify-Webhook-Id", "X-WC-Webhook-Delivery-ID"):
                if name in fresh:
                    fresh[name] = (
                        str(uuid.uuid4())
                        if "Shopify" in name
                        else str(run.rng.randrange(10**8, 10**9))
                    )
            run.deliver(channel, fresh, body, keep=False)  # an old payload, a new id

        kept = list(run.kept)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(again, kept))
        run.faults["stale redeliveries"] += 2 * len(kept)


class WebhooksOff(Scenario):
    """No webhook arrives at all: the polls must find every order."""


class MarketplaceFaults(Scenario):
    """Every sandbox API (marketplaces, payments, carrier) answers 429 (Retry-After 1 s), 503,
    200 with its JSON cut short, or hangs past the client's timeout, at random, and the next
    20 requests are throttled, during the load and staff work."""

    def start(self, run: Run) -> None:
        super().start(run)
        knobs = run.world.sandbox.knobs
        knobs.rate_429, knobs.error_rate, knobs.throttle_next = 0.25, 0.15, 20
        knobs.malformed_rate = 0.05
        # a request that hangs past our clients' 20 s read timeout now and then
        knobs.timeout_rate, knobs.timeout_s = 0.01, 21.0
        run.faults["throttled burst"] += 20

    def during(self, run: Run, round: int) -> None:
        run.world.sandbox.knobs.throttle_next = 20
        run.faults["throttled burst"] += 20

    def heal(self, run: Run) -> None:
        super().heal(run)
        knobs = run.world.sandbox.knobs
        knobs.rate_429 = knobs.error_rate = knobs.malformed_rate = knobs.timeout_rate = 0.0
        knobs.throttle_next = 0
        run.faults["429/503/JSON cut short/hung at random (25 %/15 %/5 %/1 %)"] = 1


class RetryAfterHours(Scenario):
    """WooCommerce answers a poll 429 with ``Retry-After: 7200``: the poll parks for two hours
    (no worker waits, the cursor stays), the webhooks still bring every order, and nothing
    else waits for the parked poll."""

    def start(self, run: Run) -> None:
        super().start(run)
        knobs = run.world.sandbox.knobs
        knobs.park_operations["list_orders"] = 1
        knobs.park_retry_after = "7200"

    def finish(self, run: Run) -> None:
        super().finish(run)
        run.faults["poll answered Retry-After 7200 s"] = (
            1 - run.world.sandbox.knobs.park_operations.get("list_orders", 0)
        )
        parked = run.parked_polls("woocommerce")
        run.faults["poll parked for it (sync runs parked)"] = parked
        if not parked:
            run.notes.append("the poll answered Retry-After 7200 s was not parked")


class Poison(Scenario):
    """Unreadable deliveries (signed, not JSON), a delivery that kills the worker that parses
    it, and a message in a queue that is not a task: the first two must end ``failed`` within
    the attempt bound, the last must be set aside, and none may loop or stop the workers."""

    def during(self, run: Run, round: int) -> None:
        if round == -1:
            return
        body = b'{"id": 1, "line_items": [ this is not json'
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Hmac-Sha256": sign("chaos-webhook-secret", body),
            "X-Shopify-Shop-Domain": run.world.sandbox.shopify.shop,
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        }
        self._send(run, "unreadable webhook", headers, body)
        # a webhook no worker survives (the injector kills the process that parses it): it
        # must be set aside after MAX_DELIVERIES, not redelivered forever
        body = json.dumps({"id": 1, "note": KILL_MARKER}).encode()
        headers = {**headers, "X-Shopify-Hmac-Sha256": sign("chaos-webhook-secret", body),
                   "X-Shopify-Webhook-Id": str(uuid.uuid4())}  # fmt: skip
        self._send(run, "webhook that kills its worker", headers, body)
        client = run.redis()
        try:
            client.lpush("orders", b"\x00\xffnot a celery message")
            client.lpush("intake", b'{"hello": "JSON, but not a message"}')
        finally:
            client.close()
        run.unreadable_pushed += 1  # the other one is JSON: Celery's to drop
        run.faults["unreadable queue items"] += 2

    @staticmethod
    def _send(run: Run, what: str, headers: dict[str, str], body: bytes) -> None:
        """Deliver one poison webhook; one accepted (2xx) must end failed within the bound."""
        from integrations import registry

        status = run.deliver("shopify", headers, body, keep=False)
        run.faults[f"{what} (answered {status})"] += 1
        if 200 <= status < 300:
            receiver = registry.get("shopify").webhooks
            assert receiver is not None
            run.poison.add((run.accounts["shopify"][1], receiver.dedupe_key(headers, body)))


class KillPoints(Scenario):
    """Pool processes SIGKILLed where a crash hurts most (``bench/chaos/inject``): before an
    outside call (marketplace, payment provider, carrier) is sent, after its answer came back
    and before it is recorded, before a commit and right after one (before its publishes);
    at random (2 %), up to a budget of kills. Each message must be redelivered and end once."""


class TwoBeats(Scenario):
    """A second Beat started by mistake beside the first."""

    def start(self, run: Run) -> None:
        super().start(run)
        run.world.stack.group.start("beat-2", ["beat"])
        run.faults["second beat"] += 1


class VisibilityTimeout(Scenario):
    """A worker stopped past ``visibility_timeout`` (60 s here): Redis hands what it held to
    another worker while it still "runs"; when it wakes, both finish the same task."""

    env_ = {
        "ORDERSYNC_VISIBILITY_TIMEOUT_S": "60",
        # the park and the hard limit within it; the soft limit is 30 s below the hard one
        "ORDERSYNC_PARK_AFTER_S": "10",
        "ORDERSYNC_TASK_TIME_LIMIT_S": "45",
        "ORDERSYNC_SYNC_SLICE_S": "10",
    }

    def during(self, run: Run, round: int) -> None:
        if round != 0:
            return

        def stall() -> None:
            workers = run.live_workers()
            victim = run.rng.choice(workers)
            os.killpg(victim.process.pid, signal.SIGSTOP)
            run.faults["worker stopped past visibility_timeout"] += 1
            time.sleep(65.0)
            os.killpg(victim.process.pid, signal.SIGCONT)

        self.background(stall)


def _all() -> dict[str, Scenario]:
    made = [
        Scenario(),
        WorkerKill("worker_kill", WorkerKill.__doc__ or ""),
        CrashPoints("crash_points", CrashPoints.__doc__ or ""),
        WorkerStall("worker_stall", WorkerStall.__doc__ or ""),
        DropAfterApply("drop_after_apply", DropAfterApply.__doc__ or ""),
        RedisRestart("redis_restart", RedisRestart.__doc__ or ""),
        RedisSlow("redis_slow", RedisSlow.__doc__ or ""),
        PostgresTerminate("postgres_terminate", PostgresTerminate.__doc__ or ""),
        PostgresRestart("postgres_restart", PostgresRestart.__doc__ or "", own_postgres=True),
        WebhookStorm("webhook_storm", WebhookStorm.__doc__ or ""),
        WebhooksOff("webhooks_off", WebhooksOff.__doc__ or "", webhooks=False),
        MarketplaceFaults("marketplace_faults", MarketplaceFaults.__doc__ or ""),
        RetryAfterHours("retry_after_hours", RetryAfterHours.__doc__ or ""),
        KillPoints(
            "kill_points",
            KillPoints.__doc__ or "",
            env=injector_env(ORDERSYNC_CHAOS_CRASH_RATE="0.02", ORDERSYNC_CHAOS_CRASH_BUDGET="25"),
        ),
        Poison(
            "poison",
            Poison.__doc__ or "",
            env=injector_env(ORDERSYNC_CHAOS_KILL_MARKER=KILL_MARKER),
        ),
        TwoBeats("two_beats", TwoBeats.__doc__ or ""),
        VisibilityTimeout(
            "visibility_timeout", VisibilityTimeout.__doc__ or "", env=VisibilityTimeout.env_
        ),
    ]
    return {s.name: s for s in made}


#: every scenario's name and what it does, in the order ``--scenario all`` runs them
SCENARIOS = {name: s.doc.split("\n\n")[0] for name, s in _all().items()}


def make(name: str) -> Scenario:
    """A fresh scenario (it keeps the threads of its faults)."""
    return _all()[name]
