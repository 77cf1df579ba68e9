"""What a marketplace declares, in one place: ``MARKETPLACE = Marketplace(...)``.

Each marketplace package (``integrations/<name>/marketplace.py``, or a plugin module named in
``ORDERSYNC_MARKETPLACE_PLUGINS``) exposes one ``Marketplace``; ``integrations.registry`` finds
them and everything else (the webhook receiver, intake dispatch, polling, ``ship``, the CLI,
the dashboard) asks the registry. See docs/adding-a-marketplace.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Order
from domain.canonical import CanonicalOrder, CanonicalRefund
from domain.errors import OrderNotKnown
from domain.states import OrderState
from integrations.base import ConnectorFactory
from integrations.ratelimit import Bucket, CostLimit
from orders.intake import IntakeOutcome, IntakeResult, apply_order
from orders.returns import record_marketplace_refunds

__all__ = [
    "BodyCheck",
    "Delivery",
    "Mapper",
    "Marketplace",
    "TopicHandler",
    "WebhookReceiver",
    "refund_handler",
    "upsert_order",
]

#: a marketplace's order payload (parsed JSON) and the account name → the canonical order
Mapper = Callable[[dict[str, Any], str], CanonicalOrder]


def _never_ping(_headers: Mapping[str, str], _body: bytes) -> bool:
    return False


class BodyCheck(Protocol):
    """A signature check fed the raw body chunk by chunk as it streams in."""

    def update(self, chunk: bytes) -> None: ...

    def valid(self) -> bool: ...


@dataclass(frozen=True)
class WebhookReceiver:
    """How one marketplace signs, names and identifies its deliveries. Header names are
    lower-case; every callable gets the lower-cased headers."""

    signature_header: str
    #: (the account's webhook secret, the raw body, the signature header or None) → valid
    verify: Callable[[str, bytes, str | None], bool]
    #: the delivery's topic (None = unknown: stored, then ignored)
    topic: Callable[[Mapping[str, str]], str | None]
    #: the same for every redelivery of one delivery (the inbox absorbs repeats on it)
    dedupe_key: Callable[[Mapping[str, str], bytes], str]
    #: the headers stored with the inbox row (never the signature)
    kept_headers: Callable[[Mapping[str, str]], dict[str, str]]
    #: an unsigned "ping" that must be answered 200 and otherwise ignored (WooCommerce)
    is_ping: Callable[[Mapping[str, str], bytes], bool] = _never_ping
    #: (the account's webhook secret, the signature header or None) → a check fed the body as
    #: it streams in, so that a body with a bad signature is never held whole; None: the
    #: receiver holds the body (at most ``WEBHOOK_MAX_BODY_BYTES``) and calls ``verify``
    body_check: Callable[[str, str | None], BodyCheck] | None = None


@dataclass(frozen=True)
class Delivery:
    """One stored webhook delivery, its body parsed, as a topic handler gets it."""

    account_id: int
    account: str  # the account's name
    topic: str
    payload: dict[str, Any]


#: (the open transaction, the marketplace, the delivery) → what intake did with it; raise
#: ``domain.errors.PayloadError`` or a pydantic ``ValidationError`` for a body that does not map
TopicHandler = Callable[[Session, "Marketplace", Delivery], IntakeResult]


def refund_handler(mapper: Callable[[dict[str, Any], str], CanonicalRefund]) -> TopicHandler:
    """The handler of a topic whose body is one refund of an order (Shopify ``refunds/create``):
    map it and record it once (``orders.returns``), restocking what the marketplace restocked.
    A refund of an order we do not have yet is ``OrderNotKnown``: intake fetches the order (its
    refunds come with it), or tries the delivery again later."""

    def record(session: Session, marketplace: Marketplace, delivery: Delivery) -> IntakeResult:
        refund = mapper(delivery.payload, delivery.account)
        order = session.scalar(
            select(Order)
            .where(
                Order.channel_account_id == delivery.account_id,
                Order.external_id == refund.order_external_id,
            )
            .with_for_update()
        )
        if order is None:  # it overtook the order's own delivery
            raise OrderNotKnown(f"{marketplace.name} refund of an order we do not have yet",
                                external_id=refund.order_external_id)  # fmt: skip
        actor = f"webhook:{marketplace.name}"
        new = record_marketplace_refunds(session, order, [refund], actor=actor)
        return IntakeResult(order.id, IntakeOutcome.UPDATED if new else IntakeOutcome.STALE,
                            OrderState(order.state), refunded=tuple(new))  # fmt: skip

    return record


def upsert_order(session: Session, marketplace: Marketplace, delivery: Delivery) -> IntakeResult:
    """The handler of a topic whose body is the order: map it, upsert it."""
    order = marketplace.mapper(delivery.payload, delivery.account)
    # the delivery's body stays in its inbox row (linked by inbox_events.order_id): the order
    # does not keep a second copy of it in orders.raw
    order = order.model_copy(update={"raw": {}})
    return apply_order(session, delivery.account_id, order, actor=f"webhook:{marketplace.name}")


@dataclass(frozen=True)
class Marketplace:
    #: the channel: URL path segment, ``channel_accounts.channel``, ``CanonicalOrder.channel``
    name: str
    connector: ConnectorFactory
    mapper: Mapper
    #: what ``channel_accounts.rate_limits`` may override: operation → documented bucket
    rate_limit_defaults: Mapping[str, Bucket]
    #: the documented query-cost bucket where the marketplace limits query cost (Shopify)
    cost_bucket_default: CostLimit | None = None
    #: None: the marketplace sends no order webhooks (found by polling only)
    webhooks: WebhookReceiver | None = None
    #: webhook topic → handler; a topic not listed is stored and marked ``ignored``
    topic_handlers: Mapping[str, TopicHandler] = field(default_factory=dict)
    #: the seller can cancel an order through the API (``push_cancellation``); False: staff
    #: cancel it in the marketplace's own admin (Amazon), and ordersync says so
    seller_cancels: bool = True
    #: the marketplace splits an order by its locations (``shipment_groups`` asks it): Shopify
    splits_by_location: bool = False
    #: the marketplace takes delivery events (``push_delivery``: Shopify's fulfillment events)
    takes_delivery: bool = False
    #: a cancellation we push gives the buyer back the money the marketplace holds (Shopify's
    #: ``orderCancel`` refunds to the original payment methods; an eBay seller cancellation
    #: refunds a buyer who paid; WooCommerce's connector refunds through the shop's gateway):
    #: the cancellation's delivery records that refund
    refunds_on_cancel: bool = False
