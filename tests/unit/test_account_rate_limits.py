"""Per-account rate limits: ``channel_accounts.rate_limits`` → the connector built for the account.

The column is parsed in one place (``integrations.ratelimit.parse_rate_limits``, through
``registry.parse_rate_limits``); every connector built from the account (``connector_for`` for
``ship``, ``accounts test`` and polling) lays it over its documented buckets. Waits are
asserted on a fake clock, never spent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from db.base import Base
from db.models import ChannelAccount
from db.session import get_engine, session_scope
from integrations import registry
from integrations.amazon.client import RATE_LIMITS as AMAZON_DEFAULTS
from integrations.base import ConnectorSeams
from integrations.ebay.client import FULFILLMENT_QUOTA, INVENTORY_QUOTA, EbayClient
from integrations.ratelimit import (
    AccountRateLimits,
    Bucket,
    CostLimit,
    MemoryRateLimiter,
    RateLimitsError,
)
from integrations.shopify import queries as shopify_queries
from integrations.shopify.throttle import DEFAULT_MAXIMUM, DEFAULT_RESTORE_RATE, shared_bucket
from integrations.woocommerce.client import WooCommerceClient
from tests.support.fake_time import FakeTime
from workflows.providers import account_config, connector_for

# --- helpers ------------------------------------------------------------------------------


class RecordingLimiter(MemoryRateLimiter):
    """The in-memory limiter, remembering the bucket each key was last configured with."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock, headroom=1.0, margin_s=0.0)
        self.configured: dict[str, Bucket] = {}

    def configure(self, key: str, bucket: Bucket) -> None:
        self.configured[key] = bucket
        super().configure(key, bucket)


