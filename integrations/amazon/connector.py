"""Amazon SP-API connector: polling only (Amazon pushes notifications to SQS/EventBridge, not to
a webhook), Orders API v0.

Credential keys read from ``account.credentials``:

- ``refresh_token``, ``client_id``, ``client_secret`` (LWA app credentials, required);
- ``marketplace_ids``: list (or comma-separated string) of marketplace ids; falls back to
  ``account.shop`` when absent;
- ``lwa_url`` (optional, default ``https://api.amazon.com``; in the sandbox the same base URL as
  the API, which serves ``/auth/o2/token`` under its prefix).

``account.api_base_url`` defaults to the North America endpoint.

Rate limits: the documented usage plans (``client.RATE_LIMITS``) with the account's
``rate_limits`` over them, operation by operation (``getOrders``, ``getOrder``,
``getOrderItems``, ``confirmShipment``, ``createRestrictedDataToken``); the rate Amazon grants
this seller (``x-amzn-RateLimit-Limit``) still corrects them as responses come in.

Buyer PII: ``getOrders`` (and ``get_order``) are called with a Restricted Data Token for
``buyerInfo`` + ``shippingAddress`` (Tokens API, cached until shortly before its hour runs out),
so orders carry the address the label step needs. An application without the restricted role
gets 403 from the Tokens API: a warning is logged, the LWA token is used and orders map without
name/street/email (the Tokens API is asked again after ``rdt_denied_ttl``).

Polling: ``getOrders`` by ``LastUpdatedAfter`` page by page with ``NextToken``, then
``getOrderItems`` per order (items are a separate call in v0), merged as ``OrderItems`` for the
mapper. Amazon requires ``LastUpdatedBefore`` to be at least two minutes in the past, so an
``until`` later than that is clamped; ``last_window_end`` tells the poller what was covered.

Stock: the Listings Items API 2021-08-01 (credential ``seller_id``): ``searchListingsItems``
lists the SKUs with their fulfillment availability, ``patchListingsItem`` sets the quantity of
channel ``DEFAULT`` one SKU per call (5/s, burst 10); more than ``stock_feed_threshold`` SKUs in
one flush go in one ``JSON_LISTINGS_FEED`` (Feeds API 2021-06-30) instead. FBA listings are
recorded, never pushed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import structlog

from domain.canonical import CanonicalOrder
from domain.errors import (
    AuthError,
    NotFound,
    PayloadError,
    PermanentError,
    ServerError,
    TransportError,
    ValidationError,
)
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from integrations.amazon.client import DEFAULT_API_BASE_URL, RATE_LIMITS, SpApiClient
from integrations.amazon.lwa import DEFAULT_LWA_URL, LwaTokenProvider
from integrations.amazon.mapper import map_order
from integrations.amazon.payloads import parse_timestamp
from integrations.base import AccountConfig, ConnectorSeams, OrderPage, PagedOrders, ShipmentGroup
from integrations.ratelimit import Bucket

__all__ = ["LAST_UPDATED_BEFORE_MIN_AGE", "AmazonConnector"]

log = structlog.get_logger(__name__)

#: "LastUpdatedBefore ... must be ... at least two minutes before current time" (getOrders)
LAST_UPDATED_BEFORE_MIN_AGE = dt.timedelta(minutes=2)
_SHIPPED = frozenset({"Shipped", "InvoiceUnconfirmed"})
_REQUIRED = ("refresh_token", "client_id", "client_secret")


def _marketplace_ids(account: AccountConfig) -> list[str]:
    raw = account.credentials.get("marketplace_ids") or account.shop
    ids = raw.split(",") if isinstance(raw, str) else list(raw or [])
    return [str(i).strip() for i in ids if str(i).strip()]


def package_reference_id(idempotency_key: str) -> str:
    """A stable positive number per idempotency key (Amazon accepts numeric ids only)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return str(int(digest[:12], 16) % 999_999_999 + 1)


