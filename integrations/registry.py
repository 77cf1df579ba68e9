"""The explicit list of marketplaces: channel → its mapper, webhook module and connector.

Entries are import paths, imported on first use, so a process only loads the marketplaces it
touches (and a broken optional dependency of one cannot stop the others).

Each connector class names the rate limits an account may override: ``rate_limit_defaults``
(operation → documented ``Bucket``) and ``cost_bucket_default`` (a ``CostLimit`` where the
channel limits query cost, else None). ``parse_rate_limits`` checks an account's
``rate_limits`` column against them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from domain.canonical import CanonicalOrder
from domain.states import Channel
from integrations import ratelimit
from integrations.ratelimit import AccountRateLimits, Bucket, CostLimit

__all__ = [
    "connector_class",
    "mapper",
    "parse_rate_limits",
    "rate_limit_defaults",
    "webhook_module",
]

_PACKAGES = {
    Channel.SHOPIFY: "integrations.shopify",
    Channel.WOOCOMMERCE: "integrations.woocommerce",
    Channel.AMAZON: "integrations.amazon",
    Channel.EBAY: "integrations.ebay",
}
_CONNECTORS = {
    Channel.SHOPIFY: "ShopifyConnector",
    Channel.WOOCOMMERCE: "WooCommerceConnector",
    Channel.AMAZON: "AmazonConnector",
    Channel.EBAY: "EbayConnector",
}
#: marketplaces that send webhooks (Amazon notifications go to SQS; eBay's are not order data)
WEBHOOK_CHANNELS = frozenset({Channel.SHOPIFY, Channel.WOOCOMMERCE})


def _module(channel: Channel, name: str) -> ModuleType:
    return importlib.import_module(f"{_PACKAGES[Channel(channel)]}.{name}")


def mapper(channel: Channel) -> Callable[[dict[str, Any], str], CanonicalOrder]:
    fn: Callable[[dict[str, Any], str], CanonicalOrder] = _module(channel, "mapper").map_order
    return fn


def webhook_module(channel: Channel) -> ModuleType:
    if Channel(channel) not in WEBHOOK_CHANNELS:
        raise KeyError(channel)
    return _module(channel, "webhooks")


def connector_class(channel: Channel) -> Any:
    return getattr(_module(channel, "connector"), _CONNECTORS[Channel(channel)])


def rate_limit_defaults(channel: Channel) -> tuple[Mapping[str, Bucket], CostLimit | None]:
    """The documented limits an account of ``channel`` may override: (operation → bucket, the
    cost bucket or None)."""
    cls = connector_class(channel)
    return cls.rate_limit_defaults, cls.cost_bucket_default


def parse_rate_limits(channel: Channel, raw: Any, *, account: str) -> AccountRateLimits:
    """An account's ``rate_limits`` column, checked against its channel's operations;
    ``RateLimitsError`` (a ValueError naming the account and the key) when it is not valid."""
    buckets, cost = rate_limit_defaults(channel)
    return ratelimit.parse_rate_limits(
        raw,
        account=account,
        operations=buckets,
        cost_bucket=cost is not None,
        channel=Channel(channel).value,
    )
