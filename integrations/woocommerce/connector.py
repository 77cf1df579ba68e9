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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from domain.canonical import CanonicalOrder
from domain.errors import AuthError, NotFound, ValidationError
from integrations.base import AccountConfig, ConnectorSeams, OrderPage, PagedOrders, ShipmentGroup
from integrations.woocommerce.client import WooCommerceClient
from integrations.woocommerce.mapper import map_order

__all__ = ["FULFILLMENT_META_KEY", "WooCommerceConnector"]

log = structlog.get_logger(__name__)

#: order meta marking a fulfillment we pushed ("_" prefix: hidden in the admin screen)
FULFILLMENT_META_KEY = "_ordersync_fulfillment"
CANCELLATION_META_KEY = "_ordersync_cancellation"
_CLOSED = frozenset({"cancelled", "refunded", "failed", "trash"})


@dataclass(frozen=True)
class _ProductRef:
    id: str
    parent_id: str | None  # set for a variation: stock goes through the parent's batch


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
        # SKU → product/variation id; SKUs rarely move, and a lookup per push would double the
        # calls. A refused id (product deleted and re-created) is evicted and looked up again.
        self._sku_cache: dict[str, _ProductRef] = {}

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
            yield OrderPage([map_order(p, self.account.name) for p in items], token)

    def get_order(self, external_id: str) -> CanonicalOrder:
        return map_order(self.client.get_order(external_id), self.account.name)

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
        notes = self.client.list_notes(external_id)
        if not any(tracking_number in str(n.get("note", "")) for n in notes):
            self.client.add_note(
                external_id,
                f"Your order has shipped with {carrier}. Tracking number: {tracking_number}",
                customer_note=True,  # Woo e-mails customer notes to the buyer
            )
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
        """Status ``cancelled`` (Woo restocks and e-mails the buyer itself); an order that is
        cancelled or refunded there already is left alone."""
        order = self.client.get_order(external_id)
        if str(order.get("status", "")) in ("cancelled", "refunded", "trash"):
            return
        self.client.update_order(
            external_id,
            {"status": "cancelled",
             "meta_data": [{"key": CANCELLATION_META_KEY, "value": idempotency_key}]},
        )  # fmt: skip

    # -- stock -----------------------------------------------------------------------------

    def _resolve(self, skus: list[str]) -> dict[str, _ProductRef]:
        missing = [s for s in skus if s not in self._sku_cache]
        if missing:
            wanted = set(missing)
            for product in self.client.find_products_by_sku(missing):
                sku = product.get("sku")
                if not isinstance(sku, str) or sku not in wanted or product.get("id") is None:
                    continue  # ``?sku=a,b`` also matches the literal "a,b"; keep exact hits
                parent = product.get("parent_id")
                is_variation = product.get("type") == "variation" or parent not in (None, 0, "0")
                self._sku_cache[sku] = _ProductRef(
                    id=str(product["id"]), parent_id=str(parent) if is_variation else None
                )
        return {s: self._sku_cache[s] for s in skus if s in self._sku_cache}

    def push_delivery(
        self, external_id: str, *, tracking_number: str, delivered_at: str, idempotency_key: str
    ) -> None:
        raise ValidationError(
            "woocommerce: the marketplace takes no delivery events (its declaration says so)",
            code="NotSupported",
        )

    def push_stock(self, quantities: Mapping[str, int]) -> None:
        if not quantities:
            return
        refs = self._resolve(sorted(quantities))
        simple: list[dict[str, Any]] = []
        variations: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for sku, ref in refs.items():
            update = {
                "id": int(ref.id),
                "manage_stock": True,
                "stock_quantity": max(0, int(quantities[sku])),
            }
            (variations[ref.parent_id] if ref.parent_id else simple).append(update)
        failed: list[tuple[str, str]] = []
        if simple:
            failed += self.client.batch_update("/products/batch", simple).failed
        for parent_id, updates in sorted(variations.items()):
            path = f"/products/{parent_id}/variations/batch"
            failed += self.client.batch_update(path, updates).failed
        if failed:
            bad_ids = {pid for pid, _ in failed}
            for sku in [s for s, r in self._sku_cache.items() if r.id in bad_ids]:
                del self._sku_cache[sku]
            codes = ", ".join(sorted({code for _, code in failed}))
            raise ValidationError(
                f"woocommerce: {len(failed)} stock update(s) refused ({codes})",
                code="batch_item_error",
            )
        unknown = sorted(set(quantities) - set(refs))
        if unknown:
            # the others were pushed; these SKUs have no listing in this shop
            raise NotFound(
                f"woocommerce: {len(unknown)} SKU(s) not in the shop: {', '.join(unknown[:10])}"
            )

    # -- misc ------------------------------------------------------------------------------

    def test_connection(self) -> str:
        total = self.client.count_orders()
        return f"WooCommerce REST v3 reachable; {total if total is not None else '?'} orders"

    def close(self) -> None:
        self.client.close()