class AmazonConnector(PagedOrders):
    def __init__(
        self,
        account: AccountConfig,
        seams: ConnectorSeams | None = None,
        *,
        rate_limits: Mapping[str, Bucket] | None = None,
    ) -> None:
        """``rate_limits``: the whole table, replacing the defaults and the account's (tests,
        benchmarks); None = the defaults with ``account.rate_limits`` over them."""
        seams = seams or ConnectorSeams()
        if rate_limits is None:
            rate_limits = account.rate_limits.over(RATE_LIMITS, account=account.name)
        creds = account.credentials
        missing = [key for key in _REQUIRED if not creds.get(key)]
        if missing:
            raise AuthError(f"amazon account {account.name}: missing credentials {missing}")
        self.marketplace_ids = _marketplace_ids(account)
        if not self.marketplace_ids:
            raise ValidationError(f"amazon account {account.name}: no marketplace_ids")
        self.account = account
        self._clock = seams.clock
        tokens = LwaTokenProvider(
            client_id=str(creds["client_id"]),
            client_secret=str(creds["client_secret"]),
            refresh_token=str(creds["refresh_token"]),
            lwa_url=str(creds.get("lwa_url") or DEFAULT_LWA_URL),
            transport=seams.transport,
            clock=seams.clock,
        )
        self.client = SpApiClient(
            account.api_base_url or DEFAULT_API_BASE_URL,
            tokens=tokens,
            rate_limits=rate_limits,
            clock=seams.clock,
            account=account.name,
            transport=seams.transport,
            limiter=seams.limiter,
            sleep=seams.sleep,
        )
        #: upper bound of the last poll as Amazon applied it (None = not known)
        self.last_window_end: dt.datetime | None = None

    def __repr__(self) -> str:
        return f"<AmazonConnector account={self.account.name!r}>"

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ reading

    def _with_items(self, order: dict[str, Any]) -> CanonicalOrder:
        order_id = order.get("AmazonOrderId")
        if not isinstance(order_id, str) or not order_id:
            return map_order(order, self.account.name)  # raises PayloadError naming the field
        items = self.client.all_order_items(order_id)
        return map_order({**order, "OrderItems": items}, self.account.name)

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        """Pages of ``getOrders``; ``resume`` holds the ``NextToken`` and the window's end as
        the first page fixed it (``LastUpdatedBefore``), so a resumed poll reads the same
        window."""
        before: dt.datetime | None = None
        token: str | None = None
        if resume is not None:
            state = json.loads(resume)
            token, before = state["next"], _bound(state.get("before"))
            self.last_window_end = before
        elif until is not None:
            before = min(until, self._clock() - LAST_UPDATED_BEFORE_MIN_AGE)
            if before < since:  # the window is too recent to ask for yet
                self.last_window_end = since
                return
        pages = 0
        while True:
            page = self.client.get_orders(
                self.marketplace_ids,
                last_updated_after=since,
                last_updated_before=before,
                next_token=token,
            )
            pages += 1
            if pages == 1 and resume is None:
                before = _bound(page.get("LastUpdatedBefore")) or before
                self.last_window_end = before
            orders = [self._with_items(order) for order in page["Orders"]]
            token = page.get("NextToken") or None
            if token is None:
                log.info(
                    "amazon.poll_done",
                    account=self.account.name,
                    pages=pages,
                    restricted_data=not self.client.rdt.denied,
                )
                yield OrderPage(orders, None)
                return
            state = {"next": token, "before": before.isoformat() if before else None}
            yield OrderPage(orders, json.dumps(state))

    def get_order(self, external_id: str) -> CanonicalOrder:
        return self._with_items(self.client.get_order(external_id))

    # ------------------------------------------------------------------ writing

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
        """``confirmShipment`` of one package: the shipment's items (every item not shipped
        yet when none are given).

        Amazon has no idempotency key: the order's status is checked first (a shipped order is
        left alone), and the package reference id is derived from our key, so a retry after a
        lost answer either finds the order shipped or sends the very same package.
        """
        order = self.client.get_order(external_id, restricted=False)  # the status is enough
        status = order.get("OrderStatus")
        if status in _SHIPPED:
            log.info("amazon.already_shipped", account=self.account.name)
            return
        if status == "Canceled":
            raise PermanentError(f"confirmShipment: order is cancelled ({external_id})")
        items = unshipped = _unshipped(self.client.all_order_items(external_id))
        if lines:  # this package: the shipment's items, as far as they are still unshipped
            remaining = {i["orderItemId"]: i["quantity"] for i in items}
            items = [
                {"orderItemId": item_id, "quantity": min(qty, remaining[item_id])}
                for item_id, qty in lines
                if remaining.get(item_id, 0) > 0
            ]
        if not items:
            return
        body = {
            "marketplaceId": order.get("MarketplaceId") or self.marketplace_ids[0],
            "packageDetail": {
                "packageReferenceId": package_reference_id(idempotency_key),
                # carrierName is only required with carrierCode "Other"; sending both is accepted
                "carrierCode": carrier,
                "carrierName": carrier,
                "trackingNumber": tracking_number,
                "shipDate": self._clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "orderItems": items,
            },
        }
        try:
            self.client.confirm_shipment(external_id, body)
        except TransportError:
            # no answer: Amazon may have shipped the package (the same one again would be
            # refused as InvalidInput); the items' shipped quantities say whether it did
            after = {i["orderItemId"]: i["quantity"]
                     for i in _unshipped(self.client.all_order_items(external_id))}  # fmt: skip
            before = {i["orderItemId"]: i["quantity"] for i in unshipped}
            if any(before[i["orderItemId"]] - after.get(i["orderItemId"], 0) < i["quantity"]
                   for i in items):  # fmt: skip
                raise
            log.info("amazon.shipment_found_after_lost_answer", account=self.account.name)

    def push_cancellation(self, external_id: str, *, reason: str, idempotency_key: str) -> None:
        """The Orders API has no cancel: a seller cancels an Amazon order in Seller Central (or
        by an order-acknowledgement feed, which this connector does not send)."""
        raise ValidationError(
            "amazon: a seller cannot cancel an order through the Orders API; cancel it in "
            "Seller Central (the cancellation then comes back by poll)",
            code="NotSupported",
        )

    def push_delivery(
        self, external_id: str, *, tracking_number: str, delivered_at: str, idempotency_key: str
    ) -> None:
        raise ValidationError(
            "amazon: the marketplace takes no delivery events (its declaration says so)",
            code="NotSupported",
        )

    # ------------------------------------------------------------------ stock

    #: patchListingsItem sets one SKU per call
    stock_batch_size = 1

    def _seller_id(self) -> str:
        seller = self.account.credentials.get("seller_id")
        if not seller:
            raise AuthError(f"amazon account {self.account.name}: no seller_id (Listings API)")
        return str(seller)

    def list_listings(self) -> Iterator[ChannelListing]:
        """``searchListingsItems`` page by page: every SKU with its fulfillment availability;
        a listing fulfilled by Amazon (a channel code other than ``DEFAULT``) is FBA."""
        seller, token = self._seller_id(), None
        while True:
            page = self.client.search_listings_items(seller, self.marketplace_ids, token)
            for item in page.get("items") or []:
                if not isinstance(item, dict) or not item.get("sku"):
                    continue
                availability = [a for a in item.get("fulfillmentAvailability") or []
                                if isinstance(a, dict)]  # fmt: skip
                ours = [a for a in availability if a.get("fulfillmentChannelCode") == "DEFAULT"]
                quantity = ours[0].get("quantity") if ours else None
                yield ChannelListing(
                    sku=str(item["sku"]), external_id=str(item["sku"]),
                    location_id=self.marketplace_ids[0],
                    quantity=int(quantity) if isinstance(quantity, int) else None,
                    fulfilled_by_marketplace=bool(availability) and not ours,
                )  # fmt: skip
            token = (page.get("pagination") or {}).get("nextToken")
            if not token:
                return

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        """``patchListingsItem`` replacing ``fulfillment_availability`` (channel ``DEFAULT``,
        merchant-fulfilled) per SKU. Amazon validates asynchronously: ``ACCEPTED`` is applied,
        ``INVALID`` (with issues) refused, as is a SKU Amazon does not know (404)."""
        result = StockPushResult()
        seller = self._seller_id()
        for update in updates:
            body = {
                "productType": "PRODUCT",
                "patches": [{
                    "op": "replace",
                    "path": "/attributes/fulfillment_availability",
                    "value": [{"fulfillment_channel_code": "DEFAULT",
                               "quantity": max(0, update.quantity)}],
                }],
            }  # fmt: skip
            marketplaces = [update.location_id] if update.location_id else self.marketplace_ids
            try:
                answer = self.client.patch_listings_item(
                    seller, update.external_id or update.sku, marketplaces, body
                )
            except NotFound:
                result.refused[update.listing_id] = "NOT_FOUND"
                continue
            if answer.get("status") == "ACCEPTED":
                result.applied.append(update.listing_id)
            else:
                codes = sorted({str(i.get("code")) for i in answer.get("issues") or []
                                if isinstance(i, dict)})  # fmt: skip
                result.refused[update.listing_id] = f"{answer.get('status')}: {','.join(codes)}"
        return result

    #: more SKUs than this in one flush go out in one ``JSON_LISTINGS_FEED`` instead of one
    #: ``patchListingsItem`` each (at 5/s, 300 SKUs are a minute of calls; a feed is 4 calls
    #: and Amazon's processing time)
    stock_feed_threshold = 300
    #: how long a feed is waited for (``getFeed`` polled with backoff) before the flush gives
    #: up and retries (with the quantities as they are then)
    stock_feed_max_wait_s = 900.0

    def push_stock_feed(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        """Every update in one ``JSON_LISTINGS_FEED`` per marketplace (Feeds API 2021-06-30):
        ``createFeedDocument``, upload the document to its URL, ``createFeed``, poll
        ``getFeed`` until it is done, then read the processing report: a message with an
        ``ERROR`` issue is refused (its codes), every other one applied. A feed Amazon could
        not process at all (``FATAL``) refuses them all with the report's codes; one that was
        cancelled or is not done within ``stock_feed_max_wait_s`` raises ``ServerError``
        (the flush retries)."""
        result = StockPushResult()
        seller = self._seller_id()
        groups: dict[str, list[StockUpdate]] = {}
        for update in updates:
            groups.setdefault(update.location_id or self.marketplace_ids[0], []).append(update)
        for marketplace, group in sorted(groups.items()):
            self._feed(seller, marketplace, group, result)
        return result

    def _feed(
        self, seller: str, marketplace: str, updates: Sequence[StockUpdate],
        result: StockPushResult,
    ) -> None:  # fmt: skip
        listing_of = {n: u.listing_id for n, u in enumerate(updates, start=1)}
        document = {
            "header": {"sellerId": seller, "version": "2.0", "issueLocale": "en_US"},
            "messages": [
                {"messageId": n, "sku": u.external_id or u.sku, "operationType": "PATCH",
                 "productType": "PRODUCT",
                 "patches": [{"op": "replace", "path": "/attributes/fulfillment_availability",
                              "value": [{"fulfillment_channel_code": "DEFAULT",
                                         "quantity": max(0, u.quantity)}]}]}
                for n, u in enumerate(updates, start=1)
            ],
        }  # fmt: skip
        created = self.client.create_feed_document()
        document_id, url = created.get("feedDocumentId"), created.get("url")
        if not isinstance(document_id, str) or not isinstance(url, str):
            raise PayloadError("createFeedDocument: no feedDocumentId/url")
        self.client.upload_feed_document(url, json.dumps(document).encode())
        feed_id = self.client.create_feed("JSON_LISTINGS_FEED", [marketplace], document_id).get(
            "feedId"
        )
        if not isinstance(feed_id, str):
            raise PayloadError("createFeed: no feedId")
        feed = self._wait_for_feed(feed_id)
        status = feed.get("processingStatus")
        if status not in ("DONE", "FATAL"):
            raise ServerError(f"JSON_LISTINGS_FEED {feed_id}: {status} (sent again)")
        report = self._report(feed)
        refused: dict[int, list[str]] = {}
        general: list[str] = []
        for issue in report.get("issues") or []:
            if not isinstance(issue, dict) or issue.get("severity") != "ERROR":
                continue
            code = str(issue.get("code") or "ERROR")
            if isinstance(issue.get("messageId"), int) and issue["messageId"] in listing_of:
                refused.setdefault(issue["messageId"], []).append(code)
            else:
                general.append(code)
        for n, listing_id in listing_of.items():
            if status == "FATAL":
                codes = sorted(set(general + refused.get(n, []))) or ["no report"]
                result.refused[listing_id] = f"FATAL: {','.join(codes)}"
            elif n in refused:
                result.refused[listing_id] = f"INVALID: {','.join(sorted(set(refused[n])))}"
            else:
                result.applied.append(listing_id)

    def _wait_for_feed(self, feed_id: str) -> dict[str, Any]:
        """``getFeed`` until it is DONE, CANCELLED or FATAL, waiting 0.5 s, 1 s, 2 s … (at
        most 30 s) in between; the last answer when ``stock_feed_max_wait_s`` runs out."""
        waited, delay = 0.0, 0.5
        while True:
            feed = self.client.get_feed(feed_id)
            if feed.get("processingStatus") in ("DONE", "CANCELLED", "FATAL"):
                return feed
            if waited >= self.stock_feed_max_wait_s:
                return feed
            self.client.sleep(delay)
            waited += delay
            delay = min(delay * 2, 30.0)

    def _report(self, feed: dict[str, Any]) -> dict[str, Any]:
        """The feed's processing report (JSON), or an empty one when it has none."""
        document_id = feed.get("resultFeedDocumentId")
        if not isinstance(document_id, str):
            return {}
        where = self.client.get_feed_document(document_id)
        url = where.get("url")
        if not isinstance(url, str):
            raise PayloadError("getFeedDocument: no url")
        raw = self.client.download_feed_document(url, where.get("compressionAlgorithm"))
        try:
            report = json.loads(raw)
        except ValueError:
            raise PayloadError("JSON_LISTINGS_FEED processing report is not JSON") from None
        if not isinstance(report, dict):
            raise PayloadError("JSON_LISTINGS_FEED processing report is not an object")
        return report

    def test_connection(self) -> str:
        page = self.client.get_orders(
            self.marketplace_ids,
            last_updated_after=self._clock() - dt.timedelta(days=1),
            max_results=1,
        )
        pii = (
            "no buyer PII (the app lacks a restricted role: orders come without address)"
            if self.client.rdt.denied
            else "buyer PII via restricted data token"
        )
        return (
            f"Amazon SP-API: {len(self.marketplace_ids)} marketplace(s), "
            f"{len(page['Orders'])} order(s) updated in the last day on the first page, {pii}"
        )


def _unshipped(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``confirmShipment`` order items: what is ordered and not yet shipped, per item."""
    result = []
    for index, item in enumerate(items):
        try:
            item_id = item["OrderItemId"]
            remaining = int(item["QuantityOrdered"]) - int(item.get("QuantityShipped") or 0)
        except (KeyError, TypeError, ValueError):
            raise PayloadError(
                f"getOrderItems: OrderItems.{index}.OrderItemId/QuantityOrdered unusable"
            ) from None
        if remaining > 0:
            result.append({"orderItemId": str(item_id), "quantity": remaining})
    return result


def _bound(value: Any) -> dt.datetime | None:
    try:
        parsed = parse_timestamp(value)
        if isinstance(parsed, str):
            parsed = dt.datetime.fromisoformat(parsed.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if not isinstance(parsed, dt.datetime) or parsed.tzinfo is None:
        return None
    return parsed.astimezone(dt.UTC)
