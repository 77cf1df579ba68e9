"""Stock out to four channels: bulk calls made against the minimum, and convergence time.

``python -m bench.stock_push [--changes N] [--skus N] [--window S] [--json]``

One process: a SQLite database, the sandbox's four marketplaces at their documented rate limits
(``Sandbox(fast=False)``) behind a real uvicorn server, the real connectors with the same limits,
and the real flusher (``orders.stock_push.flush``) in one thread per account, each flushing every
``--window`` seconds what the changes left dirty. A writer makes ``--changes`` stock changes
over ``--skus`` SKUs as fast as the database takes them (``orders.stock.set_on_hand``, one
transaction each, which marks the listings dirty). A sampler reads the sandbox's quantities
every 20 ms.

- **calls / minimum**: bulk stock calls the sandbox answered, per channel, against the fewest
  that could carry the changes: cut the change timeline into windows of ``--window`` s; in each,
  the SKUs whose buffered quantity for that channel moved, in full batches of the channel's
  maximum (Shopify 250, WooCommerce 100, eBay 25, Amazon 1, or one ``JSON_LISTINGS_FEED`` for
  more than 300).
- **convergence p50 / p99 / max**: per (channel, SKU), from the SKU's last change until the
  channel first shows its final buffered quantity.
- **baseline** (the same run): the first ``--baseline`` changes pushed one call per change and
  channel, as a connector without coalescing would: calls per change and changes/s.

What bounds each number is the channel's documented rate limit (Amazon's patchListingsItem:
5/s, one SKU a call), or else the writer's own transactions (SQLite, one CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.models import ChannelAccount, Listing
from db.session import make_engine
from domain.buffer import BufferRule, pushed_quantity
from domain.listings import StockUpdate
from integrations import registry
from integrations.amazon.connector import AmazonConnector
from integrations.base import AccountConfig, MarketplaceConnector
from orders import stock_push
from orders.stock import set_on_hand
from sandbox.server import Sandbox

CHANNELS = ("shopify", "woocommerce", "amazon", "ebay")
BATCH = {"shopify": 250, "woocommerce": 100, "amazon": 1, "ebay": 25}
#: more SKUs than this in one window go to the channel in one feed (Amazon's JSON_LISTINGS_FEED)
FEED_ABOVE = {"amazon": AmazonConnector.stock_feed_threshold}
RULES = {ch: BufferRule() for ch in CHANNELS} | {"shopify": BufferRule(keep_percent=10)}


@dataclass
class Run:
    changes: list[tuple[float, str, int]] = field(default_factory=list)  # (t, sku, on_hand)
    converged: dict[tuple[str, str], float] = field(default_factory=dict)
    flushes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _connector(account: ChannelAccount) -> MarketplaceConnector:
    config = AccountConfig(
        name=account.name,
        channel=account.channel,
        shop=account.shop,
        api_base_url=account.api_base_url,
        credentials=dict(account.credentials),
        rate_limits=registry.parse_rate_limits(
            account.channel, account.rate_limits, account=account.name
        ),
    )
    return registry.get(account.channel).connector(config, None)


def _minimum(run: Run, skus: list[str], start_qty: int, window: float, t0: float) -> dict[str, int]:
    """Fewest bulk calls per channel for the SKUs whose buffered quantity moved per window."""
    shown = {ch: dict.fromkeys(skus, pushed_quantity(start_qty, RULES[ch])) for ch in CHANNELS}
    current = dict.fromkeys(skus, start_qty)
    minimum = dict.fromkeys(CHANNELS, 0)
    by_window: dict[int, list[tuple[str, int]]] = {}
    for t, sku, qty in run.changes:
        by_window.setdefault(int((t - t0) // window), []).append((sku, qty))
    for index in sorted(by_window):
        for sku, qty in by_window[index]:
            current[sku] = qty
        for ch in CHANNELS:
            moved = [s for s in skus if pushed_quantity(current[s], RULES[ch]) != shown[ch][s]]
            for s in moved:
                shown[ch][s] = pushed_quantity(current[s], RULES[ch])
            if ch in FEED_ABOVE and len(moved) > FEED_ABOVE[ch]:
                minimum[ch] += 1  # one JSON_LISTINGS_FEED carries them all
            else:
                minimum[ch] += math.ceil(len(moved) / BATCH[ch])
    return minimum


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _baseline(
    sandbox: Sandbox, accounts: dict[str, ChannelAccount], maker: sessionmaker[Session], n: int
) -> dict[str, float]:
    """One call per change and channel (no coalescing): calls/change, changes/s."""
    with maker() as session:
        listings = {
            (a.channel, row.sku): row
            for a in accounts.values()
            for row in session.query(Listing).filter_by(channel_account_id=a.id)
        }
    before = sum(sandbox.stock_calls().values())
    connectors = {ch: _connector(a) for ch, a in accounts.items()}
    rng = random.Random(1)
    skus = sorted({sku for _, sku in listings})
    started = time.monotonic()
    for i in range(n):
        sku = rng.choice(skus)
        for ch, connector in connectors.items():
            listing = listings[(ch, sku)]
            connector.push_stock(
                [
                    StockUpdate(
                        listing.id,
                        sku,
                        listing.external_id,
                        listing.external_parent_id,
                        listing.external_location_id,
                        i % 50,
                        None,
                    )
                ]
            )
    seconds = time.monotonic() - started
    for connector in connectors.values():
        connector.close()
    calls = sum(sandbox.stock_calls().values()) - before
    return {"changes": n, "calls_per_change": calls / n, "changes_per_s": n / seconds}


def run(
    changes: int, skus_n: int, window: float, baseline_n: int, start_qty: int = 60
) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-stock-"))
    url = f"sqlite:///{tmp / 'bench.db'}"
    upgrade(url)
    engine = make_engine(url)
    maker = sessionmaker(bind=engine, expire_on_commit=False)

    def transaction() -> Any:
        return maker.begin()

    sandbox = Sandbox(seed=3, fast=False)
    sandbox.start()
    skus = [f"BENCH-{i:04d}" for i in range(skus_n)]
    sandbox.add_listings(skus)
    result: dict[str, Any] = {}
    try:
        accounts: dict[str, ChannelAccount] = {}
        with maker.begin() as session:
            for ch, spec in sandbox.accounts("bench-secret").items():
                rule = RULES[ch]
                account = ChannelAccount(
                    name=f"bench-{ch}",
                    channel=ch,
                    shop=spec.shop,
                    api_base_url=spec.api_base_url,
                    credentials=spec.credentials,
                    stock_keep_percent=rule.keep_percent,
                )
                session.add(account)
                session.flush()
                accounts[ch] = account
            for sku in skus:
                set_on_hand(session, sku, start_qty, actor="bench")
        for account in accounts.values():
            connector = _connector(account)
            stock_push.sync_listings(transaction, account.id, connector)
            stock_push.flush(transaction, account.id, connector, owner="bench-setup")
            connector.close()
        result["baseline"] = _baseline(sandbox, accounts, maker, baseline_n)
        # the baseline left the channels at its numbers: put ours back before the run
        for account in accounts.values():
            with maker.begin() as session:
                stock_push.mark_dirty_listings(
                    session,
                    [
                        listing.id
                        for listing in session.query(Listing).filter_by(
                            channel_account_id=account.id
                        )
                    ],
                )
            connector = _connector(account)
            stock_push.flush(transaction, account.id, connector, owner="bench-setup")
            connector.close()

        calls_before = sandbox.stock_calls()
        state = Run()
        stop = threading.Event()
        writing_done = threading.Event()
        rng = random.Random(7)
        plan = [(rng.choice(skus), rng.randrange(0, 120)) for _ in range(changes)]
        final = {sku: start_qty for sku in skus}
        last_index: dict[str, int] = {}
        for i, (sku, qty) in enumerate(plan):
            final[sku] = qty
            last_index[sku] = i
        final_shown = {
            ch: {s: pushed_quantity(final[s], RULES[ch]) for s in skus} for ch in CHANNELS
        }

        def flusher(account: ChannelAccount) -> None:
            connector = _connector(account)
            try:
                while not stop.is_set():
                    time.sleep(window)
                    try:
                        stock_push.flush(transaction, account.id, connector, owner=account.name)
                    except Exception as exc:  # an outage: the next window tries again
                        state.errors.append(f"{account.channel}: {type(exc).__name__}")
                    state.flushes[account.channel] = state.flushes.get(account.channel, 0) + 1
            finally:
                connector.close()

        def sampler() -> None:
            while not stop.is_set():
                now = time.monotonic()
                shown = sandbox.channel_stock()
                for ch in CHANNELS:
                    for sku in skus:
                        key = (ch, sku)
                        if key in state.converged or (
                            not writing_done.is_set()
                            and (len(state.changes) <= last_index.get(sku, -1))
                        ):
                            continue
                        if shown[ch].get(sku) == final_shown[ch][sku]:
                            state.converged[key] = now
                time.sleep(0.02)

        threads = [
            threading.Thread(target=flusher, args=(a,), daemon=True) for a in accounts.values()
        ]
        threads.append(threading.Thread(target=sampler, daemon=True))
        for thread in threads:
            thread.start()
        t0 = time.monotonic()
        for sku, qty in plan:
            with maker.begin() as session:
                set_on_hand(session, sku, qty, actor="bench")
            state.changes.append((time.monotonic(), sku, qty))
        writing_done.set()
        t_end = time.monotonic()
        deadline = t_end + 600
        while len(state.converged) < len(CHANNELS) * len(skus) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

        last_change = {sku: state.changes[i][0] for sku, i in last_index.items()}
        calls = {ch: sandbox.stock_calls()[ch] - calls_before[ch] for ch in CHANNELS}
        minimum = _minimum(state, skus, start_qty, window, t0)
        per_channel = {}
        for ch in CHANNELS:
            lags = [
                state.converged[(ch, s)] - last_change.get(s, t0)
                for s in skus
                if (ch, s) in state.converged
            ]
            lags = [max(0.0, lag) for lag in lags]
            per_channel[ch] = {
                "calls": calls[ch],
                "minimum": minimum[ch],
                "ratio": round(calls[ch] / minimum[ch], 3) if minimum[ch] else None,
                "converged": len(lags),
                "listings": len(skus),
                "p50_s": round(_percentile(lags, 0.5), 2),
                "p99_s": round(_percentile(lags, 0.99), 2),
                "max_s": round(max(lags), 2) if lags else None,
                "from_last_change_s": round(
                    max(state.converged.get((ch, s), math.inf) for s in skus) - t_end, 2
                ),
            }
        result.update(
            changes=changes,
            skus=skus_n,
            window_s=window,
            writing_s=round(t_end - t0, 2),
            changes_per_s=round(changes / (t_end - t0), 1),
            channels=per_channel,
            errors=sorted(set(state.errors)),
            total_calls=sum(calls.values()),
            total_minimum=sum(minimum.values()),
        )
        mismatched = [
            (ch, s)
            for ch in CHANNELS
            for s in skus
            if sandbox.channel_stock()[ch].get(s) != final_shown[ch][s]
        ]
        result["mismatches_at_end"] = len(mismatched)
        return result
    finally:
        sandbox.stop()
        engine.dispose()


def _table(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"stock push: {result['changes']} changes over {result['skus']} SKUs, "
        f"window {result['window_s']} s ({result['changes_per_s']} changes/s "
        f"written)"
    )
    for column in (
        "channel",
        "calls",
        "minimum",
        "calls/min",
        "p50 s",
        "p99 s",
        "max s",
        "all at final (s after last change)",
        "converged",
    ):
        table.add_column(column, justify="left" if column == "channel" else "right")
    for ch, row in result["channels"].items():
        table.add_row(
            ch,
            str(row["calls"]),
            str(row["minimum"]),
            str(row["ratio"]),
            str(row["p50_s"]),
            str(row["p99_s"]),
            str(row["max_s"]),
            str(row["from_last_change_s"]),
            f"{row['converged']}/{row['listings']}",
        )
    base = result["baseline"]
    table.add_row(
        "baseline: 1 call per change",
        f"{base['calls_per_change']:.2f}/change",
        "",
        "",
        "",
        "",
        "",
        f"{base['changes_per_s']:.1f} changes/s",
        "",
    )
    console.print(table)
    console.print(
        f"all channels: {result['total_calls']} calls for {result['changes']} changes "
        f"(minimum {result['total_minimum']}); mismatches at the end: "
        f"{result['mismatches_at_end']}; errors: {result['errors'] or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--skus", type=int, default=500)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.changes, args.skus, args.window, args.baseline)
    _table(result, Console(stderr=args.json))  # --json: stdout is the JSON alone
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0 if result["mismatches_at_end"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
