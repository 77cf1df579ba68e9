"""Polling throughput of each marketplace connector against its simulator, throttling on.

``python -m bench.poll_throughput [--orders N] [--seconds S] [--marketplace NAME ...] [--json]``

For each marketplace: its simulator behind a real uvicorn server on loopback, its rate limit
turned down to a few requests per second so that a poll is limit-bound yet short, enough seeded
orders for many pages, and one full poll (``fetch_updated_orders``) through the real connector:
real HTTP, real ``time.sleep``. The connector's buckets are seeded with the simulator's limit,
as a deployment seeds them from the marketplace's documented limits. Then the same poll again
with throttling off on both sides (the baseline: what the poll costs without waiting).

Goals (issue 3, "Benchmark"): requests/s achieved >= 90 % of what the limit allows, and 429s
(Shopify: ``THROTTLED``) <= 1 % of requests. Columns and formulas: bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import structlog
from fastapi import FastAPI
from rich.console import Console, JustifyMethod
from rich.table import Table

from integrations.amazon.connector import AmazonConnector
from integrations.base import AccountConfig, ConnectorSeams
from integrations.ebay.connector import EbayConnector
from integrations.ratelimit import Bucket, MemoryRateLimiter
from integrations.shopify.connector import ShopifyConnector
from integrations.shopify.throttle import CostBucket
from integrations.woocommerce.connector import WooCommerceConnector
from sandbox import amazon as amazon_sim
from sandbox import ebay as ebay_sim
from sandbox import shopify as shopify_sim
from sandbox import woocommerce as woo_sim
from tests.support.servers import serve_app

__all__ = [
    "MARKETPLACES",
    "RATIO_GOAL",
    "THROTTLED_GOAL",
    "AmazonBench",
    "EbayBench",
    "ShopifyBench",
    "WooCommerceBench",
    "bench_marketplace",
    "main",
    "measure",
    "run",
]

RATIO_GOAL = 0.9  # achieved requests/s over what the limit allows, at least
THROTTLED_GOAL = 0.01  # 429s (THROTTLED) over requests, at most
UNLIMITED = 1e6  # rate and burst standing for "no limit" (both sides of the baseline)
DEFAULT_SECONDS = 12.0
SEED = 3


class Marketplace(Protocol):
    """One marketplace's benchmark set-up: its simulated limit, simulator and connector."""

    @property
    def channel(self) -> str: ...

    def describe(self) -> str:
        """The simulated limit, for the table."""
        ...

    def orders_for(self, seconds: float) -> int:
        """Orders to seed so that a throttled poll takes about ``seconds``."""
        ...

    def simulator(self, *, throttled: bool) -> Any: ...

    def connector(self, base_url: str, seams: ConnectorSeams, *, throttled: bool) -> Any:
        """The real connector, its buckets seeded with the simulator's limit."""
        ...

    def limited(self, operation: str) -> bool:
        """Whether the simulator rate-limits this operation (token exchanges are not)."""
        ...

    def limits(self, counts: Mapping[str, int], costs: Sequence[float]) -> tuple[float, float]:
        """For this run's mix of requests: (steady limit in requests/s, the least seconds the
        simulator's limits let those requests take, the initial burst used)."""
        ...


# --------------------------------------------------------------------------- marketplaces


def _bucket_seconds(n: int, rate: float, burst: float) -> float:
    return max(0.0, n - burst) / rate


