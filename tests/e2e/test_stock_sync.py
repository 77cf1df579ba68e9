"""Stock out to the channels, end to end: the web app, Celery workers and Beat as real
processes on a real Redis, the sandbox's four marketplaces over HTTP, SQLite and PostgreSQL.

Every change of what is available (a count set through the staff API, a reservation of an order
that came in by webhook) must reach every listing on every channel as the buffered available
quantity, in far fewer bulk calls than changes; an outage is retried and shown, then converges;
a quantity edited in a marketplace's admin is reported as drift and repaired."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlalchemy import func, select

from db.models import ChannelAccount, Listing, StockDrift, StockItem
from domain.buffer import BufferRule, pushed_quantity
from orders.stock import set_on_hand
from sandbox.knobs import Knobs
from tests.support.stack import wait_until
from tests.support.staff import bearer
from tests.support.world import SECRET, World, module_database_url, running_world

pytestmark = pytest.mark.slow

SKUS = [f"BULK-{i:03d}" for i in range(500)]
CHANGES = 10_000
BATCH = 25  # changes a request
ORDERS = 60
#: each account's buffer rule (channel_accounts.stock_*): the pushed quantities differ
RULES = {
    "shopify": BufferRule(keep_percent=10),
    "woocommerce": BufferRule(zero_at_or_below=3),
    "amazon": BufferRule(),
    "ebay": BufferRule(max_quantity=25),
}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    var_dir = tmp_path_factory.mktemp(f"stock-{request.param}")
    url = module_database_url(request, var_dir, request.param)
    env = {"ORDERSYNC_STOCK_FLUSH_WINDOW_S": "0.5", "ORDERSYNC_RETRY_MAX_ATTEMPTS": "4"}
    with running_world(url, redis_url, var_dir, workers=2, beat=True, extra_env=env) as world:
        yield world


def _accounts(world: World) -> dict[str, int]:
    """The four sandbox marketplaces as accounts, each with its buffer rule; Amazon's plan
    allows 50 patchListingsItem a second (the documented 5 would take 100 s per 500 SKUs)."""
    world.sandbox.amazon.set_rate_limit("patchListingsItem", 50.0, 100.0)
    run = uuid.uuid4().hex[:6]
    ids = {}
    with world.maker() as session, session.begin():
        for channel, spec in world.sandbox.accounts(SECRET).items():
            rule = RULES[channel]
            account = ChannelAccount(
                name=f"stock-{channel}-{run}", channel=channel, shop=spec.shop,
                api_base_url=spec.api_base_url, credentials=spec.credentials,
                webhook_secret=spec.webhook_secret,
                rate_limits={"patchListingsItem": {"rate": 50, "burst": 100}}
                if channel == "amazon" else {},
                stock_keep_percent=rule.keep_percent, stock_max_quantity=rule.max_quantity,
                stock_zero_at_or_below=rule.zero_at_or_below,
            )  # fmt: skip
            session.add(account)
            session.flush()
            ids[channel] = account.id
    return ids


def _cli(world: World, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ordersync", *args],
        env={**world.stack.env, "COLUMNS": "250"},  # rich wraps tables at the terminal width
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _sync_listings(world: World, ids: dict[str, int]) -> None:
    with world.maker() as session:
        names = dict(session.execute(select(ChannelAccount.channel, ChannelAccount.name).where(
            ChannelAccount.id.in_(ids.values()))).all())  # fmt: skip
    for name in names.values():
        _cli(world, "listings", "sync", name)


def _expected(world: World, ids: dict[str, int], skus: list[str]) -> dict[str, dict[str, int]]:
    with world.maker() as session:
        free = dict(session.execute(
            select(StockItem.sku, StockItem.on_hand - StockItem.reserved)
            .where(StockItem.sku.in_(skus))).all())  # fmt: skip
    return {ch: {s: pushed_quantity(int(free[s]), RULES[ch]) for s in skus} for ch in ids}


def _mismatches(
    world: World, ids: dict[str, int], skus: list[str]
) -> list[tuple[str, str, int, int]]:
    expected = _expected(world, ids, skus)
    shown = world.sandbox.channel_stock()
    return [(ch, s, shown[ch].get(s, -1), want) for ch, wants in expected.items()
            for s, want in wants.items() if shown[ch].get(s) != want]  # fmt: skip


def _pending(world: World, ids: dict[str, int]) -> int:
    query = (
        select(func.count())
        .select_from(Listing)
        .where(
            Listing.channel_account_id.in_(ids.values()),
            Listing.want_version > Listing.pushed_version,
            Listing.fulfilled_by_marketplace.is_(False),
        )
    )
    with world.maker() as session:
        return int(session.scalar(query) or 0)


def _converged(world: World, ids: dict[str, int], skus: list[str], timeout: float) -> None:
    def quiet() -> bool:
        return _pending(world, ids) == 0 and not _mismatches(world, ids, skus)

    try:
        wait_until(quiet, timeout=timeout, what="every channel at the buffered quantity")
    except AssertionError:
        bad = _mismatches(world, ids, skus)
        raise AssertionError(
            f"{len(bad)} listings differ, e.g. {bad[:5]}; {_pending(world, ids)} pending\n"
            f"{world.stack.logs()}"
        ) from None


def _order(skus: list[str], rng: random.Random, fixtures_dir: Path) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(
        (fixtures_dir / "shopify" / "rest-2026-07" / "order.get.json").read_text()
    )["order"]
    order = copy.deepcopy(order)
    order["id"] = int(uuid.uuid4().int % 10**13)
    for item in order["line_items"]:
        item["sku"] = rng.choice(skus)
        item["quantity"] = 1
    return order


@pytest.mark.timeout(900)
def test_ten_thousand_changes_over_500_skus_with_orders_reserving_reach_every_channel(
    world: World, fixtures_dir: Path
) -> None:
    ids = _accounts(world)
    world.sandbox.add_listings(SKUS, quantity=0)
    with world.maker() as session, session.begin():
        for sku in SKUS:
            set_on_hand(session, sku, 40, actor="test")  # no listings yet: nothing to push
    _sync_listings(world, ids)
    calls_before = sum(world.sandbox.stock_calls().values())
    shop = world.account()
    rng = random.Random(10)
    changed = 0
    lock = threading.Lock()

    def change(first: int) -> None:
        """Changes ``first`` to ``first + BATCH - 1``: as a warehouse system sends its counts,
        many in one request (``PUT /api/stock``; each SKU once in a request)."""
        nonlocal changed
        counts = [{"sku": SKUS[n % len(SKUS)], "on_hand": 30 + random.Random(n).randrange(30)}
                  for n in range(first, first + BATCH)]  # fmt: skip
        response = client.put("/api/stock", json={"counts": counts})
        assert response.status_code == 200, response.text
        with lock:
            changed += response.json()["set"]

    orders = [_order(SKUS, rng, fixtures_dir) for _ in range(ORDERS)]
    with httpx.Client(
        base_url=world.stack.base_url, timeout=60, headers=bearer(world.staff)
    ) as client:
        with ThreadPoolExecutor(8) as pool:

            def send_orders() -> None:
                for order in orders:
                    world.post(shop, order, "orders/create")

            sender = pool.submit(send_orders)
            list(pool.map(change, range(0, CHANGES, BATCH)))
            sender.result()
    for order in orders:
        world.wait_state(shop, str(order["id"]), "ready_to_ship", "on_hold", timeout=180)

    _converged(world, ids, SKUS, timeout=300)

    assert changed == CHANGES
    calls = sum(world.sandbox.stock_calls().values()) - calls_before
    with world.maker() as session:
        reserved = session.scalar(
            select(func.sum(StockItem.reserved)).where(StockItem.sku.in_(SKUS))
        )
    assert reserved and reserved >= ORDERS  # the orders really reserved while stock moved
    # Amazon takes one SKU a call, the others up to 25-250: still far fewer calls than changes
    assert calls < CHANGES / 2, world.sandbox.stock_calls()
    assert {ch: world.sandbox.stock_calls()[ch] > 0 for ch in ids} == dict.fromkeys(ids, True)


@pytest.mark.timeout(600)
def test_a_channel_down_for_a_minute_is_retried_shown_and_converges_in_order(
    world: World,
) -> None:
    skus = [f"OUT-{i:02d}" for i in range(30)]
    ids = _accounts(world)
    world.sandbox.add_listings(skus, quantity=0)
    with world.maker() as session, session.begin():
        for sku in skus:
            set_on_hand(session, sku, 50, actor="test")
    _sync_listings(world, ids)
    _converged(world, ids, skus, timeout=120)
    woo = world.sandbox.woocommerce
    before = {sku: len(woo.ledger[f"stock:{sku}"]) for sku in skus}
    shared = woo.knobs
    woo.knobs = Knobs(error_rate=1.0)  # WooCommerce answers 503 to everything
    world.sandbox.shopify.knobs = Knobs(rate_429=1.0, retry_after="1")  # Shopify: 429s
    outage_ends = time.monotonic() + 60
    try:
        with httpx.Client(
            base_url=world.stack.base_url, timeout=60, headers=bearer(world.staff)
        ) as client:
            # stock only goes down, so a quantity pushed out of order would go up again
            for step in range(1, 16):
                for sku in skus:
                    client.put(
                        f"/api/stock/{sku}", params={"on_hand": 50 - step}
                    ).raise_for_status()

            # retries run out while the outage lasts: the listings say why
            def shown() -> dict[str, Any] | None:
                detail: dict[str, Any] = client.get(f"/api/stock/{skus[0]}").json()
                failed = [x for x in detail["listings"]
                          if x["channel"] == "woocommerce" and x["last_error"]]  # fmt: skip
                return detail if failed else None

            try:
                detail = wait_until(shown, timeout=90, what="the failed push shown to staff")
            except AssertionError:
                raise AssertionError(world.stack.logs()[-6000:]) from None
            assert "ServerError" in str(detail)
            page = client.get("/stock", params={"sku": skus[0]}).text
            assert "push failed" in page
        time.sleep(max(0.0, outage_ends - time.monotonic()))  # the outage lasts its minute
    finally:
        woo.knobs = shared
        world.sandbox.shopify.knobs = shared

    _converged(world, ids, skus, timeout=120)  # Beat's safety net flushes what is still dirty

    expected = _expected(world, ids, skus)
    for sku in skus:
        sets = [entry["quantity"] for entry in woo.ledger[f"stock:{sku}"][before[sku] :]]
        assert sets and sets == sorted(sets, reverse=True), (sku, sets)  # never back up
        assert sets[-1] == expected["woocommerce"][sku]
    with world.maker() as session:
        assert not session.scalars(select(Listing.last_error).where(
            Listing.sku.in_(skus), Listing.last_error.is_not(None))).all()  # fmt: skip


@pytest.mark.timeout(600)
def test_an_admin_edit_is_reported_as_drift_and_repaired(world: World) -> None:
    skus = ["DRIFT-A", "DRIFT-B"]
    ids = _accounts(world)
    world.sandbox.add_listings(skus, quantity=0)
    with world.maker() as session, session.begin():
        for sku in skus:
            set_on_hand(session, sku, 20, actor="test")
    _sync_listings(world, ids)
    _converged(world, ids, skus, timeout=120)

    for channel in ids:  # someone edits DRIFT-A in every marketplace's admin
        world.sandbox.edit_in_admin(channel, "DRIFT-A", 77)

    def drifts(n: int) -> Callable[[], list[StockDrift] | None]:
        def found() -> list[StockDrift] | None:
            query = (
                select(StockDrift)
                .join(Listing)
                .where(Listing.sku == "DRIFT-A", Listing.channel_account_id.in_(ids.values()))
            )
            with world.maker() as session:
                rows = list(session.scalars(query))
            return rows if len(rows) == n and all(d.repaired_at for d in rows) else None

        return found

    # the nightly check reads every listing: the three channels without a compare-and-set
    probe = Celery("probe", broker=world.redis_url)
    try:
        for channel, account_id in ids.items():
            if channel != "shopify":
                probe.send_task("ordersync.sync.stock_check", args=[account_id], queue="sync")
    finally:
        probe.close()
    wait_until(drifts(3), timeout=120, what="three drifts found by the check and repaired")
    # Shopify's own push finds it (changeFromQuantity): the next change of the SKU
    with httpx.Client(
        base_url=world.stack.base_url, timeout=60, headers=bearer(world.staff)
    ) as client:
        client.put("/api/stock/DRIFT-A", params={"on_hand": 19}).raise_for_status()

    found = wait_until(drifts(4), timeout=120, what="four drifts found and repaired")
    assert {d.channel_qty for d in found} == {77}
    assert sorted(d.found_by for d in found) == ["nightly", "nightly", "nightly", "push"]
    _converged(world, ids, skus, timeout=60)
    out = _cli(world, "stock", "show", "DRIFT-A")
    assert "channel had 77" in out and "(repaired)" in out
