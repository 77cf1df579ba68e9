"""Typed HTTP client for eBay's Sell Fulfillment API, with the user-token refresh it needs.

- Auth: seller orders need a *user* access token (an application token from the
  client-credentials grant only reads public data). We mint one from the seller's long-lived
  refresh token: ``POST /identity/v1/oauth2/token`` with HTTP Basic ``client_id:client_secret``,
  ``grant_type=refresh_token``, ``refresh_token``, ``scope`` → ``access_token`` + ``expires_in``
  (7200 s). https://developer.ebay.com/api-docs/static/oauth-refresh-token-request.html
  The token is cached (one refresh at a time, under a lock) until shortly before it expires.
- Operations: ``getOrders`` (``filter=lastmodifieddate:[from..to]``, ``limit`` ≤ 200,
  ``offset``), ``getOrder``, ``getShippingFulfillments``, ``createShippingFulfillment``
  (201 + ``Location``). https://developer.ebay.com/api-docs/sell/fulfillment/resources/methods
- Rate limit: eBay's default quota for the whole Fulfillment API is 100,000 calls per day per
  application (https://developer.ebay.com/develop/api/sell/api_call_limits), so every
  operation shares one bucket, ``sell.fulfillment``; ``rate_limits=`` overrides it for an
  application with a higher tier (e.g. ``Bucket(rate=1_500_000 / 86_400, burst=50)``).
  Over quota eBay answers 429 with
  ``{"errors":[{"errorId":2001,"domain":"ACCESS","category":"REQUEST","message":"Too many
  requests. The request limit has been reached for the resource."}]}``.

Credentials live only in private attributes; they are never logged, put in messages or reprs.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from domain.errors import AuthError, PayloadError, ValidationError
from integrations.http import ApiClient
from integrations.ratelimit import Bucket, overlay

__all__ = [
    "API_BASE_URL",
    "FULFILLMENT_QUOTA",
    "FULFILLMENT_QUOTA_GROUP",
    "MAX_PAGE_LIMIT",
    "QUOTAS",
    "SCOPE",
    "TOKEN_PATH",
    "EbayClient",
    "ebay_timestamp",
    "lastmodified_filter",
]

API_BASE_URL = "https://api.ebay.com"
TOKEN_PATH = "/identity/v1/oauth2/token"  # noqa: S105 (a path, not a password)
FULFILLMENT_PATH = "/sell/fulfillment/v1"
#: the Fulfillment API (orders) and the Inventory API (stock), space-separated as OAuth wants
SCOPE = (
    "https://api.ebay.com/oauth/api_scope/sell.fulfillment "
    "https://api.ebay.com/oauth/api_scope/sell.inventory"
)
INVENTORY_PATH = "/sell/inventory/v1"
#: bulkUpdatePriceQuantity: "up to 25 inventory item records" per call
BULK_QUANTITY_MAX = 25
INVENTORY_PAGE_LIMIT = 100  # getInventoryItems: limit 1-200 (our page)
MAX_PAGE_LIMIT = 200  # "If a requested limit is more than 200, the call fails"
# 100,000 calls/day spread evenly; the burst lets one poll page through quickly (our choice)
FULFILLMENT_QUOTA = Bucket(rate=100_000 / 86_400, burst=50)
#: the limit groups: one daily quota covers the whole Fulfillment API ("token" is not limited)
FULFILLMENT_QUOTA_GROUP = "sell.fulfillment"
#: the Inventory API's own daily quota (eBay's default call limits: 2,000,000 a day)
INVENTORY_QUOTA = Bucket(rate=2_000_000 / 86_400, burst=50)
INVENTORY_QUOTA_GROUP = "sell.inventory"
QUOTAS: dict[str, Bucket] = {
    FULFILLMENT_QUOTA_GROUP: FULFILLMENT_QUOTA,
    INVENTORY_QUOTA_GROUP: INVENTORY_QUOTA,
}
TOKEN_MARGIN = dt.timedelta(minutes=5)  # refresh this long before eBay says the token expires


def ebay_timestamp(value: dt.datetime) -> str:
    """eBay's documented form ``2016-05-15T08:25:43.511Z`` (UTC, milliseconds)."""
    if value.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    utc = value.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def lastmodified_filter(since: dt.datetime, until: dt.datetime | None) -> str:
    """``lastmodifieddate:[from..to]`` (both ends inclusive) or ``[from..]`` when open-ended.

    httpx percent-encodes ``[`` ``]`` as eBay requires (``%5B`` ``%5D``).
    """
    end = ebay_timestamp(until) if until is not None else ""
    return f"lastmodifieddate:[{ebay_timestamp(since)}..{end}]"