@dataclass(frozen=True)
class AmazonBench:
    """getOrders pages (``page_size`` orders each), then one getOrderItems per order; each
    operation has its own bucket, on the simulator and in the connector."""

    rates: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: {"getOrders": (1.0, 1.0), "getOrderItems": (8.0, 2.0)}
    )
    page_size: int = 20
    channel: str = "amazon"

    def _limits(self, throttled: bool) -> dict[str, tuple[float, float]]:
        plans = {**amazon_sim.DEFAULT_RATE_LIMITS, **self.rates}
        if throttled:
            return plans
        return {op: (UNLIMITED, UNLIMITED) for op in plans}

    def describe(self) -> str:
        return ", ".join(f"{op} {r:g}/s b{b:g}" for op, (r, b) in self.rates.items())

    def orders_for(self, seconds: float) -> int:
        rate, burst = self._limits(True)["getOrderItems"]
        return max(1, math.ceil(rate * seconds + burst))

    def simulator(self, *, throttled: bool) -> amazon_sim.AmazonSimulator:
        return amazon_sim.AmazonSimulator(
            seed=SEED, page_size=self.page_size, rate_limits=self._limits(throttled)
        )

    def connector(self, base_url: str, seams: ConnectorSeams, *, throttled: bool) -> Any:
        account = AccountConfig(
            name="bench-amazon",
            channel="amazon",
            api_base_url=base_url,
            credentials={
                "refresh_token": amazon_sim.SANDBOX_REFRESH_TOKEN,
                "client_id": amazon_sim.SANDBOX_CLIENT_ID,
                "client_secret": amazon_sim.SANDBOX_CLIENT_SECRET,
                "lwa_url": base_url,  # the simulator serves LWA under the same prefix
                "marketplace_ids": [amazon_sim.SANDBOX_MARKETPLACE_ID],
            },
        )
        buckets = {op: Bucket(r, b) for op, (r, b) in self._limits(throttled).items()}
        return AmazonConnector(account, seams, rate_limits=buckets)

    def limited(self, operation: str) -> bool:
        return operation in amazon_sim.DEFAULT_RATE_LIMITS

    def limits(self, counts: Mapping[str, int], costs: Sequence[float]) -> tuple[float, float]:
        plans = self._limits(True)
        steady = max(n / plans[op][0] for op, n in counts.items())
        least = max(_bucket_seconds(n, *plans[op]) for op, n in counts.items())
        return sum(counts.values()) / steady, least


@dataclass(frozen=True)
class ShopifyBench:
    """GraphQL cost bucket of ``bucket_max`` points refilled at ``restore_rate`` points/s."""

    bucket_max: float = 500.0
    restore_rate: float = 250.0
    channel: str = "shopify"

    #: average actual cost of one order (15 + 9 per line, 1-3 lines) and its share of a page
    POINTS_PER_ORDER = 34.0

    def describe(self) -> str:
        return f"{self.restore_rate:g} points/s, bucket {self.bucket_max:g}"

    def orders_for(self, seconds: float) -> int:
        points = self.restore_rate * seconds + self.bucket_max
        return max(1, math.ceil(points / self.POINTS_PER_ORDER))

    def _sizes(self, throttled: bool) -> tuple[float, float]:
        return (self.bucket_max, self.restore_rate) if throttled else (UNLIMITED, UNLIMITED)

    def simulator(self, *, throttled: bool) -> shopify_sim.ShopifySimulator:
        maximum, rate = self._sizes(throttled)
        return shopify_sim.ShopifySimulator(seed=SEED, bucket_max=maximum, restore_rate=rate)

    def connector(self, base_url: str, seams: ConnectorSeams, *, throttled: bool) -> Any:
        account = AccountConfig(
            name="bench-shopify",
            channel="shopify",
            shop=shopify_sim.SANDBOX_SHOP,
            api_base_url=base_url,
            credentials={"access_token": shopify_sim.SANDBOX_ACCESS_TOKEN},
        )
        # its own bucket: the process-wide one of the shop would carry over between runs
        maximum, rate = self._sizes(throttled)
        return ShopifyConnector(account, seams, cost_bucket=CostBucket(maximum, rate))

    def limited(self, operation: str) -> bool:
        return True  # every GraphQL operation draws on the cost bucket

    def limits(self, counts: Mapping[str, int], costs: Sequence[float]) -> tuple[float, float]:
        requests = sum(counts.values())
        spent = sum(costs)
        if not requests or not spent:
            return math.inf, 0.0
        steady = self.restore_rate / (spent / requests)
        return steady, max(0.0, spent - self.bucket_max) / self.restore_rate


