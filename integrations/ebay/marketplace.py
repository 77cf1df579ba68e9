"""eBay Sell Fulfillment, as the registry knows it: polling only (its notifications carry no
order data)."""

from __future__ import annotations

from integrations.ebay.client import QUOTAS
from integrations.ebay.connector import EbayConnector
from integrations.ebay.mapper import map_order
from integrations.marketplace import Marketplace

__all__ = ["MARKETPLACE"]

MARKETPLACE = Marketplace(
    name="ebay",
    connector=EbayConnector,
    mapper=map_order,
    rate_limit_defaults=QUOTAS,
    refunds_on_cancel=True,
)
