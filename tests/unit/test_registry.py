"""The marketplace registry: the built-in packages plus the plugins of the settings, typed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from core.settings import Settings, get_settings
from db.base import Base
from db.models import ChannelAccount
from db.session import get_engine, session_scope
from integrations import registry
from integrations.marketplace import Marketplace
from integrations.ratelimit import RateLimitsError

TOY = "tests.toy_marketplace.marketplace"


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set ``ORDERSYNC_MARKETPLACE_PLUGINS`` with ``plugins.setenv``; undone afterwards."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def _use(plugins: pytest.MonkeyPatch, value: str) -> None:
    plugins.setenv("ORDERSYNC_MARKETPLACE_PLUGINS", value)
    get_settings.cache_clear()


def test_the_built_in_marketplaces_each_declare_themselves_once() -> None:
    found = registry.marketplaces()

    assert list(found) == ["shopify", "woocommerce", "amazon", "ebay"]
    assert all(isinstance(m, Marketplace) and m.name == name for name, m in found.items())
    assert [n for n, m in found.items() if m.webhooks is not None] == ["shopify", "woocommerce"]
    assert found["shopify"].cost_bucket_default is not None
    assert "getOrders" in found["amazon"].rate_limit_defaults


def test_a_plugin_named_in_the_setting_is_registered_after_the_built_ins(
    plugins: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(registry.UnknownMarketplace, match="unknown marketplace 'toy'"):
        registry.get("toy")

    _use(plugins, f" {TOY} ,")

    assert list(registry.marketplaces())[-1] == "toy"
    toy = registry.get("toy")
    assert sorted(toy.topic_handlers) == ["order.changed", "order.placed"]
    assert (
        registry.parse_rate_limits("toy", {"ship_order": {"rate": 1, "burst": 1}}, account="t")
        .buckets["ship_order"]
        .rate
        == 1
    )
    with pytest.raises(RateLimitsError, match="known: list_orders, get_order, ship_order"):
        registry.parse_rate_limits("toy", {"getOrders": {"rate": 1, "burst": 1}}, account="t")


@pytest.mark.parametrize(
    ("modules", "error", "message"),
    [
        ("tests.toy_marketplace.client", TypeError, "MARKETPLACE is not"),
        ("integrations.shopify.marketplace", ValueError, "'shopify' is declared twice"),
        ("tests.toy_marketplace.no_such_module", ModuleNotFoundError, "no_such_module"),
    ],
)
def test_a_broken_plugin_setting_fails_loudly(
    plugins: pytest.MonkeyPatch, modules: str, error: type[Exception], message: str
) -> None:
    _use(plugins, modules)

    with pytest.raises(error, match=message):
        registry.marketplaces()


def test_the_setting_is_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSYNC_MARKETPLACE_PLUGINS", "a.b, c.d,,")

    assert Settings(_env_file=None).marketplace_plugins == ("a.b", "c.d")  # type: ignore[call-arg]


def test_accounts_add_takes_a_plugin_marketplace_and_refuses_an_unknown_one(
    plugins: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ordersync import staff_cli
    from ordersync.cli import cli

    url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    Base.metadata.create_all(get_engine(url))
    plugins.setattr(staff_cli, "session_scope", lambda: session_scope(url))
    runner = CliRunner()
    args = ["accounts", "add", "toy", "toy-shop", "-c", "api_key=k", "--webhook-secret", "s"]

    refused = runner.invoke(cli, args)
    _use(plugins, TOY)
    added = runner.invoke(cli, args)

    assert refused.exit_code == 2 and "'toy' is not one of shopify" in refused.output
    assert added.exit_code == 0, added.output
    with session_scope(url) as session:
        account = session.scalars(select(ChannelAccount)).one()
    assert (account.name, account.channel, account.credentials) == (
        "toy-shop",
        "toy",
        {"api_key": "k"},
    )
    get_engine(url).dispose()
