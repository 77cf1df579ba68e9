"""The plugin module: ``ORDERSYNC_MARKETPLACE_PLUGINS=tests.toy_marketplace.marketplace``."""

from __future__ import annotations

from integrations.marketplace import Marketplace, WebhookReceiver, upsert_order
from tests.toy_marketplace import webhooks
from tests.toy_marketplace.client import RATE_LIMITS
from tests.toy_marketplace.connector import ToyConnector
from tests.toy_marketplace.mapper import map_order

__all__ = ["MARKETPLACE"]

MARKETPLACE = Marketplace(
    name="toy",
    connector=ToyConnector,
    mapper=map_order,
    rate_limit_defaults=RATE_LIMITS,
    webhooks=WebhookReceiver(
        signature_header=webhooks.SIGNATURE_HEADER,
        verify=webhooks.verify_signature,
        topic=webhooks.topic,
        dedupe_key=webhooks.dedupe_key,
        kept_headers=webhooks.kept_headers,
    ),
    topic_handlers={"order.placed": upsert_order, "order.changed": upsert_order},
    seller_cancels=False,
)