class EbayClient(ApiClient):
    rate_limits = {
        "getOrders": FULFILLMENT_QUOTA,
        "getOrder": FULFILLMENT_QUOTA,
        "getShippingFulfillments": FULFILLMENT_QUOTA,
        "createShippingFulfillment": FULFILLMENT_QUOTA,
        "bulkUpdatePriceQuantity": INVENTORY_QUOTA,
        "getInventoryItems": INVENTORY_QUOTA,
    }

    def __init__(
        self,
        base_url: str = API_BASE_URL,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        scope: str = SCOPE,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        rate_limits: Mapping[str, Bucket] | None = None,
        **kwargs: Any,
    ) -> None:
        """``rate_limits``: limit group (``sell.fulfillment``) → bucket, over ``QUOTAS``."""
        quotas = overlay(QUOTAS, rate_limits or {})
        # an instance attribute, read by ApiClient.__init__ to seed the limiter: every
        # operation of a group gets the group's bucket (they share its key, see limit_key)
        self.rate_limits = {op: quotas[_group(op)] for op in type(self).rate_limits}
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
        self.__basic = f"Basic {basic}"
        self.__refresh_token = refresh_token
        self.scope = scope
        self.clock = clock
        self._token_lock = threading.Lock()
        self.__token: str | None = None
        self._token_expires_at: dt.datetime | None = None
        self.token_refreshes = 0  # observable in tests and metrics
        super().__init__(base_url.rstrip("/"), **kwargs)

    def __repr__(self) -> str:
        return f"EbayClient(account={self.account!r}, base_url={str(self.http.base_url)!r})"

    # one daily quota covers the whole Fulfillment API, so all its operations share a bucket
    def limit_key(self, operation: str) -> str:
        return f"{type(self).__name__}:{self.account}:{_group(operation)}"

    def error_code(self, response: httpx.Response) -> str | None:
        """``errors[0].errorId`` (API) or ``error`` (OAuth): codes only, never messages."""
        try:
            body = response.json()
        except ValueError:
            return None
        if isinstance(body, dict):
            errors = body.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                code = errors[0].get("errorId")
                return str(code)[:32] if code is not None else None
            if isinstance(body.get("error"), str):
                return str(body["error"])[:64]
        return None

    # -- auth -------------------------------------------------------------------------------

    def access_token(self) -> str:
        with self._token_lock:
            now = self.clock()
            if self.__token and self._token_expires_at and now < self._token_expires_at:
                return self.__token
            token, expires_in = self._refresh()
            margin = min(TOKEN_MARGIN, dt.timedelta(seconds=expires_in / 2))
            self.__token = token
            self._token_expires_at = now + dt.timedelta(seconds=expires_in) - margin
            self.token_refreshes += 1
            return token

    def invalidate_token(self, token: str) -> None:
        """Forget ``token`` (rejected early: revoked, or eBay restarted its clock)."""
        with self._token_lock:
            if self.__token == token:
                self.__token = None
                self._token_expires_at = None

    def _refresh(self) -> tuple[str, float]:
        try:
            response = self.request(
                "token",
                "POST",
                TOKEN_PATH,
                headers={"Authorization": self.__basic},
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": self.__refresh_token,
                    "scope": self.scope,
                },
            )
        except ValidationError as exc:
            # 400 invalid_grant = refresh token revoked or expired (18 months): a human must
            # reconnect the seller, exactly like a 401 invalid_client
            raise AuthError("token: refresh refused", status=exc.status, code=exc.code) from None
        body = _json(response, "token")
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise PayloadError("token: access_token missing")
        if (
            not isinstance(expires_in, int | float)
            or isinstance(expires_in, bool)
            or expires_in <= 0
        ):
            raise PayloadError("token: expires_in missing or not a positive number")
        return token, float(expires_in)

    def _api(self, operation: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in (1, 2):
            token = self.access_token()
            headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
            try:
                return self.request(operation, method, path, headers=headers, **kwargs)
            except AuthError as exc:
                # a 401 on a token we thought valid: drop it and try once with a fresh one
                if exc.status != 401 or attempt == 2:
                    raise
                self.invalidate_token(token)
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
        raise AssertionError("unreachable")  # pragma: no cover

    # -- operations -------------------------------------------------------------------------

    def get_orders(
        self, *, filter: str | None = None, limit: int = MAX_PAGE_LIMIT, offset: int = 0
    ) -> dict[str, Any]:
        """One ``OrderSearchPagedCollection`` page."""
        params: dict[str, str | int] = {
            "limit": min(limit, MAX_PAGE_LIMIT),
            "offset": offset,
            # without it, Collect-and-Remit tax is left out of the totals (see the spec)
            "fieldGroups": "TAX_BREAKDOWN",
        }
        if filter:
            params["filter"] = filter
        response = self._api("getOrders", "GET", f"{FULFILLMENT_PATH}/order", params=params)
        return _json(response, "getOrders")

    def get_order(self, order_id: str) -> dict[str, Any]:
        response = self._api(
            "getOrder",
            "GET",
            f"{FULFILLMENT_PATH}/order/{_segment(order_id)}",
            params={"fieldGroups": "TAX_BREAKDOWN"},
        )
        return _json(response, "getOrder")

    def get_shipping_fulfillments(self, order_id: str) -> dict[str, Any]:
        response = self._api(
            "getShippingFulfillments",
            "GET",
            f"{FULFILLMENT_PATH}/order/{_segment(order_id)}/shipping_fulfillment",
        )
        return _json(response, "getShippingFulfillments")

    def create_shipping_fulfillment(self, order_id: str, body: dict[str, Any]) -> str | None:
        """Returns the ``Location`` of the new fulfillment (its id is the last segment)."""
        response = self._api(
            "createShippingFulfillment",
            "POST",
            f"{FULFILLMENT_PATH}/order/{_segment(order_id)}/shipping_fulfillment",
            json=body,
            headers={"Content-Type": "application/json"},
        )
        location: str | None = response.headers.get("Location")
        return location

    def create_cancellation(self, body: dict[str, Any]) -> str | None:
        """Post-Order API: cancel the order as the seller; returns eBay's ``cancelId``."""
        response = self._api(
            "createCancellation",
            "POST",
            "/post-order/v2/cancellation",
            json=body,
            headers={"Content-Type": "application/json"},
            replay=False,  # a second request is refused (32700): the caller reads back
        )
        cancel_id = _json(response, "createCancellation").get("cancelId")
        return str(cancel_id) if cancel_id is not None else None

    def bulk_update_price_quantity(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        """``POST /bulk_update_price_quantity``: 200 when all succeeded, 207 with a status per
        SKU otherwise (``responses[].statusCode``, ``errors``)."""
        if len(requests) > BULK_QUANTITY_MAX:
            raise ValueError(f"at most {BULK_QUANTITY_MAX} requests per call")
        response = self._api(
            "bulkUpdatePriceQuantity",
            "POST",
            f"{INVENTORY_PATH}/bulk_update_price_quantity",
            json={"requests": requests},
            headers={"Content-Type": "application/json"},
        )
        return _json(response, "bulkUpdatePriceQuantity")

    def get_inventory_items(self, offset: int, limit: int = INVENTORY_PAGE_LIMIT) -> dict[str, Any]:
        """One page of ``getInventoryItems``: ``inventoryItems`` with their availability."""
        response = self._api(
            "getInventoryItems", "GET", f"{INVENTORY_PATH}/inventory_item",
            params={"limit": limit, "offset": offset},
        )  # fmt: skip
        return _json(response, "getInventoryItems")


_INVENTORY_OPERATIONS = frozenset({"bulkUpdatePriceQuantity", "getInventoryItems"})


def _group(operation: str) -> str:
    if operation == "token":
        return "identity"
    return INVENTORY_QUOTA_GROUP if operation in _INVENTORY_OPERATIONS else FULFILLMENT_QUOTA_GROUP


def _segment(value: str) -> str:
    if not value:
        raise ValueError("empty id")
    return quote(value, safe="")


def _json(response: httpx.Response, operation: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise PayloadError(f"{operation}: response is not JSON") from None
    if not isinstance(body, dict):
        raise PayloadError(f"{operation}: response is not a JSON object")
    return body