def _answer(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path.endswith("/auth/o2/token"):  # Amazon LWA
        return httpx.Response(200, json={"access_token": "Atza|t", "expires_in": 3600})
    if path.endswith("/identity/v1/oauth2/token"):  # eBay user token
        return httpx.Response(200, json={"access_token": "v^1.1#t", "expires_in": 7200})
    if path.endswith("graphql.json"):  # Shopify, without extensions.cost: no correction
        return httpx.Response(200, json={"data": {"shop": {"name": "s"}}})
    if path.endswith("/notes"):  # WooCommerce order notes
        return httpx.Response(200, json=[])
    return httpx.Response(200, json={"payload": {}})


CREDENTIALS: dict[str, dict[str, Any]] = {
    "shopify": {"access_token": "shpat_test"},
    "woocommerce": {"consumer_key": "ck_test", "consumer_secret": "cs_test"},
    "amazon": {
        "refresh_token": "Atzr|r",
        "client_id": "amzn1.application-oa2-client.x",
        "client_secret": "secret",
        "lwa_url": "https://lwa.test",
        "marketplace_ids": ["ATVPDKIKX0DER"],
    },
    "ebay": {"client_id": "app", "client_secret": "cert", "refresh_token": "v^1.1#r"},
}


def account(channel: str, rate_limits: Any = None, *, name: str | None = None) -> ChannelAccount:
    """A ``channel_accounts`` row as the workers load it (not persisted: no database here)."""
    name = name or f"{channel}-{uuid.uuid4().hex[:8]}"
    shop = f"{name}.myshopify.com" if channel == "shopify" else f"{name}.example"
    return ChannelAccount(
        name=name,
        channel=channel,
        shop=shop,
        api_base_url=f"https://{shop}",
        credentials=CREDENTIALS[channel],
        rate_limits=rate_limits if rate_limits is not None else {},
    )


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime(start=1000.0)


def seams(time_: FakeTime) -> tuple[ConnectorSeams, RecordingLimiter]:
    limiter = RecordingLimiter(time_.clock)
    return (
        ConnectorSeams(transport=httpx.MockTransport(_answer), limiter=limiter, sleep=time_.sleep),
        limiter,
    )


# --- parsing ------------------------------------------------------------------------------


def test_a_valid_column_parses_to_the_overrides_only() -> None:
    limits = registry.parse_rate_limits(
        "amazon",
        {"getOrders": {"rate": 0.5, "burst": 30}, "confirmShipment": {"rate": 5, "burst": 20}},
        account="acme",
    )

    assert limits.buckets == {
        "getOrders": Bucket(rate=0.5, burst=30),
        "confirmShipment": Bucket(rate=5.0, burst=20),
    }
    assert limits.cost_bucket is None
    assert limits.over(AMAZON_DEFAULTS) == {
        **AMAZON_DEFAULTS,
        "getOrders": Bucket(0.5, 30),
        "confirmShipment": Bucket(5.0, 20),
    }


def test_each_channel_takes_the_names_its_client_uses() -> None:
    shopify = registry.parse_rate_limits(
        "shopify", {"cost_bucket": {"maximum": 2000, "restore_rate": 100}}, account="s"
    )
    woo = registry.parse_rate_limits(
        "woocommerce", {"list_orders": {"rate": 20, "burst": 40}}, account="w"
    )
    ebay = registry.parse_rate_limits(
        "ebay", {"sell.fulfillment": {"rate": 17.4, "burst": 100}}, account="e"
    )

    assert shopify == AccountRateLimits(cost_bucket=CostLimit(2000.0, 100.0))
    assert woo.buckets == {"list_orders": Bucket(20.0, 40.0)}
    assert ebay.buckets == {"sell.fulfillment": Bucket(17.4, 100.0)}


@pytest.mark.parametrize("channel", list(CREDENTIALS))
@pytest.mark.parametrize("raw", [None, {}])
def test_an_empty_or_absent_column_is_the_defaults(channel: str, raw: Any) -> None:
    limits = registry.parse_rate_limits(channel, raw, account="a")

    assert limits == AccountRateLimits()
    assert not limits
    defaults, _ = registry.rate_limit_defaults(channel)
    assert limits.over(defaults, cost_bucket=True) == dict(defaults)


@pytest.mark.parametrize(
    "channel, raw, expected",
    [
        # unknown names: a typo, another channel's operation, a cost bucket where there is none
        (
            "amazon",
            {"getOrder5": {"rate": 1, "burst": 1}},
            "unknown amazon operation 'getOrder5'",
        ),
        (
            "shopify",
            {"getOrders": {"rate": 1, "burst": 1}},
            "unknown shopify operation 'getOrders'",
        ),
        (
            "amazon",
            {"cost_bucket": {"maximum": 10, "restore_rate": 1}},
            "operation 'cost_bucket'",
        ),
        (
            "ebay",
            {"getOrders": {"rate": 1, "burst": 1}},
            "(known: sell.fulfillment, sell.inventory)",
        ),
        # numbers that are not positive, not finite, not numbers, a bucket under one request
        ("amazon", {"getOrders": {"rate": 0, "burst": 1}}, "rate_limits.getOrders.rate"),
        (
            "woocommerce",
            {"get_order": {"rate": 1, "burst": -5}},
            "rate_limits.get_order.burst",
        ),
        (
            "woocommerce",
            {"get_order": {"rate": 1, "burst": 0.5}},
            "greater than or equal to 1",
        ),
        (
            "shopify",
            {"cost_bucket": {"maximum": 2000, "restore_rate": 0}},
            "cost_bucket.restore_rate",
        ),
        (
            "shopify",
            {"cost_bucket": {"maximum": -1, "restore_rate": 50}},
            "cost_bucket.maximum",
        ),
        ("amazon", {"getOrders": {"rate": float("inf"), "burst": 1}}, "finite"),
        ("amazon", {"getOrders": {"rate": "2", "burst": 1}}, "valid number (got '2')"),
        ("amazon", {"getOrders": {"rate": True, "burst": 1}}, "getOrders.rate"),
        # wrong shapes
        ("amazon", {"getOrders": {"rate": 1}}, "getOrders.burst: Field required"),
        ("amazon", {"getOrders": {"rate": 1, "burst": 1, "cost": 2}}, "getOrders.cost"),
        ("amazon", {"getOrders": 5}, "getOrders: expected an object, got int"),
        ("amazon", [{"getOrders": {}}], "rate_limits: expected an object, got list"),
    ],
)
def test_an_invalid_column_is_refused_naming_the_account_and_the_key(
    channel: str, raw: Any, expected: str
) -> None:
    with pytest.raises(ValueError) as caught:
        registry.parse_rate_limits(channel, raw, account="acme-1")

    assert isinstance(caught.value, RateLimitsError)
    assert str(caught.value).startswith("account 'acme-1': rate_limits")
    assert expected in str(caught.value)


def test_an_account_with_bad_limits_fails_when_its_connector_is_built() -> None:
    bad = account("amazon", {"getOrdres": {"rate": 1, "burst": 5}}, name="acme-eu")

    with pytest.raises(RateLimitsError, match=r"account 'acme-eu'.*'getOrdres'"):
        connector_for(bad)
    with pytest.raises(RateLimitsError, match="acme-eu"):
        account_config(bad)  # what the poller builds its connector from


def test_a_connector_refuses_limits_its_channel_does_not_have() -> None:
    # an AccountConfig built by hand skips the registry: the connector still checks
    config = account_config(account("woocommerce"))
    wrong = AccountRateLimits(cost_bucket=CostLimit(10, 1))
    from dataclasses import replace

    from integrations.woocommerce.connector import WooCommerceConnector

    with pytest.raises(RateLimitsError, match="cost_bucket"):
        WooCommerceConnector(replace(config, rate_limits=wrong))


# --- the connector built for an account has the account's buckets --------------------------


def test_amazon_connector_for_an_account_has_its_buckets_and_the_defaults_for_the_rest(
    time_: FakeTime,
) -> None:
    acct = account("amazon", {"getOrders": {"rate": 0.0334, "burst": 40}})
    s, limiter = seams(time_)

    connector: Any = connector_for(acct, s)

    expected = {**AMAZON_DEFAULTS, "getOrders": Bucket(0.0334, 40)}
    assert connector.client.rate_limits == expected
    assert limiter.configured == {
        f"SpApiClient:{acct.name}:{op}": bucket for op, bucket in expected.items()
    }
    connector.close()


def test_woocommerce_connector_for_an_account_has_its_buckets_and_the_defaults_for_the_rest(
    time_: FakeTime,
) -> None:
    acct = account("woocommerce", {"list_orders": {"rate": 1, "burst": 2}})
    s, limiter = seams(time_)

    connector: Any = connector_for(acct, s)

    polite = Bucket(rate=5.0, burst=10.0)
    assert limiter.configured == {
        f"WooCommerceClient:{acct.name}:{op}": Bucket(1.0, 2.0) if op == "list_orders" else polite
        for op in WooCommerceClient.rate_limits
    }
    assert WooCommerceClient.rate_limits["list_orders"] == polite  # the class default is kept
    connector.close()


def test_ebay_connector_for_an_account_has_its_quota(time_: FakeTime) -> None:
    acct = account("ebay", {"sell.fulfillment": {"rate": 1_500_000 / 86_400, "burst": 80}})
    s, limiter = seams(time_)

    connector: Any = connector_for(acct, s)

    # one daily quota for the whole Fulfillment API: every operation, one key, one bucket;
    # the Inventory API (stock) has its own, at its default here
    assert limiter.configured == {
        f"EbayClient:{acct.name}:sell.fulfillment": Bucket(1_500_000 / 86_400, 80),
        f"EbayClient:{acct.name}:sell.inventory": INVENTORY_QUOTA,
    }
    assert set(connector.client.rate_limits) == set(EbayClient.rate_limits)
    connector.close()


def test_shopify_connector_for_an_account_has_its_cost_bucket() -> None:
    acct = account("shopify", {"cost_bucket": {"maximum": 2000, "restore_rate": 100}})

    connector: Any = connector_for(acct)

    bucket = connector.client.bucket
    assert (bucket.maximum, bucket.restore_rate) == (2000.0, 100.0)
    assert bucket is shared_bucket(acct.shop, 2000.0, 100.0)  # process-wide, per shop
    standard: Any = connector_for(account("shopify"))
    assert connector.client.chunk_size() > standard.client.chunk_size()  # bigger bucket
    connector.close()
    standard.close()


@pytest.mark.parametrize("channel", list(CREDENTIALS))
def test_without_limits_every_connector_has_todays_defaults(channel: str, time_: FakeTime) -> None:
    acct = account(channel)
    s, limiter = seams(time_)

    connector: Any = connector_for(acct, s)

    if channel == "shopify":
        bucket = connector.client.bucket
        assert (bucket.maximum, bucket.restore_rate) == (DEFAULT_MAXIMUM, DEFAULT_RESTORE_RATE)
        assert limiter.configured == {}
    elif channel == "amazon":
        assert set(limiter.configured.values()) == set(AMAZON_DEFAULTS.values())
        assert connector.client.rate_limits == dict(AMAZON_DEFAULTS)
    elif channel == "woocommerce":
        assert set(limiter.configured.values()) == {Bucket(5.0, 10.0)}
        assert len(limiter.configured) == len(WooCommerceClient.rate_limits)
    else:
        assert set(limiter.configured.values()) == {FULFILLMENT_QUOTA, INVENTORY_QUOTA}
    connector.close()


def test_the_poller_builds_its_connector_with_the_account_limits(
    monkeypatch: pytest.MonkeyPatch, time_: FakeTime
) -> None:
    # workflows.sync builds its own connector (with the Redis limiter): same account_config
    from workflows import sync

    limiter = RecordingLimiter(time_.clock)
    monkeypatch.setattr(sync, "shared_limiter", lambda: limiter)
    acct = account("amazon", {"getOrderItems": {"rate": 2, "burst": 60}})

    sync._connector(acct).close()

    assert limiter.configured[f"SpApiClient:{acct.name}:getOrderItems"] == Bucket(2.0, 60.0)
    assert limiter.configured[f"SpApiClient:{acct.name}:getOrders"] == AMAZON_DEFAULTS["getOrders"]


# --- the custom numbers pace the calls -----------------------------------------------------


def test_a_custom_amazon_bucket_paces_its_operation(time_: FakeTime) -> None:
    acct = account("amazon", {"confirmShipment": {"rate": 0.5, "burst": 2}})
    s, _ = seams(time_)
    connector: Any = connector_for(acct, s)

    for _ in range(4):
        connector.client.confirm_shipment("111-1", {"packageDetail": {}})

    # two from the burst, then one every 2 s (the default 2/s, burst 10 would not wait)
    assert time_.sleeps == [pytest.approx(2.0), pytest.approx(2.0)]
    connector.close()


def test_a_custom_woocommerce_bucket_paces_only_its_operation(time_: FakeTime) -> None:
    acct = account("woocommerce", {"get_order": {"rate": 2, "burst": 1}})
    s, _ = seams(time_)
    connector: Any = connector_for(acct, s)

    for _ in range(3):
        connector.client.get_order("7")
    waited = list(time_.sleeps)
    for _ in range(3):
        connector.client.list_notes("7")  # default 5/s, burst 10: no wait

    assert waited == [pytest.approx(0.5), pytest.approx(0.5)]
    assert time_.sleeps == waited
    connector.close()


def test_a_custom_ebay_quota_paces_every_fulfillment_call(time_: FakeTime) -> None:
    acct = account("ebay", {"sell.fulfillment": {"rate": 1, "burst": 2}})
    s, _ = seams(time_)
    connector: Any = connector_for(acct, s)

    connector.client.get_order("12-3")
    connector.client.get_shipping_fulfillments("12-3")
    connector.client.get_order("12-4")
    connector.client.get_shipping_fulfillments("12-4")

    # the token refresh is not limited; the four API calls share one bucket of 2 at 1/s
    assert time_.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]
    connector.close()


