"""Typed client for the SP-API Orders API v0 (the operations ordersync needs).

- auth: an LWA access token in ``x-amz-access-token`` (``integrations.amazon.lwa``); no SigV4
  (Amazon dropped the signing requirement in 2023);
- PII: ``getOrders``/``getOrder`` go out with a Restricted Data Token instead
  (``createRestrictedDataToken``, ``integrations.amazon.rdt``) so that orders carry the full
  ``ShippingAddress`` and ``BuyerInfo``; an application without the restricted roles (403) falls
  back to the LWA token, and orders arrive with City/StateOrRegion/PostalCode/CountryCode only;
- rate limits: one bucket per operation from the documented usage plans, corrected from the
  ``x-amzn-RateLimit-Limit`` header Amazon sends with the rate granted to this seller;
- errors: ``{"errors": [{"code", "message", "details"}]}``; the code (``QuotaExceeded``,
  ``InvalidInput``, ``Unauthorized``) goes in the exception, never the message text.
https://developer-docs.amazon.com/sp-api/docs/usage-plans-and-rate-limits
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from domain.errors import AuthError, PayloadError, TransportError, error_for_status
from integrations.amazon.lwa import LwaTokenProvider
from integrations.amazon.rdt import (
    DEFAULT_DENIED_TTL,
    DEFAULT_RDT_MARGIN,
    ORDER_PII,
    RestrictedResource,
    RestrictedTokenCache,
)
from integrations.http import ApiClient, parse_retry_after
from integrations.ratelimit import Bucket

__all__ = [
    "DEFAULT_API_BASE_URL",
    "FEEDS_PATH",
    "JSON_CONTENT_TYPE",
    "ORDERS_PATH",
    "RATE_LIMITS",
    "RDT_PATH",
    "SpApiClient",
    "iso",
]

log = structlog.get_logger(__name__)

DEFAULT_API_BASE_URL = "https://sellingpartnerapi-na.amazon.com"
USER_AGENT = "ordersync/0.1 (Language=Python)"
ORDERS_PATH = "/orders/v0/orders"
RDT_PATH = "/tokens/2021-03-01/restrictedDataToken"
#: the bulk resource: one RDT authorises every getOrders page of every poll for an hour
ORDERS_PII = (RestrictedResource("GET", ORDERS_PATH, ORDER_PII),)

#: documented default usage plans (rate per second, burst), from the Orders v0 and Tokens
#: 2021-03-01 models ("Usage Plan" tables)
RATE_LIMITS: Mapping[str, Bucket] = {
    "getOrders": Bucket(rate=0.0167, burst=20),
    "getOrder": Bucket(rate=0.5, burst=30),
    "getOrderItems": Bucket(rate=0.5, burst=30),
    "confirmShipment": Bucket(rate=2.0, burst=10),
    "createRestrictedDataToken": Bucket(rate=1.0, burst=10),
    # Listings Items 2021-08-01 ("Usage Plan" tables of the model)
    "patchListingsItem": Bucket(rate=5.0, burst=10),
    "searchListingsItems": Bucket(rate=5.0, burst=5),
    # Feeds 2021-06-30 ("Usage Plan" tables of the model)
    "createFeedDocument": Bucket(rate=0.5, burst=15),
    "createFeed": Bucket(rate=0.0083, burst=15),
    "getFeed": Bucket(rate=2.0, burst=15),
    "getFeedDocument": Bucket(rate=0.0222, burst=10),
}
LISTINGS_PATH = "/listings/2021-08-01/items"
FEEDS_PATH = "/feeds/2021-06-30"
#: the content type of a JSON listings feed document (createFeedDocument and its upload)
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
#: searchListingsItems: at most 20 per page, and 1000 items in all can be paged through
LISTINGS_PAGE_SIZE = 20


def iso(value: dt.datetime) -> str:
    """ISO 8601 UTC with ``Z``, to the second (what the Orders API documents)."""
    if value.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SpApiClient(ApiClient):
    """Orders v0 over httpx; ``tokens`` supplies the LWA access token, ``rdt`` the RDTs."""

    def __init__(
        self,
        base_url: str,
        *,
        tokens: LwaTokenProvider,
        rate_limits: Mapping[str, Bucket] | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        rdt_margin: dt.timedelta = DEFAULT_RDT_MARGIN,
        rdt_denied_ttl: dt.timedelta = DEFAULT_DENIED_TTL,
        **kwargs: Any,
    ) -> None:
        # an instance attribute, read by ApiClient.__init__ to seed the limiter
        self._buckets = dict(RATE_LIMITS if rate_limits is None else rate_limits)
        self.rate_limits = self._buckets
        self.tokens = tokens
        super().__init__(base_url, **kwargs)
        self.rdt = RestrictedTokenCache(
            self._fetch_rdt,
            account=self.account,
            clock=clock,
            refresh_margin=rdt_margin,
            denied_ttl=rdt_denied_ttl,
        )

    def close(self) -> None:
        super().close()
        self.tokens.close()

    # ------------------------------------------------------------------ ApiClient hooks

    def auth_headers(self) -> dict[str, str]:
        return {"x-amz-access-token": self.tokens.token(), "user-agent": USER_AGENT}

    def observe(self, operation: str, response: httpx.Response) -> None:
        if response.status_code in (401, 403) and operation != "createRestrictedDataToken":
            # expired or revoked early: the next call exchanges again. (A 403 from the Tokens
            # API usually means "no PII role", with a good LWA token: see _fetch_rdt.)
            self.tokens.invalidate()
            self.rdt.invalidate()
        header = response.headers.get("x-amzn-RateLimit-Limit")
        current = self._buckets.get(operation)
        if not header or current is None:
            return
        try:
            rate = float(header)
        except ValueError:
            return
        if rate > 0 and rate != current.rate:
            # Amazon tells us the rate this seller really has; the burst is not sent, keep ours
            bucket = Bucket(rate=rate, burst=current.burst)
            self._buckets[operation] = bucket
            self.limiter.configure(self.limit_key(operation), bucket)
            log.info("amazon.rate_corrected", operation=operation, rate=rate)

    def error_code(self, response: httpx.Response) -> str | None:
        try:
            errors = response.json().get("errors")
            code = errors[0].get("code")
        except (ValueError, AttributeError, IndexError, KeyError, TypeError):
            return None
        return code if isinstance(code, str) else None

    # ------------------------------------------------------------------ operations

    def _payload(self, operation: str, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise PayloadError(f"{operation}: response is not JSON") from None
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, dict):
            raise PayloadError(f"{operation}: response has no payload object")
        return payload

    def create_restricted_data_token(
        self, resources: Sequence[RestrictedResource]
    ) -> tuple[str, float]:
        """``createRestrictedDataToken``: (the RDT, its lifetime in seconds).

        Called with the LWA token; ``AuthError`` (403 ``Unauthorized``) when the application
        lacks the restricted roles for these resources.
        """
        body = {"restrictedResources": [r.as_json() for r in resources]}
        response = self.request("createRestrictedDataToken", "POST", RDT_PATH, json=body)
        try:
            answer = response.json()
        except ValueError:
            raise PayloadError("createRestrictedDataToken: response is not JSON") from None
        if not isinstance(answer, dict):
            raise PayloadError("createRestrictedDataToken: response is not an object")
        token = answer.get("restrictedDataToken")
        lifetime = answer.get("expiresIn")
        if not isinstance(token, str) or not token:
            raise PayloadError("createRestrictedDataToken: response has no restrictedDataToken")
        if isinstance(lifetime, str):  # integer in the model; some clients type it as a string
            try:
                lifetime = float(lifetime)
            except ValueError:
                lifetime = None
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            raise PayloadError("createRestrictedDataToken: response has an invalid expiresIn")
        return token, float(lifetime)

    def _fetch_rdt(self, resources: tuple[RestrictedResource, ...]) -> tuple[str, float] | None:
        """For ``RestrictedTokenCache``: the RDT, or None when the application is denied.

        A 403 can also mean the LWA token was revoked early: one more try with a fresh one
        before concluding that the restricted role is missing. Other errors (throttled after the
        in-call retries, 5xx, LWA credentials) go up: the poll is retried later rather than
        importing orders without their addresses.
        """
        for attempt in (1, 2):
            try:
                return self.create_restricted_data_token(resources)
            except AuthError as exc:
                if exc.status != 403:
                    raise
                if attempt == 1:
                    self.tokens.invalidate()
        return None

    def _restricted(self, resources: Sequence[RestrictedResource]) -> dict[str, str]:
        """Headers that replace the LWA token with an RDT; none when there is no RDT to use."""
        token = self.rdt.token(resources)
        return {"x-amz-access-token": token} if token else {}

    def get_orders(
        self,
        marketplace_ids: Sequence[str],
        *,
        last_updated_after: dt.datetime,
        last_updated_before: dt.datetime | None = None,
        next_token: str | None = None,
        max_results: int = 100,
        restricted: bool = True,
    ) -> dict[str, Any]:
        """One page of ``getOrders``: ``{"Orders": [...], "NextToken"?, "LastUpdatedBefore"?}``.

        The next page is the same request plus ``NextToken`` (Amazon answers InvalidInput when
        the filters are dropped or changed between pages). ``restricted``: with an RDT for
        ``buyerInfo`` and ``shippingAddress`` (cached an hour; the LWA token if denied).
        """
        params: dict[str, str | int] = {
            "MarketplaceIds": ",".join(marketplace_ids),  # array in csv collection format
            "LastUpdatedAfter": iso(last_updated_after),
            "MaxResultsPerPage": max_results,
        }
        if last_updated_before is not None:
            params["LastUpdatedBefore"] = iso(last_updated_before)
        if next_token:
            params["NextToken"] = next_token
        headers = self._restricted(ORDERS_PII) if restricted else {}
        response = self.request("getOrders", "GET", ORDERS_PATH, params=params, headers=headers)
        payload = self._payload("getOrders", response)
        if not isinstance(payload.get("Orders"), list):
            raise PayloadError("getOrders: payload.Orders is not a list")
        return payload

    def get_order(self, order_id: str, *, restricted: bool = True) -> dict[str, Any]:
        """``getOrder``; ``restricted``: with an RDT for this order's path (the documented form
        of a getOrder resource), so the order carries its address and buyer."""
        path = f"{ORDERS_PATH}/{quote(order_id, safe='')}"
        headers = (
            self._restricted((RestrictedResource("GET", path, ORDER_PII),)) if restricted else {}
        )
        response = self.request("getOrder", "GET", path, headers=headers)
        return self._payload("getOrder", response)

    def get_order_items(self, order_id: str, next_token: str | None = None) -> dict[str, Any]:
        """One page of ``getOrderItems``: ``{"AmazonOrderId", "OrderItems", "NextToken"?}``."""
        params = {"NextToken": next_token} if next_token else None
        response = self.request(
            "getOrderItems",
            "GET",
            f"/orders/v0/orders/{quote(order_id, safe='')}/orderItems",
            params=params,
        )
        payload = self._payload("getOrderItems", response)
        if not isinstance(payload.get("OrderItems"), list):
            raise PayloadError("getOrderItems: payload.OrderItems is not a list")
        return payload

    def all_order_items(self, order_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.get_order_items(order_id, token)
            items.extend(page["OrderItems"])
            token = page.get("NextToken") or None
            if token is None:
                return items

    def confirm_shipment(self, order_id: str, body: Mapping[str, Any]) -> None:
        """``confirmShipment``: 204 on success."""
        self.request(
            "confirmShipment",
            "POST",
            f"/orders/v0/orders/{quote(order_id, safe='')}/shipmentConfirmation",
            json=dict(body),
            replay=False,  # the same package again is refused: the caller reads back
        )

    def patch_listings_item(
        self, seller_id: str, sku: str, marketplace_ids: Sequence[str], body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``patchListingsItem``: ``{"sku", "status": ACCEPTED | INVALID, "issues": [...]}``."""
        response = self.request(
            "patchListingsItem",
            "PATCH",
            f"{LISTINGS_PATH}/{quote(seller_id, safe='')}/{quote(sku, safe='')}",
            params={"marketplaceIds": ",".join(marketplace_ids)},
            json=dict(body),
        )
        return _object("patchListingsItem", response)

    def search_listings_items(
        self, seller_id: str, marketplace_ids: Sequence[str], page_token: str | None = None
    ) -> dict[str, Any]:
        """One page of ``searchListingsItems`` with summaries and fulfillment availability."""
        params = {
            "marketplaceIds": ",".join(marketplace_ids),
            "includedData": "summaries,fulfillmentAvailability",
            "pageSize": str(LISTINGS_PAGE_SIZE),
        }
        if page_token:
            params["pageToken"] = page_token
        response = self.request(
            "searchListingsItems", "GET", f"{LISTINGS_PATH}/{quote(seller_id, safe='')}",
            params=params,
        )  # fmt: skip
        return _object("searchListingsItems", response)


    # ------------------------------------------------------------------ feeds 2021-06-30

    def create_feed_document(self, content_type: str = JSON_CONTENT_TYPE) -> dict[str, Any]:
        """``createFeedDocument``: ``{"feedDocumentId", "url"}`` (a presigned upload URL)."""
        response = self.request(
            "createFeedDocument", "POST", f"{FEEDS_PATH}/documents",
            json={"contentType": content_type},
        )  # fmt: skip
        return _object("createFeedDocument", response)

    def upload_feed_document(
        self, url: str, content: bytes, content_type: str = JSON_CONTENT_TYPE
    ) -> None:
        """PUT the document to its presigned URL (no SP-API token: the URL is the grant)."""
        self._presigned("uploadFeedDocument", "PUT", url, content=content,
                        headers={"content-type": content_type})  # fmt: skip

    def create_feed(
        self, feed_type: str, marketplace_ids: Sequence[str], document_id: str
    ) -> dict[str, Any]:
        """``createFeed``: ``{"feedId"}`` (202)."""
        response = self.request(
            "createFeed", "POST", f"{FEEDS_PATH}/feeds",
            json={"feedType": feed_type, "marketplaceIds": list(marketplace_ids),
                  "inputFeedDocumentId": document_id},
        )  # fmt: skip
        return _object("createFeed", response)

    def get_feed(self, feed_id: str) -> dict[str, Any]:
        """``getFeed``: ``processingStatus`` (IN_QUEUE, IN_PROGRESS, DONE, CANCELLED, FATAL)
        and, once done, ``resultFeedDocumentId``."""
        response = self.request(
            "getFeed", "GET", f"{FEEDS_PATH}/feeds/{quote(feed_id, safe='')}"
        )
        return _object("getFeed", response)

    def get_feed_document(self, document_id: str) -> dict[str, Any]:
        """``getFeedDocument``: ``{"feedDocumentId", "url", "compressionAlgorithm"?}``."""
        response = self.request(
            "getFeedDocument", "GET", f"{FEEDS_PATH}/documents/{quote(document_id, safe='')}"
        )
        return _object("getFeedDocument", response)

    def download_feed_document(self, url: str, compression: str | None = None) -> bytes:
        """The document at its presigned URL, un-gzipped when ``compression`` is ``GZIP``."""
        content = self._presigned("downloadFeedDocument", "GET", url).content
        if compression == "GZIP":
            try:
                return gzip.decompress(content)
            except (OSError, EOFError):
                raise PayloadError("downloadFeedDocument: not GZIP as announced") from None
        return content

    def _presigned(self, operation: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"{operation}: {type(exc).__name__}") from exc
        if response.is_success:
            return response
        wait = parse_retry_after(response.headers.get("Retry-After"))
        status = response.status_code
        raise error_for_status(status, f"{operation}: HTTP {status}", retry_after=wait)


def _object(operation: str, response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise PayloadError(f"{operation}: response is not JSON") from None
    if not isinstance(body, dict):
        raise PayloadError(f"{operation}: response is not a JSON object")
    return body