@dataclass(frozen=True)
class WooCommerceBench:
    """A fixed window of ``window_requests`` per ``window_s`` seconds (hosts' and the Store
    API's limiter), announced in ``RateLimit-*`` headers; pages of 100 orders."""

    window_requests: int = 2
    window_s: float = 1.0
    per_page: int = 100  # the connector always asks for the REST maximum
    channel: str = "woocommerce"

    @property
    def rate(self) -> float:
        return self.window_requests / self.window_s

    def describe(self) -> str:
        return f"{self.window_requests} req per {self.window_s:g} s window"

    def orders_for(self, seconds: float) -> int:
        return self.per_page * max(1, math.ceil(self.rate * seconds + self.window_requests))

    def simulator(self, *, throttled: bool) -> woo_sim.WooCommerceSimulator:
        limit = (self.window_requests, self.window_s) if throttled else None
        return woo_sim.WooCommerceSimulator(seed=SEED, rate_limit=limit)

    def connector(self, base_url: str, seams: ConnectorSeams, *, throttled: bool) -> Any:
        account = AccountConfig(
            name="bench-woocommerce",
            channel="woocommerce",
            api_base_url=base_url,
            credentials={
                "consumer_key": woo_sim.SANDBOX_CONSUMER_KEY,
                "consumer_secret": woo_sim.SANDBOX_CONSUMER_SECRET,
            },
        )
        connector = WooCommerceConnector(account, seams)
        # no constructor option or account field carries a limit (see bench/README.md): seed the
        # buckets the client configured with its defaults through the limiter we gave it
        bucket = (
            Bucket(self.rate, self.window_requests) if throttled else Bucket(UNLIMITED, UNLIMITED)
        )
        _reseed(connector.client, seams, bucket)
        return connector

    def limited(self, operation: str) -> bool:
        return True

    def limits(self, counts: Mapping[str, int], costs: Sequence[float]) -> tuple[float, float]:
        requests = sum(counts.values())
        return self.rate, _bucket_seconds(requests, self.rate, self.window_requests)


@dataclass(frozen=True)
class EbayBench:
    """One token bucket for the whole Fulfillment API; getOrders pages of ``page_limit``."""

    rate: float = 5.0
    burst: float = 2.0
    page_limit: int = 20
    channel: str = "ebay"

    def describe(self) -> str:
        return f"{self.rate:g}/s b{self.burst:g}, all calls"

    def orders_for(self, seconds: float) -> int:
        return self.page_limit * max(1, math.ceil(self.rate * seconds + self.burst))

    def simulator(self, *, throttled: bool) -> ebay_sim.EbaySimulator:
        rate, burst = (self.rate, self.burst) if throttled else (UNLIMITED, UNLIMITED)
        return ebay_sim.EbaySimulator(seed=SEED, rate_per_s=rate, burst=burst)

    def connector(self, base_url: str, seams: ConnectorSeams, *, throttled: bool) -> Any:
        account = AccountConfig(
            name="bench-ebay",
            channel="ebay",
            api_base_url=base_url,
            credentials={
                "client_id": ebay_sim.SANDBOX_CLIENT_ID,
                "client_secret": ebay_sim.SANDBOX_CLIENT_SECRET,
                "refresh_token": ebay_sim.SANDBOX_REFRESH_TOKEN,
            },
        )
        connector = EbayConnector(account, seams, page_limit=self.page_limit)
        # as for WooCommerce: the daily-quota bucket is a class constant, no seam carries ours
        bucket = Bucket(self.rate, self.burst) if throttled else Bucket(UNLIMITED, UNLIMITED)
        _reseed(connector.client, seams, bucket)
        return connector

    def limited(self, operation: str) -> bool:
        return operation != "token"

    def limits(self, counts: Mapping[str, int], costs: Sequence[float]) -> tuple[float, float]:
        return self.rate, _bucket_seconds(sum(counts.values()), self.rate, self.burst)


def _reseed(client: Any, seams: ConnectorSeams, bucket: Bucket) -> None:
    """Replace the buckets an ``ApiClient`` seeded from its class defaults (the limiter keeps
    the tokens it holds, capped to the new burst on the next acquire)."""
    assert seams.limiter is not None
    for operation in type(client).rate_limits:
        seams.limiter.configure(client.limit_key(operation), bucket)