def test_a_custom_shopify_cost_bucket_paces_the_queries(time_: FakeTime) -> None:
    acct = account("shopify", {"cost_bucket": {"maximum": 200, "restore_rate": 10}})
    # the shop's process-wide bucket, on the fake clock (made before the connector, with the
    # documented numbers: building the connector seeds it with the account's)
    shared_bucket(acct.shop, clock=time_.clock)
    s, _ = seams(time_)
    connector: Any = connector_for(acct, s)

    for _ in range(3):
        connector.client.graphql("Shop", shopify_queries.SHOP, {}, cost=150)

    # 150 of 200 points, then 100 missing at 10/s = 10 s, then 150 missing = 15 s; the
    # standard plan's 1000 points would have sent all three at once
    assert time_.sleeps == [pytest.approx(10.0), pytest.approx(15.0)]
    connector.close()


def test_shopify_numbers_win_over_the_seed_once_reported() -> None:
    from integrations.shopify.throttle import ThrottleStatus

    acct = account("shopify", {"cost_bucket": {"maximum": 2000, "restore_rate": 100}})
    first: Any = connector_for(acct)
    bucket = first.client.bucket
    bucket.observe(ThrottleStatus(1000.0, 900.0, 50.0))

    later: Any = connector_for(acct)  # a later connector of the same shop: seed ignored

    assert later.client.bucket is bucket

    assert (bucket.maximum, bucket.restore_rate) == (1000.0, 50.0)
    first.close()
    later.close()


