"""Amazon SP-API, as the registry knows it: polling only (its notifications go to SQS)."""

from __future__ import annotations

from integrations.amazon.client import RATE_LIMITS
from integrations.amazon.connector import AmazonConnector
from integrations.amazon.mapper import map_order
from integrations.marketplace import Marketplace

__all__ = ["MARKETPLACE"]

MARKETPLACE = Marketplace(
    name="amazon",
    connector=AmazonConnector,
    mapper=map_order,
    rate_limit_defaults=RATE_LIMITS,
    seller_cancels=False,
)
