"""A local eBay seller speaking the Sell Fulfillment API and eBay OAuth: tests, demo, benchmarks.

eBay publishes no example orders, so orders are built in the shape of our spec-derived examples
(tests/fixtures/ebay/, validated against eBay's OAS3 ``Order`` schema): ``{"value","currency"}``
money strings, ``NN-NNNNN-NNNNN`` order ids, numeric-string line item ids, UTC timestamps with
milliseconds, ``cancelStatus.cancelState`` always present, payments by eBay managed payments.

Served (mount with ``app.include_router(sim.build_router(), prefix="/ebay")``):

- ``POST /identity/v1/oauth2/token`` — HTTP Basic ``client_id:client_secret`` (else 401
  ``invalid_client``), ``grant_type=refresh_token`` (user token, else 400 ``invalid_grant``) or
  ``client_credentials`` (an application token, which the sell endpoints refuse with 403);
- ``GET /sell/fulfillment/v1/order`` — ``filter`` (``creationdate``/``lastmodifieddate``
  ``[from..to]`` inclusive or ``[from..]``, ``orderfulfillmentstatus:{A|B}``; eBay's 30xxx
  errors), ``limit`` 1..200 (default 50), ``offset``, ``orderIds``; answers ``href``, ``total``,
  ``limit``, ``offset``, ``next``/``prev`` and ``orders``. eBay does not document the sort
  order; we return newest-created first, so an order created mid-poll shifts later pages down
  (a client then sees duplicates, never gaps);
- ``GET /sell/fulfillment/v1/order/{orderId}`` (404 when unknown);
- ``GET|POST /sell/fulfillment/v1/order/{orderId}/shipping_fulfillment`` and
  ``GET …/shipping_fulfillment/{fulfillmentId}`` — POST answers 201 with ``Location``; the
  ``ledger`` keys each fulfillment by (order id, tracking number), a repeat is 409;
- Sell Inventory API, for stock: ``GET /sell/inventory/v1/inventory_item`` (``limit`` 1..200,
  ``offset``, ``total``; ``availability.shipToLocationAvailability.quantity``) and ``POST
  /sell/inventory/v1/bulk_update_price_quantity`` (1..25 ``requests``; 200, or 207 with a
  ``statusCode`` and ``errors`` per SKU, 25702 for an unknown SKU). ``inventory`` holds the
  quantity per SKU, ``stock_calls`` / ``stock_sets`` the calls, ``edit_in_admin`` plays
  Seller Hub. The Inventory API has its own quota bucket (2,000,000 calls a day by default).

Rate limit: eBay counts calls per application and day (Fulfillment API default 100,000/day);
one token bucket (``rate_per_s``, ``burst``, from the injected clock) stands for it, and an
empty bucket answers 429 with eBay's errorId 2001 body and a ``Retry-After``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sandbox.knobs import Knobs, WriteDrops

__all__ = [
    "DEFAULT_SKUS",
    "SANDBOX_CLIENT_ID",
    "SANDBOX_CLIENT_SECRET",
    "SANDBOX_REFRESH_TOKEN",
    "TOO_MANY_REQUESTS",
    "EbaySimulator",
]

# public, fixed sandbox credentials (never valid anywhere else)
SANDBOX_CLIENT_ID = "ordersync-sandbox-PRD-0a1b2c3d4e"
SANDBOX_CLIENT_SECRET = "PRD-ordersync-sandbox-cert-5f6a7b8c"  # noqa: S105
SANDBOX_REFRESH_TOKEN = "v^1.1#i^1#r^1#f^0#p^3#I^3#t^ordersync-sandbox-refresh"  # noqa: S105
DEFAULT_SKUS = ("SKU-RED-S", "SKU-RED-M", "SKU-BLUE-M", "SKU-GREEN-L", "SKU-MUG")
API = "/sell/fulfillment/v1"
SELL_SCOPES = frozenset(
    {
        "https://api.ebay.com/oauth/api_scope",
        "https://api.ebay.com/oauth/api_scope/sell.fulfillment",
        "https://api.ebay.com/oauth/api_scope/sell.fulfillment.readonly",
        "https://api.ebay.com/oauth/api_scope/sell.inventory",
        "https://api.ebay.com/oauth/api_scope/sell.inventory.readonly",
    }
)
INVENTORY_API = "/sell/inventory/v1"
#: the writes ordersync makes here, each of which ``drop_write_answers`` can drop
WRITE_OPERATIONS = ("createShippingFulfillment", "createCancellation", "bulkUpdatePriceQuantity")
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
_CENT = Decimal("0.01")
_TAX_RATE = Decimal("0.0825")
_BUYERS = (
    ("jdoe_buys", "Jane Doe", "San Jose", "CA", "95125"),
    ("tom.h-1984", "Tom Harris", "Austin", "TX", "78701"),
    ("zoe_mueller", "Zoë Müller", "Portland", "OR", "97204"),
    ("ama.mensah", "Ama Mensah", "Brooklyn", "NY", "11201"),
)

TOO_MANY_REQUESTS: dict[str, object] = {
    "errors": [
        {
            "errorId": 2001,
            "domain": "ACCESS",
            "category": "REQUEST",
            "message": "Too many requests. The request limit has been reached for the resource.",
        }
    ]
}
_INVALID_TOKEN = {
    "errors": [
        {
            "errorId": 1001,
            "domain": "OAuth",
            "category": "REQUEST",
            "message": "Invalid access token",
            "longMessage": "Invalid access token. Check the value of the Authorization HTTP "
            "request header.",
        }
    ]
}
_ACCESS_DENIED = {
    "errors": [
        {
            "errorId": 1100,
            "domain": "ACCESS",
            "category": "REQUEST",
            "message": "Access denied",
            "longMessage": "Insufficient permissions to fulfill the request.",
        }
    ]
}


def _money(value: Decimal, currency: str) -> dict[str, str]:
    return {"value": str(value.quantize(_CENT, rounding=ROUND_HALF_UP)), "currency": currency}


def _ts(value: dt.datetime) -> str:
    utc = value.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _parse_ts(text: str) -> dt.datetime | None:
    if not text.endswith("Z"):
        return None
    try:
        value = dt.datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        return None
    return value


def _api_error(status: int, error_id: int, message: str, category: str = "REQUEST") -> JSONResponse:
    domain = "API_FULFILLMENT" if error_id >= 30000 else "ACCESS"
    body = {
        "errors": [
            {"errorId": error_id, "domain": domain, "category": category, "message": message}
        ]
    }
    return JSONResponse(body, status_code=status)


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


class EbaySimulator:
    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        seed: int = 0,
        skus: Sequence[str] = DEFAULT_SKUS,
        currency: str = "USD",
        rate_per_s: float = 100_000 / 86_400,  # the default daily quota, spread evenly
        burst: float = 5_000.0,
        retry_after_s: float | None = None,  # None = computed from the bucket, rounded up
        token_ttl_s: int = 7200,
        inventory_rate_per_s: float = 2_000_000 / 86_400,
        inventory_burst: float = 50.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.knobs = knobs or Knobs(seed=seed)
        self.skus = tuple(skus)
        self.currency = currency
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.retry_after_s = retry_after_s
        self.token_ttl_s = token_ttl_s
        self.clock = clock
        self.now = now
        self._rng = random.Random(seed)
        self._lock = threading.RLock()  # _log takes it too, and is called under it
        self._orders: dict[str, dict[str, Any]] = {}
        self._counter = 0
        self._tokens: dict[str, tuple[str, float]] = {}  # token → (kind, expires at clock())
        self._bucket = (burst, clock())  # (tokens, at)
        #: (order id, tracking number) → the ShippingFulfillment we created
        self.ledger: dict[tuple[str, str], dict[str, Any]] = {}
        #: seller cancellations (Post-Order API): order id → the request
        self.cancellations: dict[str, dict[str, Any]] = {}
        #: (operation, HTTP status) per request, for benchmarks (429 count, requests/s)
        self.request_log: list[tuple[str, int]] = []
        #: "apply then drop": ``drop_write_answers.arm(n, "createCancellation", ...)`` has the
        #: next n answers of those writes (``WRITE_OPERATIONS``; all when none is named)
        #: dropped after the write was applied. A fulfillment with the same tracking number
        #: again is 409, a second cancellation 400 (32700)
        self.drop_write_answers = WriteDrops(WRITE_OPERATIONS)
        #: inventory items: SKU → total ship-to-home quantity; the Inventory API's own quota
        self.inventory: dict[str, int] = dict.fromkeys(self.skus, 0)
        self.inventory_rate_per_s = inventory_rate_per_s
        self._inventory_bucket = (inventory_burst, clock())
        self.inventory_burst = inventory_burst
        #: bulkUpdatePriceQuantity calls answered, and every quantity set: (SKU, quantity)
        self.stock_calls = 0
        self.stock_sets: list[tuple[str, int]] = []

    # -- state --------------------------------------------------------------------------------

    @property
    def orders(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._orders)

    def add_orders(self, n: int) -> list[str]:
        with self._lock:
            ids = []
            for _ in range(n):
                order = self._new_order()
                self._orders[order["orderId"]] = order
                ids.append(order["orderId"])
            return ids

    def touch_order(self, external_id: str) -> None:
        """An update: fulfilment starts (NOT_STARTED → IN_PROGRESS) and the order is modified."""
        with self._lock:
            order = self._orders[external_id]
            if order["orderFulfillmentStatus"] == "NOT_STARTED":
                order["orderFulfillmentStatus"] = "IN_PROGRESS"
                order["lineItems"][0]["lineItemFulfillmentStatus"] = "IN_PROGRESS"
            order["lastModifiedDate"] = _ts(self.now())

    def cancel_order(self, external_id: str) -> None:
        """The buyer's cancel request completed: CANCELED and refunded."""
        with self._lock:
            order = self._orders[external_id]
            at = _ts(self.now())
            order["cancelStatus"] = {
                "cancelState": "CANCELED",
                "cancelledDate": at,
                "cancelRequests": [],
            }
            order["orderPaymentStatus"] = "FULLY_REFUNDED"
            order["lastModifiedDate"] = at

    def _new_order(self) -> dict[str, Any]:
        self._counter += 1
        rng, cur, n = self._rng, self.currency, self._counter
        created = _ts(self.now())
        order_id = f"{rng.randint(1, 99):02d}-{rng.randint(10000, 99999)}-{n:05d}"
        username, name, city, state, postal = rng.choice(_BUYERS)
        lines, subtotal, discount, tax = [], Decimal(0), Decimal(0), Decimal(0)
        shipping = rng.choice((Decimal(0), Decimal("4.99"), Decimal("7.50")))
        for index, sku in enumerate(
            rng.sample(self.skus, k=rng.randint(1, min(3, len(self.skus))))
        ):
            quantity = rng.randint(1, 3)
            unit = Decimal(rng.randint(500, 8000)) / 100
            cost = unit * quantity
            # a "10% off 2 or more" promotion, as in the US example
            off = (cost / 10).quantize(_CENT) if quantity >= 2 else Decimal(0)
            line_tax = ((cost - off) * _TAX_RATE).quantize(_CENT, rounding=ROUND_HALF_UP)
            line_shipping = shipping if index == 0 else Decimal(0)
            line: dict[str, Any] = {
                "lineItemId": f"1{n:08d}{index:02d}{rng.randint(100, 999)}",
                "legacyItemId": str(rng.randint(110000000000, 399999999999)),
                "sku": sku,
                "title": f"Sandbox item {sku}",
                "lineItemCost": _money(cost, cur),
                "quantity": quantity,
                "soldFormat": "FIXED_PRICE",
                "listingMarketplaceId": "EBAY_US",
                "purchaseMarketplaceId": "EBAY_US",
                "lineItemFulfillmentStatus": "NOT_STARTED",
                "total": _money(cost - off + line_tax + line_shipping, cur),
                "deliveryCost": {"shippingCost": _money(line_shipping, cur)},
                "appliedPromotions": [],
                "taxes": [{"amount": _money(line_tax, cur), "taxType": "STATE_SALES_TAX"}],
                "properties": {"buyerProtection": True},
                "refunds": [],
            }
            if off:
                line["discountedLineItemCost"] = _money(cost - off, cur)
                line["appliedPromotions"] = [
                    {
                        "promotionId": "5001237801",
                        "description": "10% off 2 or more",
                        "discountAmount": _money(off, cur),
                    }
                ]
            lines.append(line)
            subtotal, discount, tax = subtotal + cost, discount + off, tax + line_tax
        total = subtotal - discount + shipping + tax
        pricing = {
            "priceSubtotal": _money(subtotal, cur),
            "deliveryCost": _money(shipping, cur),
            "tax": _money(tax, cur),
            "total": _money(total, cur),
        }
        if discount:
            pricing["priceDiscount"] = _money(-discount, cur)
        contact = {
            "fullName": name,
            "contactAddress": {
                "addressLine1": f"{rng.randint(1, 9999)} Main St",
                "city": city,
                "stateOrProvince": state,
                "postalCode": postal,
                "countryCode": "US",
            },
            "primaryPhone": {"phoneNumber": f"555{rng.randint(1000000, 9999999)}"},
            "email": f"{username.replace('.', '_')}@example.com",
        }
        return {
            "orderId": order_id,
            "creationDate": created,
            "lastModifiedDate": created,
            "orderFulfillmentStatus": "NOT_STARTED",
            "orderPaymentStatus": "PAID",
            "sellerId": "ordersync_sandbox_seller",
            "salesRecordReference": str(1000 + n),
            "buyer": {"username": username, "buyerRegistrationAddress": copy.deepcopy(contact)},
            "pricingSummary": pricing,
            "cancelStatus": {"cancelState": "NONE_REQUESTED", "cancelRequests": []},
            "paymentSummary": {
                "totalDueSeller": _money(total * Decimal("0.87"), cur),
                "refunds": [],
                "payments": [
                    {
                        "paymentMethod": "EBAY",
                        "paymentDate": created,
                        "amount": _money(total, cur),
                        "paymentStatus": "PAID",
                    }
                ],
            },
            "fulfillmentStartInstructions": [
                {
                    "fulfillmentInstructionsType": "SHIP_TO",
                    "ebaySupportedFulfillment": False,
                    "shippingStep": {
                        "shippingCarrierCode": "USPS",
                        "shippingServiceCode": "USPSPriority",
                        "shipTo": contact,
                    },
                }
            ],
            "fulfillmentHrefs": [],
            "lineItems": lines,
        }

    def add_listings(self, skus: Sequence[str], quantity: int = 0) -> None:
        with self._lock:
            for sku in skus:
                self.inventory.setdefault(sku, quantity)

    def edit_in_admin(self, sku: str, quantity: int) -> None:
        """A seller sets the quantity in Seller Hub (not through us)."""
        with self._lock:
            self.inventory[sku] = quantity

    # -- HTTP plumbing ------------------------------------------------------------------------

    def _log(self, operation: str, response: Response) -> Response:
        with self._lock:
            self.request_log.append((operation, response.status_code))
        return self.drop_write_answers(operation, response)

    def _take(self) -> float:
        """One call from the bucket; returns 0 when allowed, else seconds until a token."""
        with self._lock:
            now = self.clock()
            tokens, at = self._bucket
            tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate_per_s)
            if tokens >= 1:
                self._bucket = (tokens - 1, now)
                return 0.0
            self._bucket = (tokens, now)
            return (1 - tokens) / self.rate_per_s

    def _take_inventory(self) -> float:
        with self._lock:
            now = self.clock()
            tokens, at = self._inventory_bucket
            rate = self.inventory_rate_per_s
            tokens = min(self.inventory_burst, tokens + max(0.0, now - at) * rate)
            if tokens >= 1:
                self._inventory_bucket = (tokens - 1, now)
                return 0.0
            self._inventory_bucket = (tokens, now)
            return (1 - tokens) / rate

    def _guard(self, request: Request, *, inventory: bool = False) -> Response | None:
        """Bearer user token, then the quota: the checks every sell endpoint makes."""
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        with self._lock:
            kind, expires = self._tokens.get(token, ("", 0.0))
        if not kind or self.clock() >= expires:
            return JSONResponse(_INVALID_TOKEN, status_code=401)
        if kind != "user":
            return JSONResponse(_ACCESS_DENIED, status_code=403)
        wait = self._take_inventory() if inventory else self._take()
        if wait > 0:
            retry = self.retry_after_s if self.retry_after_s is not None else math.ceil(wait)
            return JSONResponse(
                TOO_MANY_REQUESTS, status_code=429, headers={"Retry-After": f"{retry:g}"}
            )
        return None

    def _issue(self, kind: str) -> dict[str, Any]:
        with self._lock:
            token = f"v^1.1#i^1#p^3#I^3#r^0#t^sandbox-{self._rng.getrandbits(96):024x}"
            self._tokens[token] = (kind, self.clock() + self.token_ttl_s)
        token_type = "User Access Token" if kind == "user" else "Application Access Token"
        return {"access_token": token, "expires_in": self.token_ttl_s, "token_type": token_type}

    # -- handlers -----------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log("token", disturbed)
        if not _basic_ok(request.headers.get("Authorization", "")):
            return self._log(
                "token", _oauth_error(401, "invalid_client", "client authentication failed")
            )
        form = {
            k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()
        }
        scopes = set(form.get("scope", "").split())
        if scopes - SELL_SCOPES:
            return self._log(
                "token",
                _oauth_error(
                    400,
                    "invalid_scope",
                    "The requested scope is invalid, unknown, malformed, or "
                    "exceeds the scope granted to the client",
                ),
            )
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return self._log("token", JSONResponse(self._issue("application")))
        if grant != "refresh_token":
            return self._log(
                "token",
                _oauth_error(
                    400,
                    "unsupported_grant_type",
                    "grant type in request is not supported by the authorization server",
                ),
            )
        if form.get("refresh_token") != SANDBOX_REFRESH_TOKEN:
            return self._log(
                "token",
                _oauth_error(
                    400,
                    "invalid_grant",
                    "the provided authorization refresh token is invalid or "
                    "was issued to another client",
                ),
            )
        return self._log("token", JSONResponse(self._issue("user")))

    async def _get_orders(self, request: Request) -> Response:
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log("getOrders", disturbed)
        refused = self._guard(request)
        if refused is not None:
            return self._log("getOrders", refused)
        params = request.query_params
        raw_limit, raw_offset = params.get("limit", str(DEFAULT_LIMIT)), params.get("offset", "0")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            return self._log("getOrders", _api_error(400, 31100, f"Invalid limit: {raw_limit}"))
        if not raw_offset.isdigit():
            return self._log("getOrders", _api_error(400, 31000, f"Invalid offset: {raw_offset}"))
        limit, offset = int(raw_limit), int(raw_offset)
        with self._lock:
            orders = list(self._orders.values())
        if params.get("orderIds"):
            wanted = params["orderIds"].split(",")
            if len(wanted) > 50:
                return self._log(
                    "getOrders",
                    _api_error(
                        400, 30900, "Exceeded maximum number of order IDs (the current limit is 50)"
                    ),
                )
            selected = [o for o in orders if o["orderId"] in wanted]
        else:
            predicate = self._filter(params.get("filter", ""))
            if isinstance(predicate, Response):
                return self._log("getOrders", predicate)
            selected = [o for o in orders if predicate(o)]
        selected.sort(key=lambda o: (o["creationDate"], o["orderId"]), reverse=True)
        page = copy.deepcopy(selected[offset : offset + limit])
        body: dict[str, Any] = {
            "href": str(request.url),
            "total": len(selected),
            "limit": limit,
            "offset": offset,
            "orders": page,
        }
        if offset + limit < len(selected):
            body["next"] = str(request.url.include_query_params(limit=limit, offset=offset + limit))
        if offset > 0:
            body["prev"] = str(
                request.url.include_query_params(limit=limit, offset=max(0, offset - limit))
            )
        return self._log("getOrders", JSONResponse(body))

    def _filter(self, text: str) -> Callable[[dict[str, Any]], bool] | Response:
        """eBay's ``filter`` grammar for getOrders; a predicate or the 400 eBay would send."""
        now = self.now()
        ranges: dict[str, tuple[dt.datetime, dt.datetime | None]] = {}
        statuses: set[str] | None = None
        for criterion in (c for c in text.split(",") if c):
            name, _, value = criterion.partition(":")
            if name in ("creationdate", "lastmodifieddate"):
                if not (value.startswith("[") and value.endswith("]") and ".." in value):
                    return _api_error(400, 30800, f"Invalid filter value {value} for filter {name}")
                start_text, _, end_text = value[1:-1].partition("..")
                if not start_text:
                    return _api_error(400, 30820, "Start date is missing")
                start = _parse_ts(start_text)
                end = _parse_ts(end_text) if end_text else None
                if start is None or (end_text and end is None):
                    return _api_error(400, 30810, "Invalid date format")
                if end is not None and start > end:
                    return _api_error(400, 30840, "Start date should be before end date")
                if start > now or (end is not None and end > now):
                    return _api_error(400, 30850, "Start and end dates can't be in the future")
                ranges[name] = (start, end)
            elif name == "orderfulfillmentstatus":
                if not (value.startswith("{") and value.endswith("}")):
                    return _api_error(400, 30800, f"Invalid filter value {value} for filter {name}")
                statuses = set(value[1:-1].split("|"))
            else:
                return _api_error(400, 30700, f"Invalid filter name: {name}")
        # "If creationdate and lastmodifieddate are both included, only creationdate is used."
        bounds: tuple[dt.datetime, dt.datetime | None] = (now - dt.timedelta(days=90), None)
        field = "creationDate"  # eBay's default without a filter: created in the last 90 days
        if "creationdate" in ranges:
            bounds = ranges["creationdate"]
        elif "lastmodifieddate" in ranges:
            field, bounds = "lastModifiedDate", ranges["lastmodifieddate"]

        def predicate(order: dict[str, Any]) -> bool:
            stamp = _parse_ts(order[field])
            start, end = bounds
            if stamp is None or stamp < start or (end is not None and stamp > end):
                return False
            return statuses is None or order["orderFulfillmentStatus"] in statuses

        return predicate

    async def _get_order(self, request: Request, order_id: str) -> Response:
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log("getOrder", disturbed)
        refused = self._guard(request)
        if refused is not None:
            return self._log("getOrder", refused)
        with self._lock:
            order = copy.deepcopy(self._orders.get(order_id))
        if order is None:
            return self._log("getOrder", _api_error(404, 32100, f"Invalid order ID: {order_id}"))
        return self._log("getOrder", JSONResponse(order))

    async def _get_fulfillments(self, request: Request, order_id: str) -> Response:
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log("getShippingFulfillments", disturbed)
        refused = self._guard(request)
        if refused is not None:
            return self._log("getShippingFulfillments", refused)
        with self._lock:
            if order_id not in self._orders:
                response = _api_error(400, 32100, f"Invalid Order Id: {order_id}")
                return self._log("getShippingFulfillments", response)
            found = [copy.deepcopy(f) for (oid, _), f in self.ledger.items() if oid == order_id]
        body = {"fulfillments": found, "total": len(found)}
        return self._log("getShippingFulfillments", JSONResponse(body))

    async def _get_fulfillment(self, request: Request, order_id: str, fid: str) -> Response:
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log("getShippingFulfillment", disturbed)
        refused = self._guard(request)
        if refused is not None:
            return self._log("getShippingFulfillment", refused)
        with self._lock:
            found = [
                f
                for (oid, _), f in self.ledger.items()
                if oid == order_id and f["fulfillmentId"] == fid
            ]
        if not found:
            return self._log("getShippingFulfillment", JSONResponse({}, status_code=404))
        return self._log("getShippingFulfillment", JSONResponse(copy.deepcopy(found[0])))

    async def _create_fulfillment(self, request: Request, order_id: str) -> Response:
        op = "createShippingFulfillment"
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log(op, disturbed)
        refused = self._guard(request)
        if refused is not None:
            return self._log(op, refused)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._log(op, _api_error(400, 32600, "Invalid input data"))
        items = body.get("lineItems")
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            return self._log(op, _api_error(400, 32600, "Invalid input data"))
        tracking, carrier = body.get("trackingNumber"), body.get("shippingCarrierCode")
        if bool(tracking) != bool(carrier):
            return self._log(
                op, _api_error(400, 32300, "Invalid shipment tracking number or carrier")
            )
        shipped = body.get("shippedDate") or _ts(self.now())
        if not isinstance(shipped, str) or _parse_ts(shipped) is None:
            return self._log(op, _api_error(400, 32500, "Invalid shipped date"))
        with self._lock:
            order = self._orders.get(order_id)
            if order is None:
                return self._log(op, _api_error(400, 32100, f"Invalid Order Id: {order_id}"))
            lines = {line["lineItemId"]: line for line in order["lineItems"]}
            ids = [item.get("lineItemId") for item in items]
            if len(set(map(str, ids))) != len(ids):
                return self._log(op, _api_error(400, 32210, "Duplicate line item in the request"))
            for line_id in ids:
                if line_id not in lines:
                    return self._log(op, _api_error(400, 32200, f"Invalid line item id: {line_id}"))
            fid = str(tracking) if tracking else f"{self._rng.getrandbits(64):020d}"
            key = (order_id, fid)
            if key in self.ledger:
                # the spec lists a bare 409 "Conflict" with no error id; ours says why
                conflict = {
                    "errors": [
                        {
                            "domain": "API_FULFILLMENT",
                            "category": "REQUEST",
                            "message": "Conflict: fulfillment already exists",
                        }
                    ]
                }
                return self._log(op, JSONResponse(conflict, status_code=409))
            self.ledger[key] = {
                "fulfillmentId": fid,
                "shipmentTrackingNumber": tracking,
                "shippingCarrierCode": carrier,
                "shippedDate": shipped,
                "lineItems": [
                    {"lineItemId": i["lineItemId"], "quantity": i.get("quantity")} for i in items
                ],
            }
            for line_id in ids:
                lines[line_id]["lineItemFulfillmentStatus"] = "FULFILLED"
            done = all(x["lineItemFulfillmentStatus"] == "FULFILLED" for x in lines.values())
            order["orderFulfillmentStatus"] = "FULFILLED" if done else "IN_PROGRESS"
            location = str(request.url.replace(query="")).rstrip("/") + f"/{fid}"
            order["fulfillmentHrefs"].append(location)
            order["lastModifiedDate"] = _ts(self.now())
        return self._log(op, JSONResponse({}, status_code=201, headers={"Location": location}))

    async def _create_cancellation(self, request: Request) -> Response:
        """Post-Order API ``POST /post-order/v2/cancellation`` by the seller: a paid order
        that has not shipped is cancelled (and refunded by eBay) at once; a second request for
        the same order is refused, as eBay refuses a duplicate cancellation."""
        op = "createCancellation"
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log(op, disturbed)
        refused = self._guard(request)
        if refused is not None:
            return self._log(op, refused)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("legacyOrderId"), str):
            return self._log(op, _api_error(400, 32600, "Invalid input data"))
        order_id = body["legacyOrderId"]
        with self._lock:
            order = self._orders.get(order_id)
            if order is None:
                return self._log(op, _api_error(400, 32100, f"Invalid Order Id: {order_id}"))
            if order["cancelStatus"]["cancelState"] != "NONE_REQUESTED":
                return self._log(op, _api_error(400, 32700, "Order is not eligible to cancel"))
            if order["orderFulfillmentStatus"] == "FULFILLED":
                return self._log(op, _api_error(400, 32700, "Order is not eligible to cancel"))
            at = _ts(self.now())
            cancel_id = str(5_000_000_000 + len(self.cancellations) + 1)
            self.cancellations[order_id] = {
                "cancelId": cancel_id,
                "cancelReason": body.get("cancelReason"),
            }
            order["cancelStatus"] = {"cancelState": "CANCELED", "cancelledDate": at,
                                     "cancelRequests": []}  # fmt: skip
            if body.get("buyerPaid") is True:  # eBay refunds the buyer who paid
                order["orderPaymentStatus"] = "FULLY_REFUNDED"
            order["lastModifiedDate"] = at
        return self._log(op, JSONResponse({"cancelId": cancel_id}, status_code=201))

    async def _get_inventory_items(self, request: Request) -> Response:
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log("getInventoryItems", disturbed)
        refused = self._guard(request, inventory=True)
        if refused is not None:
            return self._log("getInventoryItems", refused)
        q = request.query_params
        try:
            limit, offset = int(q.get("limit") or 25), int(q.get("offset") or 0)
        except ValueError:
            return self._log("getInventoryItems", _api_error(400, 25709, "Invalid limit/offset"))
        if not 1 <= limit <= 200 or offset < 0:
            return self._log("getInventoryItems", _api_error(400, 25709, "Invalid limit/offset"))
        with self._lock:
            skus = sorted(self.inventory)
            items = [
                {"sku": sku, "locale": "en_US", "condition": "NEW",
                 "availability": {"shipToLocationAvailability": {"quantity": self.inventory[sku]}}}
                for sku in skus[offset : offset + limit]
            ]  # fmt: skip
        body = {"total": len(skus), "size": len(items), "limit": limit, "inventoryItems": items}
        return self._log("getInventoryItems", JSONResponse(body))

    async def _bulk_update_price_quantity(self, request: Request) -> Response:
        operation = "bulkUpdatePriceQuantity"
        disturbed = await self.knobs.disturb(TOO_MANY_REQUESTS)
        if disturbed is not None:
            return self._log(operation, disturbed)
        refused = self._guard(request, inventory=True)
        if refused is not None:
            return self._log(operation, refused)
        try:
            requests = json.loads(await request.body())["requests"]
            if not isinstance(requests, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return self._log(operation, _api_error(400, 25709, "Invalid request"))
        if not requests or len(requests) > 25:
            return self._log(
                operation, _api_error(400, 25709, "Between 1 and 25 requests are allowed")
            )
        responses, failed = [], False
        with self._lock:
            self.stock_calls += 1
            for item in requests:
                sku = item.get("sku") if isinstance(item, dict) else None
                ship = (item or {}).get("shipToLocationAvailability") or {}
                quantity = ship.get("quantity") if isinstance(ship, dict) else None
                if sku not in self.inventory:
                    failed = True
                    responses.append({"statusCode": 404, "sku": sku, "errors": [
                        {"errorId": 25702, "domain": "API_INVENTORY", "category": "REQUEST",
                         "message": f"SKU {sku} is not available in the system"}]})  # fmt: skip
                    continue
                if not isinstance(quantity, int) or quantity < 0:
                    failed = True
                    responses.append({"statusCode": 400, "sku": sku, "errors": [
                        {"errorId": 25709, "domain": "API_INVENTORY", "category": "REQUEST",
                         "message": "Invalid value for quantity"}]})  # fmt: skip
                    continue
                self.inventory[sku] = quantity
                self.stock_sets.append((sku, quantity))
                responses.append({"statusCode": 200, "sku": sku, "warnings": []})
        return self._log(
            operation, JSONResponse({"responses": responses}, status_code=207 if failed else 200)
        )

    def build_router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route(
            f"{INVENTORY_API}/inventory_item", self._get_inventory_items, methods=["GET"]
        )
        router.add_api_route(
            f"{INVENTORY_API}/bulk_update_price_quantity",
            self._bulk_update_price_quantity,
            methods=["POST"],
        )
        router.add_api_route("/identity/v1/oauth2/token", self._token, methods=["POST"])
        router.add_api_route(
            "/post-order/v2/cancellation", self._create_cancellation, methods=["POST"]
        )
        router.add_api_route(f"{API}/order", self._get_orders, methods=["GET"])
        router.add_api_route(f"{API}/order/{{order_id}}", self._get_order, methods=["GET"])
        router.add_api_route(
            f"{API}/order/{{order_id}}/shipping_fulfillment",
            self._get_fulfillments,
            methods=["GET"],
        )
        router.add_api_route(
            f"{API}/order/{{order_id}}/shipping_fulfillment",
            self._create_fulfillment,
            methods=["POST"],
        )
        router.add_api_route(
            f"{API}/order/{{order_id}}/shipping_fulfillment/{{fid}}",
            self._get_fulfillment,
            methods=["GET"],
        )
        return router


def _basic_ok(header: str) -> bool:
    if not header.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    client_id, _, secret = decoded.partition(":")
    return client_id == SANDBOX_CLIENT_ID and secret == SANDBOX_CLIENT_SECRET