# --- CLI ----------------------------------------------------------------------------------


class Cli:
    """``ordersync …`` on a database of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Any:
        from ordersync.cli import cli

        return self.runner.invoke(cli, list(args))


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    from ordersync import staff_cli

    url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    Base.metadata.create_all(get_engine(url))
    monkeypatch.setattr(staff_cli, "session_scope", lambda: session_scope(url))
    monkeypatch.setattr(staff_cli, "console", Console(width=400))  # tables on one line each
    yield Cli(url)
    get_engine(url).dispose()


def test_cli_add_stores_the_limits_and_list_shows_them(cli: Cli) -> None:
    added = cli(
        "accounts", "add", "amazon", "acme-us", "--shop", "ATVPDKIKX0DER",
        "-c", "client_id=x", "--rate-limit", "getOrders=0.0334/40",
        "--rate-limit", "confirmShipment=2/10",  # the documented numbers: not shown
    )  # fmt: skip
    shop = cli(
        "accounts", "add", "shopify", "plus-shop", "--shop", "plus.myshopify.com",
        "--rate-limit", "cost_bucket=2000/100", "--webhook-secret", "s",
    )  # fmt: skip
    plain = cli("accounts", "add", "woocommerce", "woo", "--shop", "woo.example",
                "--webhook-secret", "s")  # fmt: skip
    assert (added.exit_code, shop.exit_code, plain.exit_code) == (0, 0, 0), added.output

    listed = cli("accounts", "list", "--json")

    rows = {r["name"]: r for r in json.loads(listed.stdout.strip().splitlines()[-1])}
    assert rows["acme-us"]["rate_limits"] == {"getOrders": {"rate": 0.0334, "burst": 40.0}}
    assert rows["plus-shop"]["rate_limits"] == {
        "cost_bucket": {"maximum": 2000.0, "restore_rate": 100.0}
    }
    assert rows["woo"]["rate_limits"] == {}
    assert all(r["rate_limits_error"] is None for r in rows.values())
    table = cli("accounts", "list").stdout
    assert "getOrders=0.0334/40" in table
    assert "cost_bucket=2000/100" in table
    assert "confirmShipment" not in table
    # and what was stored is what the connector uses
    with session_scope(cli.url) as session:
        stored = session.query(ChannelAccount).filter_by(name="acme-us").one()
        assert account_config(stored).rate_limits.buckets == {
            "getOrders": Bucket(0.0334, 40.0),
            "confirmShipment": Bucket(2.0, 10.0),
        }


@pytest.mark.parametrize(
    "args, message",
    [
        (["amazon", "--rate-limit", "getOrdrs=1/10"], "unknown amazon operation 'getOrdrs'"),
        (
            ["shopify", "--webhook-secret", "s", "--rate-limit", "cost_bucket=2000"],
            "expected OPERATION=RATE/BURST",
        ),
        (["amazon", "--rate-limit", "getOrders=fast/10"], "expected two numbers"),
        (["amazon", "--rate-limit", "getOrders=0/10"], "getOrders.rate"),
        (["ebay", "--rate-limit", "sell.fulfillment=1/0"], "sell.fulfillment.burst"),
        (["amazon", "--rate-limit", "getOrders=1/10", "--rate-limit", "getOrders=2/10"], "twice"),
        (
            ["woocommerce", "--webhook-secret", "s", "--rate-limit", "cost_bucket=10/1"],
            "operation 'cost_bucket'",
        ),
    ],
)
def test_cli_add_refuses_a_bad_rate_limit_in_one_line(
    cli: Cli, args: list[str], message: str
) -> None:
    channel, *options = args

    result = cli("accounts", "add", channel, "typo-shop", *options)

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert json.loads(cli("accounts", "list", "--json").stdout) == []  # nothing stored


def test_cli_list_shows_limits_that_do_not_parse(cli: Cli) -> None:
    with session_scope(cli.url) as session:
        session.add(account("ebay", {"getOrders": {"rate": 1, "burst": 1}}, name="old"))

    rows = json.loads(cli("accounts", "list", "--json").stdout)

    assert rows[0]["rate_limits"] == {}
    assert "unknown ebay operation 'getOrders'" in rows[0]["rate_limits_error"]
    assert "INVALID" in cli("accounts", "list").stdout


# --- the seams underneath ------------------------------------------------------------------


def test_client_seams_refuse_operations_they_do_not_have() -> None:
    with pytest.raises(RateLimitsError, match="list_order"):
        WooCommerceClient("https://w.example", "ck", "cs", rate_limits={"list_order": Bucket(1, 1)})
    known = r"\(known: sell.fulfillment, sell.inventory\)"
    with pytest.raises(RateLimitsError, match=rf"getOrders {known}"):
        EbayClient(client_id="a", client_secret="b", refresh_token="c",
                   rate_limits={"getOrders": Bucket(1, 1)})  # fmt: skip


def test_a_cost_bucket_seed_changes_the_capacity_and_keeps_what_was_used(
    time_: FakeTime,
) -> None:
    from integrations.shopify.throttle import CostBucket, ThrottleStatus

    bucket = CostBucket(clock=time_.clock)
    bucket.reserve(300)  # 700 of 1000 left

    bucket.seed(2000, 100)

    assert bucket.available == 1700
    assert bucket.reserve(1800) == pytest.approx(1.0)  # 100 missing at 100/s
    bucket.observe(ThrottleStatus(1000.0, 400.0, 50.0))
    bucket.seed(2000, 100)  # Shopify has spoken: ignored
    assert (bucket.maximum, bucket.restore_rate, bucket.available) == (1000.0, 50.0, 400.0)
