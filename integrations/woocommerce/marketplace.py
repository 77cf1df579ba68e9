"""WooCommerce, as the registry knows it: REST v3 polling, signed order webhooks (and the
unsigned ping sent when a webhook is saved)."""

from __future__ import annotations

from integrations.marketplace import Marketplace, WebhookReceiver, upsert_order
from integrations.woocommerce import webhooks
from integrations.woocommerce.client import WooCommerceClient
from integrations.woocommerce.connector import WooCommerceConnector
from integrations.woocommerce.mapper import map_order

__all__ = ["MARKETPLACE"]

#: the topics whose body is the REST order (``order.deleted`` carries only the id)
ORDER_TOPICS = ("order.created", "order.updated", "order.restored")

MARKETPLACE = Marketplace(
    name="woocommerce",
    connector=WooCommerceConnector,
    mapper=map_order,
    rate_limit_defaults=WooCommerceClient.rate_limits,
    webhooks=WebhookReceiver(
        signature_header="x-wc-webhook-signature",
        verify=webhooks.verify_signature,
        body_check=webhooks.body_check,
        topic=webhooks.topic,
        dedupe_key=webhooks.dedupe_key,
        kept_headers=webhooks.kept_headers,
        is_ping=webhooks.is_ping,
    ),
    topic_handlers=dict.fromkeys(ORDER_TOPICS, upsert_order),
    refunds_on_cancel=True,
)
