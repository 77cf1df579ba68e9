"""Shopify, as the registry knows it: GraphQL polling, signed REST-shaped order webhooks."""

from __future__ import annotations

from integrations.marketplace import Marketplace, WebhookReceiver, upsert_order
from integrations.shopify import webhooks
from integrations.shopify.connector import (
    COST_BUCKET_DEFAULT,
    RATE_LIMIT_DEFAULTS,
    ShopifyConnector,
)
from integrations.shopify.mapper import map_order

__all__ = ["MARKETPLACE"]

#: the order topics whose body is the REST order JSON
ORDER_TOPICS = (
    "orders/create",
    "orders/updated",
    "orders/cancelled",
    "orders/paid",
    "orders/fulfilled",
    "orders/partially_fulfilled",
    "orders/edited",
)

MARKETPLACE = Marketplace(
    name="shopify",
    connector=ShopifyConnector,
    mapper=map_order,
    rate_limit_defaults=RATE_LIMIT_DEFAULTS,
    cost_bucket_default=COST_BUCKET_DEFAULT,
    webhooks=WebhookReceiver(
        signature_header="x-shopify-hmac-sha256",
        verify=webhooks.verify_signature,
        body_check=webhooks.body_check,
        topic=webhooks.topic,
        dedupe_key=webhooks.dedupe_key,
        kept_headers=webhooks.kept_headers,
    ),
    topic_handlers=dict.fromkeys(ORDER_TOPICS, upsert_order),
    takes_delivery=True,
    splits_by_location=True,
)