MARKETPLACES: dict[str, Marketplace] = {
    "shopify": ShopifyBench(),
    "woocommerce": WooCommerceBench(),
    "amazon": AmazonBench(),
    "ebay": EbayBench(),
}


# --------------------------------------------------------------------------- measuring


class _Recorder(httpx.BaseTransport):
    """The real HTTP transport, noting Shopify's ``actualQueryCost`` of each answer."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.costs: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if not request.url.path.endswith("/graphql.json"):
            return response
        content = response.read()
        try:
            cost = json.loads(content)["extensions"]["cost"]["actualQueryCost"]
        except (ValueError, KeyError, TypeError):
            cost = None
        self.costs.append(float(cost or 0.0))  # THROTTLED: nothing spent
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=content,
            request=request,
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


@contextmanager
def _served(market: Marketplace, sim: Any) -> Iterator[str]:
    app = FastAPI()
    prefix = f"/{market.channel}"
    app.include_router(sim.build_router(), prefix=prefix)
    with serve_app(app) as base:
        yield base + prefix


def measure(market: Marketplace, orders: int, *, throttled: bool) -> dict[str, Any]:
    """Seed ``orders``, run one full poll through the connector; the numbers of that poll."""
    sim = market.simulator(throttled=throttled)
    seeded = Counter(sim.add_orders(orders))
    recorder = _Recorder()
    seams = ConnectorSeams(transport=recorder, limiter=MemoryRateLimiter())
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with _served(market, sim) as base_url:
        connector = market.connector(base_url, seams, throttled=throttled)
        try:
            started = time.perf_counter()
            fetched = Counter(o.external_id for o in connector.fetch_updated_orders(since))
            wall = time.perf_counter() - started
        finally:
            connector.close()
    log = [(op, status) for op, status in list(sim.request_log) if market.limited(op)]
    requests = len(log)
    counts = Counter(op for op, _ in log)
    refused = sum(1 for _, status in log if status == 429)
    result: dict[str, Any] = {
        "orders_seeded": sum(seeded.values()),
        "orders_fetched": sum(fetched.values()),
        "orders_match": fetched == seeded,
        "requests": requests,
        "by_operation": {f"{op} {status}": n for (op, status), n in sorted(Counter(log).items())},
        "throttled": refused,
        "throttled_share": refused / requests if requests else 0.0,
        "wall_s": wall,
        "achieved_rps": requests / wall if wall > 0 else 0.0,
    }
    if throttled:
        steady, least = market.limits(counts, recorder.costs)
        result["limit_rps"] = steady
        result["ideal_s"] = least
        result["ceiling_rps"] = requests / least if least > 0 else math.inf
        result["ratio"] = least / wall if least > 0 and wall > 0 else None
        if recorder.costs:
            result["avg_cost_points"] = sum(recorder.costs) / len(recorder.costs)
    return result


def bench_marketplace(
    market: Marketplace | str,
    *,
    orders: int | None = None,
    seconds: float = DEFAULT_SECONDS,
    baseline: bool = True,
) -> dict[str, Any]:
    """The throttled poll and its unthrottled baseline for one marketplace, with the goals."""
    if isinstance(market, str):
        market = MARKETPLACES[market]
    n = orders if orders is not None else market.orders_for(seconds)
    row: dict[str, Any] = {"marketplace": market.channel, "limit": market.describe()}
    row |= measure(market, n, throttled=True)
    ratio = row["ratio"]
    row["ratio_pass"] = ratio is not None and ratio >= RATIO_GOAL
    row["throttled_pass"] = row["throttled_share"] <= THROTTLED_GOAL
    if baseline:
        base = measure(market, n, throttled=False)
        row["baseline"] = {
            k: base[k]
            for k in ("requests", "throttled", "wall_s", "achieved_rps", "orders_fetched")
        }
        row["baseline"]["orders_match"] = base["orders_match"]
        # how long the poll waited for the limit: limit-bound when this is most of the wall
        row["waiting_share"] = max(0.0, 1 - base["wall_s"] / row["wall_s"])
    return row


def run(
    names: Sequence[str] | None = None,
    *,
    orders: int | None = None,
    seconds: float = DEFAULT_SECONDS,
) -> list[dict[str, Any]]:
    """Every marketplace in turn (one at a time: the runs must not share the CPU). A
    marketplace whose poll fails gets a row with the error instead of its numbers."""
    rows = []
    for name in names or list(MARKETPLACES):
        market = MARKETPLACES[name]
        try:
            rows.append(bench_marketplace(market, orders=orders, seconds=seconds))
        except Exception as exc:  # report it and go on with the next marketplace
            rows.append(
                {
                    "marketplace": market.channel,
                    "limit": market.describe(),
                    "error": f"{type(exc).__name__}: {exc}",
                    "ratio_pass": False,
                    "throttled_pass": False,
                    "orders_match": False,
                }
            )
    return rows


# --------------------------------------------------------------------------- output

_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("marketplace", "left"),
    ("simulated limit", "left"),
    ("orders", "right"),
    ("requests", "right"),
    ("wall s", "right"),
    ("req/s", "right"),
    ("limit req/s", "right"),
    ("ceiling req/s", "right"),
    ("ratio", "right"),
    (f"ratio >= {RATIO_GOAL:g}", "center"),
    ("429s", "right"),
    ("429 share", "right"),
    (f"429s <= {THROTTLED_GOAL:.0%}", "center"),
    ("baseline req/s", "right"),
    ("baseline wall s", "right"),
)


_NO_WRAP = frozenset({"marketplace", "simulated limit", "orders"})


def _verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def render(rows: Sequence[dict[str, Any]]) -> Table:
    """The rich table: one row per marketplace."""
    caption = [
        "ratio = req/s / ceiling req/s (the limit with its initial burst credited); "
        "baseline = the same poll with no limit on either side. See bench/README.md."
    ]
    table = Table(title="Polling throughput against the sandbox, throttling on")
    for name, justify in _COLUMNS:
        table.add_column(name, justify=justify, no_wrap=name in _NO_WRAP)
    for row in rows:
        if "error" in row:
            cells = ["-"] * (len(_COLUMNS) - 2)
            cells[0] = "[red]error[/red]"
            cells[7] = cells[10] = _verdict(False)
            table.add_row(row["marketplace"], row["limit"], *cells)
            caption.append(f"{row['marketplace']}: the poll failed: {row['error']}")
            continue
        base = row.get("baseline") or {}
        orders = f"{row['orders_fetched']}/{row['orders_seeded']}"
        ratio = row["ratio"]
        table.add_row(
            row["marketplace"],
            row["limit"],
            orders if row["orders_match"] else f"[red]{orders}[/red]",
            str(row["requests"]),
            f"{row['wall_s']:.2f}",
            f"{row['achieved_rps']:.2f}",
            f"{row['limit_rps']:.2f}",
            f"{row['ceiling_rps']:.2f}",
            "-" if ratio is None else f"{ratio:.3f}",
            _verdict(row["ratio_pass"]),
            str(row["throttled"]),
            f"{row['throttled_share']:.1%}",
            _verdict(row["throttled_pass"]),
            f"{base['achieved_rps']:.1f}" if base else "-",
            f"{base['wall_s']:.2f}" if base else "-",
        )
    table.caption = "\n".join(caption)
    return table


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.poll_throughput",
        description="Polling throughput of each marketplace connector against its simulator, "
        "throttling on (see bench/README.md).",
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=None,
        help="orders seeded per marketplace (default: enough for --seconds of throttled polling)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"target length of each throttled poll (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--marketplace",
        action="append",
        choices=list(MARKETPLACES),
        help="only this marketplace (repeatable; default all four)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    # the connectors log every wait and retry at INFO: keep the output to the result
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows = run(args.marketplace, orders=args.orders, seconds=args.seconds)
    if args.json:
        print(json.dumps(_jsonable(rows), indent=2))
    else:
        console = Console()
        console.width = max(console.width, 190)  # one line per marketplace
        console.print(render(rows))
    missed = any(not (r["ratio_pass"] and r["throttled_pass"] and r["orders_match"]) for r in rows)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
