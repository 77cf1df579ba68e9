"""eBay Sell Fulfillment: connector, typed client, payload shapes and mapper."""

from __future__ import annotations

from integrations.ebay.connector import EbayConnector
from integrations.ebay.mapper import map_order

__all__ = ["EbayConnector", "map_order"]
