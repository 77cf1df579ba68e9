"""eBay connector: the ``MarketplaceConnector`` for one seller account on the Sell Fulfillment API.

Reads from ``account.credentials``: ``client_id`` and ``client_secret`` (the application
keyset: App ID and Cert ID) and ``refresh_token`` (the seller's user refresh token, granted
with the ``sell.fulfillment`` and ``sell.inventory`` scopes). ``account.api_base_url`` defaults to
``https://api.ebay.com``; the sandbox simulator serves the same paths under ``/ebay``.

- Polling pages ``getOrders`` by ``offset`` under ``lastmodifieddate:[since..until]``. eBay's
  range is inclusive at both ends and refuses an end in the future (error 30850), so the end is
  left open when it has not happened yet and orders modified at or after ``until`` are dropped
  here, giving the ``[since, until)`` the protocol promises. Offset pages shift when orders are
  modified mid-poll: an order met again on a later page is yielded again (the intake finds it
  stale; nothing per order is kept from one page to the next, so a long history polls at flat
  memory), and the poller's overlap catches any that moved past us.
- ``push_fulfillment`` is ``createShippingFulfillment`` with every line item of the order. The
  API takes no idempotency key, so the tracking number is ours: we look at the order's
  fulfillments first and do nothing if one already carries it (a retry after a lost answer).
- Stock goes through the Sell Inventory API: ``getInventoryItems`` lists the SKUs with their
  ship-to-home quantity, ``bulkUpdatePriceQuantity`` sets it for up to 25 SKUs a call.
- Rate limits: one bucket for the whole Fulfillment API (``sell.fulfillment``, the default
  100,000 calls a day) and one for the Inventory API (``sell.inventory``, 2,000,000 a day);
  the account's ``rate_limits`` overrides them for a higher tier.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from pydantic import ValidationError as PydanticValidationError

from domain.canonical import CanonicalOrder
from domain.errors import AuthError, Conflict, PayloadError, TransportError, ValidationError
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from integrations.base import AccountConfig, ConnectorSeams, OrderPage, PagedOrders, ShipmentGroup
from integrations.ebay.client import (
    API_BASE_URL,
    BULK_QUANTITY_MAX,
    MAX_PAGE_LIMIT,
    QUOTAS,
    EbayClient,
    ebay_timestamp,
    lastmodified_filter,
)
from integrations.ebay.mapper import map_order
from integrations.ebay.payloads import EbayOrder, EbayOrderPage, EbayShippingFulfillmentPage

__all__ = ["EbayConnector"]

log = structlog.get_logger(__name__)

CREDENTIAL_KEYS = ("client_id", "client_secret", "refresh_token")


class EbayConnector(PagedOrders):
    def __init__(
        self,
        account: AccountConfig,
        seams: ConnectorSeams | None = None,
        *,
        page_limit: int = MAX_PAGE_LIMIT,
    ) -> None:
        seams = seams or ConnectorSeams()
        creds = account.credentials
        missing = [key for key in CREDENTIAL_KEYS if not creds.get(key)]
        if missing:
            raise AuthError(f"eBay account {account.name}: missing credentials {missing}")
        self.account = account
        self.last_window_end: dt.datetime | None = None  # the window asked for is read whole
        self.clock = seams.clock
        self.page_limit = max(1, min(page_limit, MAX_PAGE_LIMIT))
        rate_limits = account.rate_limits.over(QUOTAS, account=account.name)
        self.client = EbayClient(
            account.api_base_url or API_BASE_URL,
            client_id=str(creds["client_id"]),
            client_secret=str(creds["client_secret"]),
            refresh_token=str(creds["refresh_token"]),
            clock=seams.clock,
            rate_limits=rate_limits,
            account=account.name,
            transport=seams.transport,
            limiter=seams.limiter,
            sleep=seams.sleep,
        )

    def __repr__(self) -> str:
        return f"EbayConnector(account={self.account.name!r})"

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        """Pages of ``getOrders``; ``resume`` is the next page's offset."""
        end = until if until is not None and until <= self.clock() else None
        query = lastmodified_filter(since, end)
        offset = int(resume) if resume else 0
        while True:
            page = _page(self.client.get_orders(filter=query, limit=self.page_limit, offset=offset))
            orders = []
            for raw in page.orders:
                order = self._map(raw)
                if until is not None and order.updated_at >= until:
                    continue
                orders.append(order)
            if not page.next or not page.orders:
                yield OrderPage(orders, None)
                return
            following = _next_offset(page.next, offset + len(page.orders))
            if following <= offset:
                raise PayloadError(f"eBay getOrders: next page does not advance past {offset}")
            if page.total is not None and following >= page.total:
                yield OrderPage(orders, None)
                return
            yield OrderPage(orders, str(following))
            offset = following

    def get_order(self, external_id: str) -> CanonicalOrder:
        return self._map(self.client.get_order(external_id))

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
        if self._has_fulfillment(external_id, tracking_number):
            log.info("ebay.fulfillment.exists", order=external_id, key=idempotency_key)
            return
        try:
            order = EbayOrder.model_validate(self.client.get_order(external_id))
        except PydanticValidationError:
            raise PayloadError(f"eBay order {external_id}: line items unreadable") from None
        wanted = dict(lines)
        body = {
            "lineItems": [
                {"lineItemId": item.lineItemId, "quantity": wanted.get(item.lineItemId, 0)}
                if wanted
                else {"lineItemId": item.lineItemId, "quantity": item.quantity}
                for item in order.lineItems
                if (wanted.get(item.lineItemId, 0) if wanted else item.quantity) > 0
            ],
            "shippedDate": ebay_timestamp(self.clock()),
            # eBay's carrier enumeration (USPS, UPS, FEDEX, DHL, Royal Mail, …) from
            # GeteBayDetails; we pass the label's carrier code through unchanged
            "shippingCarrierCode": carrier,
            "trackingNumber": tracking_number,
        }
        try:
            created = self.client.create_shipping_fulfillment(external_id, body)
        except Conflict:
            # 409: maybe our own earlier attempt landed; if it did, this push is done
            if self._has_fulfillment(external_id, tracking_number):
                return
            raise
        log.info(
            "ebay.fulfillment.created", order=external_id, key=idempotency_key, location=created
        )

    def push_cancellation(self, external_id: str, *, reason: str, idempotency_key: str) -> None:
        """A seller-initiated cancellation (Post-Order API ``POST /post-order/v2/cancellation``,
        reason ``OUT_OF_STOCK_OR_CANNOT_FULFILL``, ``buyerPaid`` as the order says: eBay refunds
        a buyer who paid); an order whose ``cancelStatus`` says it is
        cancelled or being cancelled is left alone (a retry after a lost answer)."""
        order = self.client.get_order(external_id)
        if _cancel_state(order) in ("CANCELED", "IN_PROGRESS"):
            log.info("ebay.cancellation.exists", order=external_id, key=idempotency_key)
            return
        body: dict[str, Any] = {
            "legacyOrderId": external_id, "cancelReason": "OUT_OF_STOCK_OR_CANNOT_FULFILL",
            # a paid order's buyer is refunded with the cancellation (CreateCancelRequest)
            "buyerPaid": order.get("orderPaymentStatus") in ("PAID", "PARTIALLY_REFUNDED"),
        }  # fmt: skip
        payments = (order.get("paymentSummary") or {}).get("payments") or []
        paid_at = next((p.get("paymentDate") for p in payments if isinstance(p, dict)
                        and p.get("paymentDate")), None)  # fmt: skip
        if body["buyerPaid"] and paid_at:
            body["buyerPaidDate"] = {"value": paid_at}
        try:
            cancel_id = self.client.create_cancellation(body)
        except TransportError:
            # no answer: the cancellation may have been made (a second one is refused as not
            # eligible); the order's cancelStatus says whether it was
            if not self._cancelled(external_id):
                raise
            log.info("ebay.cancellation.found_after_lost_answer", order=external_id,
                     key=idempotency_key)  # fmt: skip
            return
        log.info("ebay.cancelled", order=external_id, key=idempotency_key, cancel_id=cancel_id)

    def push_delivery(
        self, external_id: str, *, tracking_number: str, delivered_at: str, idempotency_key: str
    ) -> None:
        raise ValidationError(
            "ebay: the marketplace takes no delivery events (its declaration says so)",
            code="NotSupported",
        )

    # -- stock ------------------------------------------------------------------------------

    stock_batch_size = BULK_QUANTITY_MAX

    def list_listings(self) -> Iterator[ChannelListing]:
        """``getInventoryItems`` page by page: every SKU with its ship-to-home quantity."""
        offset = 0
        while True:
            page = self.client.get_inventory_items(offset)
            items = [i for i in page.get("inventoryItems") or [] if isinstance(i, dict)]
            for item in items:
                if not item.get("sku"):
                    continue
                ship = (item.get("availability") or {}).get("shipToLocationAvailability") or {}
                quantity = ship.get("quantity")
                shown = quantity if isinstance(quantity, int) else None
                yield ChannelListing(sku=str(item["sku"]), external_id=str(item["sku"]),
                                     quantity=shown)  # fmt: skip
            offset += len(items)
            total = page.get("total")
            if not items or not isinstance(total, int) or offset >= total:
                return

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        """``bulkUpdatePriceQuantity`` (≤ 25 SKUs): the inventory item's total ship-to-home
        quantity, which every published offer of the SKU sells from. A SKU answered with a
        status other than 200 is refused with eBay's error id."""
        result = StockPushResult()
        by_sku = {(u.external_id or u.sku): u for u in updates}
        answer = self.client.bulk_update_price_quantity(
            [{"sku": sku, "shipToLocationAvailability": {"quantity": max(0, u.quantity)}}
             for sku, u in by_sku.items()]
        )  # fmt: skip
        answered: set[str] = set()
        for item in answer.get("responses") or []:
            if not isinstance(item, dict) or item.get("sku") not in by_sku:
                continue
            sku = str(item["sku"])
            answered.add(sku)
            if item.get("statusCode") == 200:
                result.applied.append(by_sku[sku].listing_id)
            else:
                errors = [e for e in item.get("errors") or [] if isinstance(e, dict)]
                ids = ",".join(str(e.get("errorId")) for e in errors)
                result.refused[by_sku[sku].listing_id] = f"{item.get('statusCode')}: {ids}"
        for sku in set(by_sku) - answered:
            result.refused[by_sku[sku].listing_id] = "no response for the SKU"
        return result

    def test_connection(self) -> str:
        page = _page(self.client.get_orders(limit=1))
        return f"eBay Sell Fulfillment: {page.total or 0} orders in the last 90 days"

    def close(self) -> None:
        self.client.close()

    def _map(self, raw: Any) -> CanonicalOrder:
        try:
            return map_order(raw, self.account.name)
        except PayloadError as exc:
            order_id = raw.get("orderId") if isinstance(raw, dict) else None
            if isinstance(order_id, str) and str(exc).startswith("eBay order:"):
                message = str(exc).replace("eBay order:", f"eBay order {order_id[:64]}:", 1)
                raise PayloadError(message) from None
            raise

    def _cancelled(self, external_id: str) -> bool:
        """Cancelled, or being cancelled (a cancellation request is open)."""
        return _cancel_state(self.client.get_order(external_id)) in ("CANCELED", "IN_PROGRESS")

    def _has_fulfillment(self, external_id: str, tracking_number: str) -> bool:
        try:
            page = EbayShippingFulfillmentPage.model_validate(
                self.client.get_shipping_fulfillments(external_id)
            )
        except PydanticValidationError:
            raise PayloadError(f"eBay order {external_id}: fulfillments unreadable") from None
        return any(f.shipmentTrackingNumber == tracking_number for f in page.fulfillments)


def _cancel_state(order: dict[str, Any]) -> str:
    return str((order.get("cancelStatus") or {}).get("cancelState") or "")


def _page(body: dict[str, Any]) -> EbayOrderPage:
    try:
        return EbayOrderPage.model_validate(body)
    except PydanticValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        raise PayloadError(f"eBay getOrders: invalid page fields: {fields}") from None


def _next_offset(next_url: str, fallback: int) -> int:
    """The ``offset`` in eBay's ``next`` URI; we never follow the URI itself (it would carry our
    bearer token to whatever host it names)."""
    values = parse_qs(urlsplit(next_url).query).get("offset")
    try:
        return int(values[0]) if values else fallback
    except ValueError:
        return fallback
