"""The marketplaces: the built-in packages plus the plugins named in the settings.

A marketplace is a module exposing ``MARKETPLACE = Marketplace(...)``
(``integrations.marketplace``): the built-in ones are ``integrations/<name>/marketplace.py``,
listed in ``BUILTIN``; plugins are more such modules named in ``ORDERSYNC_MARKETPLACE_PLUGINS``
(comma-separated import paths), so every process started with that environment (web, workers,
Beat, the CLI) knows them. Nothing else lists the marketplaces: a channel is the name of a
registered marketplace.

Each marketplace names the rate limits an account may override (``rate_limit_defaults``,
``cost_bucket_default``); ``parse_rate_limits`` checks an account's ``rate_limits`` column
against them.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from core.settings import get_settings
from integrations import ratelimit
from integrations.marketplace import Marketplace
from integrations.ratelimit import AccountRateLimits, Bucket, CostLimit

__all__ = [
    "BUILTIN",
    "UnknownMarketplace",
    "get",
    "marketplaces",
    "parse_rate_limits",
    "rate_limit_defaults",
]

BUILTIN = (
    "integrations.shopify.marketplace",
    "integrations.woocommerce.marketplace",
    "integrations.amazon.marketplace",
    "integrations.ebay.marketplace",
)
#: a URL path segment that fits ``channel_accounts.channel`` (20 characters)
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,19}")


class UnknownMarketplace(LookupError):
    """No registered marketplace has this name."""


def _declared(module_name: str) -> Marketplace:
    module = importlib.import_module(module_name)
    marketplace = getattr(module, "MARKETPLACE", None)
    if not isinstance(marketplace, Marketplace):
        raise TypeError(f"{module_name}: MARKETPLACE is not an integrations Marketplace")
    if not _NAME.fullmatch(marketplace.name):
        raise ValueError(f"{module_name}: marketplace name {marketplace.name!r} is not a slug")
    return marketplace


@functools.cache
def _load(modules: tuple[str, ...]) -> Mapping[str, Marketplace]:
    found: dict[str, Marketplace] = {}
    for module_name in modules:
        marketplace = _declared(module_name)
        if marketplace.name in found:
            raise ValueError(f"{module_name}: marketplace {marketplace.name!r} is declared twice")
        found[marketplace.name] = marketplace
    return MappingProxyType(found)


def marketplaces() -> Mapping[str, Marketplace]:
    """Name → marketplace: the built-in ones, then the plugins of the settings in effect."""
    return _load(BUILTIN + get_settings().marketplace_plugins)


def get(name: str) -> Marketplace:
    try:
        return marketplaces()[name]
    except KeyError:
        known = ", ".join(marketplaces())
        raise UnknownMarketplace(f"unknown marketplace {name!r} (known: {known})") from None


def rate_limit_defaults(channel: str) -> tuple[Mapping[str, Bucket], CostLimit | None]:
    """The documented limits an account of ``channel`` may override: (operation → bucket, the
    cost bucket or None)."""
    marketplace = get(channel)
    return marketplace.rate_limit_defaults, marketplace.cost_bucket_default


def parse_rate_limits(channel: str, raw: Any, *, account: str) -> AccountRateLimits:
    """An account's ``rate_limits`` column, checked against its channel's operations;
    ``RateLimitsError`` (a ValueError naming the account and the key) when it is not valid."""
    buckets, cost = rate_limit_defaults(channel)
    return ratelimit.parse_rate_limits(
        raw,
        account=account,
        operations=buckets,
        cost_bucket=cost is not None,
        channel=channel,
    )
