"""Shopify, as the registry knows it: GraphQL polling, signed REST-shaped order webhooks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Order
from domain.errors import OrderNotKnown, PayloadError
from domain.states import OrderState
from integrations.marketplace import (
    Delivery,
    Marketplace,
    WebhookReceiver,
    refund_handler,
    upsert_order,
)
from integrations.shopify import webhooks
from integrations.shopify.connector import (
    COST_BUCKET_DEFAULT,
    RATE_LIMIT_DEFAULTS,
    ShopifyConnector,
)
from integrations.shopify.mapper import map_order, map_refund
from orders.intake import IntakeOutcome, IntakeResult, record_event

__all__ = ["MARKETPLACE", "edit_seen"]

#: the order topics whose body is the REST order JSON
ORDER_TOPICS = (
    "orders/create",
    "orders/updated",
    "orders/cancelled",
    "orders/paid",
    "orders/fulfilled",
    "orders/partially_fulfilled",
)


def edit_seen(session: Session, marketplace: Marketplace, delivery: Delivery) -> IntakeResult:
    """``orders/edited``: the body is the edit (``order_edit``: line additions and removals,
    https://shopify.dev/docs/api/webhooks/latest?reference=toml#list-orders-edited), not the
    order. It goes on the order's timeline and the order is fetched as it is now (intake then
    diffs its lines); the ``orders/updated`` Shopify sends along brings the same, whichever
    comes first."""
    edit = delivery.payload.get("order_edit")
    if not isinstance(edit, dict) or edit.get("order_id") is None:
        raise PayloadError("shopify orders/edited: body has no order_edit.order_id")
    external_id = str(edit["order_id"])
    order = session.scalar(
        select(Order).where(
            Order.channel_account_id == delivery.account_id, Order.external_id == external_id
        )
    )
    if order is None:  # it overtook the order's own delivery
        raise OrderNotKnown("shopify orders/edited: an edit of an order we do not have yet",
                            external_id=external_id)  # fmt: skip
    found = edit.get("line_items")
    items: dict[str, Any] = found if isinstance(found, dict) else {}
    record_event(session, order.id, actor="webhook:shopify", kind="edited_on_marketplace",
                 edit=str(edit.get("id")), additions=len(items.get("additions") or []),
                 removals=len(items.get("removals") or []))  # fmt: skip
    return IntakeResult(order.id, IntakeOutcome.STALE, OrderState(order.state),
                        refetch=external_id)  # fmt: skip


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
    topic_handlers={
        **dict.fromkeys(ORDER_TOPICS, upsert_order),
        # the body is the refund, with its refund line items and restock types
        "refunds/create": refund_handler(map_refund),
        # the body is the order edit (its line additions and removals), not the order: the
        # order as it is now comes with the orders/updated that Shopify sends with every edit
        "orders/edited": edit_seen,
    },
    takes_delivery=True,
    refunds_on_cancel=True,
    splits_by_location=True,
)
