"""The explicit list of marketplaces: channel → its mapper, webhook module and connector.

Entries are import paths, imported on first use, so a process only loads the marketplaces it
touches (and a broken optional dependency of one cannot stop the others).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from integrations.canonical import CanonicalOrder
from orders.states import Channel

__all__ = ["connector_class", "mapper", "webhook_module"]

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
