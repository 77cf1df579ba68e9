"""WooCommerce connector: the ``MarketplaceConnector`` for one shop.

Reads from ``account.credentials``: ``consumer_key`` (``ck_…``) and ``consumer_secret``
(``cs_…``), a REST API key with read/write permission (WooCommerce → Settings → Advanced →
REST API). The site is ``account.api_base_url`` or else ``account.shop`` (``https://`` added
when it has no scheme); ``/wp-json/wc/v3`` is appended by the client.

Rate limits: a polite 5/s, burst 10 per operation (``list_orders``, ``get_order``,
``update_order``, ``list_notes``, ``add_note``, ``list_products``, ``batch_products``), with the
account's ``rate_limits`` over them for a host that allows more or less.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import structlog

from domain.canonical import CanonicalOrder
from domain.errors import AuthError, TransportError, ValidationError
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from integrations.base import AccountConfig, ConnectorSeams, OrderPage, PagedOrders, ShipmentGroup
from integrations.woocommerce.client import BATCH_LIMIT, WooCommerceClient
from integrations.woocommerce.mapper import STRIPE_CAPTURED_META, map_order

__all__ = ["FULFILLMENT_META_KEY", "WooCommerceConnector"]

log = structlog.get_logger(__name__)

#: order meta marking a fulfillment we pushed ("_" prefix: hidden in the admin screen)
FULFILLMENT_META_KEY = "_ordersync_fulfillment"
CANCELLATION_META_KEY = "_ordersync_cancellation"
_CLOSED = frozenset({"cancelled", "refunded", "failed", "trash"})


def _listing(product: dict[str, Any], *, parent: str | None) -> ChannelListing | None:
    sku, pid = product.get("sku"), product.get("id")
    if not isinstance(sku, str) or not sku or pid is None:
        return None
    quantity = product.get("stock_quantity")
    shown = quantity if isinstance(quantity, int) and product.get("manage_stock") else None
    return ChannelListing(sku=sku, external_id=str(pid), parent_id=parent, quantity=shown)


def _site_url(account: AccountConfig) -> str:
    site = (account.api_base_url or account.shop or "").strip()
    if not site:
        raise ValidationError("woocommerce: account has neither api_base_url nor shop")
    return site if "://" in site else f"https://{site}"


def _credential(account: AccountConfig, key: str) -> str:
    value = account.credentials.get(key)
    if not isinstance(value, str) or not value:
        raise AuthError(f"woocommerce: credential {key!r} is missing")
    return value


class WooCommerceConnector(PagedOrders):
    def __init__(self, account: AccountConfig, seams: ConnectorSeams | None = None) -> None:
        seams = seams or ConnectorSeams()
        rate_limits = account.rate_limits.over(WooCommerceClient.rate_limits, account=account.name)
        self.account = account
        self.last_window_end: dt.datetime | None = None  # the window asked for is read whole
        self._clock = seams.clock
        self.client = WooCommerceClient(
            _site_url(account),
            _credential(account, "consumer_key"),
            _credential(account, "consumer_secret"),
            account=account.name,
            transport=seams.transport,
            limiter=seams.limiter,
            sleep=seams.sleep,
            rate_limits=rate_limits,
        )

    def __repr__(self) -> str:
        return f"WooCommerceConnector(account={self.account.name!r})"

    # -- orders ----------------------------------------------------------------------------

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        """Pages of ``GET /orders``; ``resume`` is the next page number (with the total seen
        on the first page, which tells when the window shifted under us)."""
        # a fixed end, even when the caller gives none: see WooCommerceClient.iter_order_pages
        end = until if until is not None else self._clock()
        for items, token in self.client.iter_order_pages(since, end, resume):
            yield OrderPage([self._map(p) for p in items], token)

    def get_order(self, external_id: str) -> CanonicalOrder:
        return self._map(self.client.get_order(external_id))

    def _map(self, payload: dict[str, Any]) -> CanonicalOrder:
        """The order with its refunds whole: an order whose body lists refunds (summaries: id
        and amount) gets them from ``/orders/{id}/refunds``, line items and all, so each is
        credited per line and restocked as Woo restocked it."""
        listed = payload.get("refunds") if isinstance(payload, dict) else None
        if not listed or payload.get("id") is None:
            return map_order(payload, self.account.name)
        refunds = self.client.list_refunds(str(payload["id"]))
        return map_order(payload, self.account.name, refunds)

    def shipment_groups(self, external_id: str) -> list[ShipmentGroup]:
        return []  # one location: the order ships from ours

    def push_fulfillment(
        self,
        external_id: str,
        *,
        tracking_number: str,
        carrier: str,
        idempotency_key: str,
        lines: Sequence[tuple[str, int]] = (),
        location: str = "",
        last: bool = True,
    ) -> None:
        """Add a customer note with the shipment's tracking number; with the order's ``last``
        shipment, mark the order ``completed`` (Woo has no partial shipments: a note each).

        Woo has no idempotency keys and no tracking field in core, so each step checks first:
        the order meta says whether the whole push was done, the notes whether the note was
        already added (a crash between the two steps must not add it twice).
        """
        order = self.client.get_order(external_id)
        for meta in order.get("meta_data") or []:
            if (
                isinstance(meta, dict)
                and meta.get("key") == FULFILLMENT_META_KEY
                and meta.get("value") == idempotency_key
            ):
                return
        status = str(order.get("status", ""))
        if status in _CLOSED:
            raise ValidationError(
                f"woocommerce: cannot fulfil an order in status {status!r}", code="order_closed"
            )
        if not self._has_note(external_id, tracking_number):
            try:
                self.client.add_note(
                    external_id,
                    f"Your order has shipped with {carrier}. Tracking number: {tracking_number}",
                    customer_note=True,  # Woo e-mails customer notes to the buyer
                )
            except TransportError:
                # no answer: the note may be there already; read before writing again
                if not self._has_note(external_id, tracking_number):
                    raise
                log.info("woocommerce.note_found_after_lost_answer", key=idempotency_key)
        if not last:
            return
        self.client.update_order(
            external_id,
            {
                "status": "completed",
                "meta_data": [{"key": FULFILLMENT_META_KEY, "value": idempotency_key}],
            },
        )

    def push_cancellation(self, external_id: str, *, reason: str, idempotency_key: str) -> None:
        """Status ``cancelled`` (Woo restocks and e-mails the buyer itself), then what is left
        of the money the shop's gateway took at checkout refunded through that gateway
        (``api_refund``): a cancelled status alone gives nothing back. A Stripe authorization
        we captured at the provider is refunded there by us, not here. Safe to repeat: an
        order cancelled already is not changed, and nothing is left to refund the second time."""
        order = self.client.get_order(external_id)
        status = str(order.get("status", ""))
        if status not in ("cancelled", "refunded", "trash"):
            order = self.client.update_order(
                external_id,
                {"status": "cancelled",
                 "meta_data": [{"key": CANCELLATION_META_KEY, "value": idempotency_key}]},
            )  # fmt: skip
        left = _gateway_refund_left(order)
        if left > 0:
            try:
                self.client.create_refund(
                    external_id,
                    {"amount": f"{left:.2f}", "reason": f"cancelled: {reason}"[:200],
                     "api_refund": True},
                )  # fmt: skip
            except TransportError:
                # no answer: the refund may have been made; what is left says (a retry of
                # the whole push reads it again and refunds only what is still left)
                if _gateway_refund_left(self.client.get_order(external_id)) > 0:
                    raise
            log.info("woocommerce.refunded_with_cancellation", key=idempotency_key)

    # -- stock -----------------------------------------------------------------------------

    stock_batch_size = BATCH_LIMIT

    def push_delivery(
        self, external_id: str, *, tracking_number: str, delivered_at: str, idempotency_key: str
    ) -> None:
        raise ValidationError(
            "woocommerce: the marketplace takes no delivery events (its declaration says so)",
            code="NotSupported",
        )

    def list_listings(self) -> Iterator[ChannelListing]:
        """Every product with a SKU, and every variation of the variable ones."""
        for product in self.client.iter_products():
            if product.get("type") == "variable" and product.get("id") is not None:
                path = f"/products/{int(product['id'])}/variations"
                for variation in self.client.iter_products(path):
                    listing = _listing(variation, parent=str(product["id"]))
                    if listing is not None:
                        yield listing
                continue
            listing = _listing(product, parent=None)
            if listing is not None:
                yield listing

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        """Simple products through ``products/batch``, variations through their parent's
        ``products/{id}/variations/batch`` (≤ 100 each). Woo answers 200 with an error per item
        it refused (a deleted product): those are refused, the others applied."""
        result = StockPushResult()
        simple: list[StockUpdate] = []
        variations: dict[str, list[StockUpdate]] = defaultdict(list)
        for update in updates:
            if not update.external_id or not update.external_id.isdigit():
                result.refused[update.listing_id] = "no product id"
            elif update.parent_id:
                variations[update.parent_id].append(update)
            else:
                simple.append(update)
        groups = [("/products/batch", simple)] if simple else []
        groups += [(f"/products/{parent}/variations/batch", batch)
                   for parent, batch in sorted(variations.items())]  # fmt: skip
        for path, batch in groups:
            body = [{"id": int(str(u.external_id)), "manage_stock": True,
                     "stock_quantity": max(0, u.quantity)} for u in batch]  # fmt: skip
            failed = dict(self.client.batch_update(path, body).failed)
            for update in batch:
                code = failed.get(str(update.external_id))
                if code is None:
                    result.applied.append(update.listing_id)
                else:
                    result.refused[update.listing_id] = code
        return result

    def _has_note(self, external_id: str, tracking_number: str) -> bool:
        notes = self.client.list_notes(external_id)
        return any(tracking_number in str(n.get("note", "")) for n in notes)

    # -- misc ------------------------------------------------------------------------------

    def test_connection(self) -> str:
        total = self.client.count_orders()
        return f"WooCommerce REST v3 reachable; {total if total is not None else '?'} orders"

    def close(self) -> None:
        self.client.close()


def _gateway_refund_left(order: dict[str, Any]) -> Decimal:
    """What the shop's gateway took at checkout and has not given back: nothing for an unpaid
    order or a Stripe authorization captured at the provider by us (``_stripe_charge_captured``
    was ``no``: the mapper's ``held_by`` provider)."""
    metas = {m.get("key"): m.get("value") for m in order.get("meta_data") or []
             if isinstance(m, dict)}  # fmt: skip
    if not order.get("date_paid_gmt") or metas.get(STRIPE_CAPTURED_META) == "no":
        return Decimal(0)
    try:
        total = Decimal(str(order.get("total") or "0"))
        back = sum((-Decimal(str(r.get("total") or "0")) for r in order.get("refunds") or []
                    if isinstance(r, dict)), Decimal(0))  # fmt: skip
    except ArithmeticError:
        return Decimal(0)
    return max(Decimal(0), total - back)

