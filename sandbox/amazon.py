"""Amazon SP-API simulator: LWA token exchange and the Orders API v0 calls ordersync makes.

Mount with ``app.include_router(sim.build_router(), prefix="/amazon")``; a connector whose
``api_base_url`` and ``lwa_url`` are both ``http://host:port/amazon`` talks to it as to Amazon:

- ``POST /auth/o2/token``: refresh-token grant; a wrong client id/secret gets LWA's real
  ``401 {"error_description": "Client authentication failed", "error": "invalid_client"}``;
- ``GET /orders/v0/orders`` (``LastUpdatedAfter``/``CreatedAfter``, ``LastUpdatedBefore`` at
  least ``min_before_age_s`` in the past, ``MaxResultsPerPage`` ≤ 100, opaque ``NextToken``
  that answers the same page each time it is asked: a poll resumed after a crash asks again),
  ``GET /orders/v0/orders/{id}``, ``GET /orders/v0/orders/{id}/orderItems`` (own NextToken),
  ``POST /orders/v0/orders/{id}/shipmentConfirmation`` (204, recorded in ``shipments``);
- ``POST /tokens/2021-03-01/restrictedDataToken`` (``createRestrictedDataToken``): called with
  an LWA token, answers ``{"restrictedDataToken": "Atz.sprdt|...", "expiresIn": 3600}`` for a
  valid ``restrictedResources`` list (``400 InvalidInput`` otherwise); with
  ``pii_role=False`` the application lacks the restricted role: ``403 Unauthorized``;
- ``x-amz-access-token`` checked (403 ``Unauthorized`` as SP-API answers), a token bucket per
  operation at the documented usage plan (429 ``QuotaExceeded``), ``x-amzn-RateLimit-Limit``
  and ``x-amzn-RequestId`` on every response. ``rate_limits`` overrides the plans for tests.

Buyer PII, as the Orders v0 model documents it: every order has a seeded US shipping address
and an anonymised buyer email (``addresses`` / ``buyers``). ``getOrders`` and ``getOrder``
return the full ``ShippingAddress`` (Name, AddressLine1/2, Phone, AddressType...) only to an RDT
whose resources cover that call's path with ``dataElements`` ``shippingAddress``, and
``BuyerInfo`` (BuyerEmail, BuyerName) only with ``buyerInfo``; the plain LWA token gets City,
StateOrRegion, PostalCode and CountryCode and an empty ``BuyerInfo``. ``ShippingAddress`` is
absent on ``Pending`` orders ("only available for Unshipped, PartiallyShipped, Shipped and
InvoiceUnconfirmed"). An RDT is accepted only on the restricted calls it names.

Listings Items 2021-08-01, for stock (seller ``SANDBOX_SELLER_ID``): ``GET
/listings/2021-08-01/items/{sellerId}`` (``searchListingsItems``, ``pageSize`` ≤ 20, fulfillment
availability per SKU; FBA listings show channel ``AMAZON_NA``) and ``PATCH
/listings/2021-08-01/items/{sellerId}/{sku}`` (``patchListingsItem`` on
``/attributes/fulfillment_availability``: ``ACCEPTED``, ``INVALID`` for an FBA listing, 404 for
an unknown SKU), each at its usage plan; ``listings`` holds the quantity per SKU,
``stock_calls`` / ``stock_sets`` the calls, ``edit_in_admin`` plays Seller Central.

Feeds 2021-06-30, for many quantities at once: ``POST /feeds/2021-06-30/documents``
(``createFeedDocument``, 201 with a presigned URL on ``/feed-documents/{id}``, the stand-in for
S3: no SP-API token, the signature in the query, the content type of the request), ``POST
/feeds/2021-06-30/feeds`` (``createFeed``, ``JSON_LISTINGS_FEED`` only, 202), ``GET
/feeds/2021-06-30/feeds/{id}`` (``getFeed``: IN_QUEUE, IN_PROGRESS for
``feed_polls_in_progress`` answers, then DONE with ``resultFeedDocumentId``, or FATAL for a
document that is not a listings feed of this seller) and ``GET
/feeds/2021-06-30/documents/{id}`` (``getFeedDocument``: the gzipped JSON processing report,
``header`` / ``issues`` per ``messageId`` / ``summary``), each at its usage plan. A feed's
messages are applied as ``patchListingsItem`` would; a created feed counts as one of
``stock_calls``.

Payloads copy the shapes of the official fixtures (``getOrders.200.sandbox-1.json``,
``getOrderItems.200.sandbox-1.json``): money as ``{"CurrencyCode", "Amount"}`` strings, string
booleans, 14-digit item ids that may start with zeros, Pending orders without ``OrderTotal``.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sandbox.knobs import Knobs, WriteDrops

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "SANDBOX_CLIENT_ID",
    "SANDBOX_CLIENT_SECRET",
    "SANDBOX_MARKETPLACE_ID",
    "SANDBOX_REFRESH_TOKEN",
    "SANDBOX_SELLER_ID",
    "AmazonSimulator",
]

SANDBOX_CLIENT_ID = "amzn1.application-oa2-client.ordersync-sandbox"
SANDBOX_CLIENT_SECRET = "amzn1.oa2-cs.v1.ordersync-sandbox-secret"  # noqa: S105 (fixed sandbox value)
SANDBOX_REFRESH_TOKEN = "Atzr|ordersync-sandbox-refresh-token"  # noqa: S105 (fixed sandbox value)
SANDBOX_MARKETPLACE_ID = "ATVPDKIKX0DER"

#: operation → (rate per second, burst): the Orders v0 and Tokens 2021-03-01 usage plans
DEFAULT_RATE_LIMITS: Mapping[str, tuple[float, float]] = {
    "getOrders": (0.0167, 20),
    "getOrder": (0.5, 30),
    "getOrderItems": (0.5, 30),
    "confirmShipment": (2.0, 10),
    "createRestrictedDataToken": (1.0, 10),
    "patchListingsItem": (5.0, 10),
    "searchListingsItems": (5.0, 5),
    # Feeds 2021-06-30
    "createFeedDocument": (0.5, 15),
    "createFeed": (0.0083, 15),
    "getFeed": (2.0, 15),
    "getFeedDocument": (0.0222, 10),
}
FEEDS = "/feeds/2021-06-30"
#: the writes ordersync makes here, each of which ``drop_write_answers`` can drop
WRITE_OPERATIONS = ("confirmShipment", "patchListingsItem", "createFeed")
SANDBOX_SELLER_ID = "A2ORDERSYNCSANDBOX"
QUOTA_EXCEEDED: dict[str, object] = {
    "errors": [
        {
            "code": "QuotaExceeded",
            "message": "You exceeded your quota for the requested resource.",
            "details": "",
        }
    ]
}
_CENT = Decimal("0.01")
DENIED = "Access to requested resource is denied."

#: restricted Orders v0 operations (method, path template) and the data elements they take
_RESTRICTED_PATHS = (
    ("GET", "/orders/v0/orders"),
    ("GET", "/orders/v0/orders/{orderId}"),
    ("GET", "/orders/v0/orders/{orderId}/orderItems"),
    ("GET", "/orders/v0/orders/{orderId}/address"),
    ("GET", "/orders/v0/orders/{orderId}/buyerInfo"),
    ("GET", "/orders/v0/orders/{orderId}/orderItems/buyerInfo"),
)
_DATA_ELEMENTS = frozenset({"buyerInfo", "shippingAddress", "buyerTaxInformation"})
#: getOrder/getOrders/getOrderItems need dataElements; the address/buyerInfo calls do not
_NEEDS_ELEMENTS = frozenset(
    {"/orders/v0/orders", "/orders/v0/orders/{orderId}", "/orders/v0/orders/{orderId}/orderItems"}
)
#: ShippingAddress fields Amazon returns without an RDT (ordersV0.json: the others are restricted)
_PUBLIC_ADDRESS = ("City", "StateOrRegion", "PostalCode", "CountryCode")
_ADDRESS_STATUSES = frozenset({"Unshipped", "PartiallyShipped", "Shipped", "InvoiceUnconfirmed"})

# seeded PII: (city, state, first three ZIP digits, area code)
_CITIES = (
    ("Seattle", "WA", "981", "206"),
    ("Portland", "OR", "972", "503"),
    ("Austin", "TX", "787", "512"),
    ("Denver", "CO", "802", "303"),
    ("Chicago", "IL", "606", "312"),
    ("Columbus", "OH", "432", "614"),
    ("Atlanta", "GA", "303", "404"),
    ("Nashville", "TN", "372", "615"),
    ("Phoenix", "AZ", "850", "602"),
    ("Minneapolis", "MN", "554", "612"),
    ("Boston", "MA", "021", "617"),
    ("Raleigh", "NC", "276", "919"),
    ("San Diego", "CA", "921", "619"),
    ("Madison", "WI", "537", "608"),
    ("Salt Lake City", "UT", "841", "801"),
    ("Pittsburgh", "PA", "152", "412"),
)
_FIRST = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "Maria", "Daniel", "Susan", "Carlos", "Aisha", "Wei", "Priya", "Thomas",
)  # fmt: skip
_LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Nguyen", "Patel", "Kim", "Anderson", "Taylor", "Thomas", "Moore", "Chen",
)  # fmt: skip
_STREETS = (
    "Maple", "Oak", "Pine", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Main",
    "Lincoln", "Jefferson", "Sunset", "Highland", "Ridge", "Willow",
)  # fmt: skip
_SUFFIXES = ("St", "Ave", "Blvd", "Dr", "Ln", "Rd", "Way", "Ct")


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> float:
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _money(amount: Decimal, currency: str) -> dict[str, str]:
    return {"CurrencyCode": currency, "Amount": str(amount.quantize(_CENT))}


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": ""}]}


class _Bucket:
    """Token bucket on the simulator's clock (what Amazon's usage plans describe)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _path_matches(template: str, path: str) -> bool:
    """``/orders/v0/orders/{orderId}`` covers every order id; a specific path only itself."""
    want, got = template.strip("/").split("/"), path.strip("/").split("/")
    return len(want) == len(got) and all(
        w == g or (w.startswith("{") and w.endswith("}") and g)
        for w, g in zip(want, got, strict=True)
    )


class _Rdt:
    """An issued RDT: its expiry and (method, path) → the data elements it grants there."""

    def __init__(self, expiry: float, grants: list[tuple[str, str, frozenset[str]]]) -> None:
        self.expiry = expiry
        self.grants = grants

    def elements(self, method: str, path: str) -> frozenset[str] | None:
        """What this RDT grants on ``method path``; None = it does not cover that call."""
        found = [els for m, p, els in self.grants if m == method and _path_matches(p, path)]
        return frozenset().union(*found) if found else None


class AmazonSimulator:
    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        seed: int = 0,
        skus: Sequence[str] = ("SKU-RED-S", "SKU-RED-M", "SKU-BLUE-L", "SKU-MUG", "SKU-CAP"),
        marketplace_id: str = SANDBOX_MARKETPLACE_ID,
        currency: str = "USD",
        rate_limits: Mapping[str, tuple[float, float]] | None = None,
        pending_ratio: float = 0.2,
        page_size: int = 100,
        items_page_size: int = 100,
        token_lifetime_s: int = 3600,
        min_before_age_s: float = 120.0,
        clock: Callable[[], float] = time.time,
        pii_role: bool = True,
        rdt_lifetime_s: int = 3600,
    ) -> None:
        self.knobs = knobs or Knobs(seed=seed)
        self.skus = tuple(skus)
        self.marketplace_id = marketplace_id
        self.currency = currency
        self.pending_ratio = pending_ratio
        self.page_size = page_size  # a cap below MaxResultsPerPage, to test pagination
        self.items_page_size = items_page_size
        self.token_lifetime_s = token_lifetime_s
        self.min_before_age_s = min_before_age_s
        self.clock = clock
        #: the application holds a restricted role (Direct-to-Consumer Shipping): RDTs granted
        self.pii_role = pii_role
        self.rdt_lifetime_s = rdt_lifetime_s
        self._rng = random.Random(seed)
        # PII from its own stream, so that ids, items and statuses stay what a seed gave before
        self._pii_rng = random.Random(f"amazon-pii:{seed}")
        self._lock = threading.Lock()
        # overrides per operation; the others keep Amazon's documented plans
        self._limits = {**DEFAULT_RATE_LIMITS, **(rate_limits or {})}
        now = clock()
        self._buckets = {op: _Bucket(r, b, now) for op, (r, b) in self._limits.items()}
        #: AmazonOrderId → the v0 Order object / its OrderItems
        self.orders: dict[str, dict[str, Any]] = {}
        self.items: dict[str, list[dict[str, Any]]] = {}
        self._updated: dict[str, int] = {}  # AmazonOrderId → LastUpdateDate, epoch seconds
        self._tokens: dict[str, float] = {}  # access token → expiry epoch
        self._rdts: dict[str, _Rdt] = {}  # restricted data token → what it grants
        #: AmazonOrderId → the full v0 ShippingAddress / BuyerInfo (served only to an RDT)
        self.addresses: dict[str, dict[str, str]] = {}
        self.buyers: dict[str, dict[str, str]] = {}
        self._cursors: dict[str, list[str]] = {}  # NextToken → ids still to return
        self._item_cursors: dict[str, tuple[str, int]] = {}  # NextToken → (order id, offset)
        #: (AmazonOrderId, packageReferenceId) → confirmShipment packageDetail
        self.shipments: dict[tuple[str, str], dict[str, Any]] = {}
        self.request_log: list[tuple[str, int]] = []
        #: "apply then drop": ``drop_write_answers.arm(n, "confirmShipment", ...)`` has the
        #: next n answers of those writes (``WRITE_OPERATIONS``; all when none is named)
        #: dropped after the write was applied. confirmShipment has no idempotency key: the
        #: same package again is refused (400 InvalidInput), more items are shipped
        self.drop_write_answers = WriteDrops(WRITE_OPERATIONS)
        #: the seller's listings: SKU → merchant-fulfilled quantity (channel DEFAULT), and the
        #: SKUs Amazon fulfils (FBA: channel AMAZON_NA, quantity Amazon's own)
        self.listings: dict[str, int] = dict.fromkeys(self.skus, 0)
        self.fba_listings: dict[str, int] = {}
        #: patchListingsItem calls and feeds created, and every quantity set: (SKU, quantity)
        self.stock_calls = 0
        self.stock_sets: list[tuple[str, int]] = []
        #: Feeds API: documents (id → content type, content, presigned signature), feeds (id →
        #: the Feed object), and how many getFeed answers a feed stays IN_PROGRESS
        self.documents: dict[str, dict[str, Any]] = {}
        self.feeds: dict[str, dict[str, Any]] = {}
        self.feed_polls_in_progress = 1
        self._feed_polls: dict[str, int] = {}

    # ------------------------------------------------------------------ test-side API

    def add_listings(self, skus: Sequence[str], quantity: int = 0, *, fba: bool = False) -> None:
        with self._lock:
            for sku in skus:
                if fba:
                    self.fba_listings.setdefault(sku, quantity)
                else:
                    self.listings.setdefault(sku, quantity)

    def set_rate_limit(self, operation: str, rate: float, burst: float) -> None:
        """The usage plan this seller has for ``operation`` (Amazon grants some more)."""
        with self._lock:
            self._limits[operation] = (rate, burst)
            self._buckets[operation] = _Bucket(rate, burst, self.clock())

    def edit_in_admin(self, sku: str, quantity: int) -> None:
        """A merchant sets the quantity in Seller Central (not through us)."""
        with self._lock:
            self.listings[sku] = quantity

    def add_orders(self, n: int) -> list[str]:
        with self._lock:
            return [self._new_order() for _ in range(n)]

    def touch_order(self, external_id: str) -> None:
        """An update: Pending orders get paid (→ Unshipped, OrderTotal appears); others bump."""
        with self._lock:
            order = self.orders[external_id]
            if order["OrderStatus"] == "Pending":
                order["OrderStatus"] = "Unshipped"
                order["OrderTotal"] = self._order_total(self.items[external_id])
            self._bump(external_id)

    def access_token(self) -> str:
        """A valid token without the LWA round trip (for tests poking the API directly)."""
        with self._lock:
            return self._issue_token()

    def restricted_token(
        self,
        path: str = "/orders/v0/orders",
        data_elements: Sequence[str] = ("buyerInfo", "shippingAddress"),
    ) -> str:
        """A valid RDT for ``GET path`` without the Tokens API round trip (for tests)."""
        with self._lock:
            return self._issue_rdt([("GET", path, frozenset(data_elements))])

    # ------------------------------------------------------------------ state helpers

    def _new_id(self) -> str:
        while True:
            r = self._rng
            order_id = f"{r.randrange(111, 999)}-{r.randrange(10**7):07d}-{r.randrange(10**7):07d}"
            if order_id not in self.orders:
                return order_id

    def _new_order(self) -> str:
        order_id = self._new_id()
        now = self.clock()
        items = []
        for index in range(self._rng.randint(1, 3)):
            qty = self._rng.randint(1, 3)
            unit = Decimal(self._rng.randrange(500, 8000)) / 100
            price = unit * qty
            items.append(
                {
                    "ASIN": f"B0{self._rng.randrange(10**8):08d}",
                    # 14 digits, leading zeros kept (getOrderItems.200.sandbox-1.json)
                    "OrderItemId": f"{self._rng.randrange(10**13):014d}",
                    "SellerSKU": self._rng.choice(self.skus),
                    "Title": f"Sandbox product {index + 1}",
                    "QuantityOrdered": qty,
                    "QuantityShipped": 0,
                    "ProductInfo": {"NumberOfItems": "1"},
                    "ItemPrice": _money(price, self.currency),
                    "ItemTax": _money(
                        (price * Decimal("0.08")).quantize(_CENT, ROUND_HALF_UP), self.currency
                    ),
                    "ShippingPrice": _money(
                        Decimal("4.99") if index == 0 else Decimal(0), self.currency
                    ),
                    "PromotionDiscount": _money(Decimal(0), self.currency),
                    "IsGift": "false",
                    "ConditionId": "New",
                    "ConditionSubtypeId": "New",
                    "IsTransparency": False,
                    "SerialNumberRequired": False,
                }
            )
        pending = self._rng.random() < self.pending_ratio
        order: dict[str, Any] = {
            "AmazonOrderId": order_id,
            "PurchaseDate": _iso(now),
            "LastUpdateDate": _iso(now),
            "OrderStatus": "Pending" if pending else "Unshipped",
            "FulfillmentChannel": "MFN",
            "SalesChannel": "Amazon.com",
            "ShipServiceLevel": "Std US D2D Dom",
            "NumberOfItemsShipped": 0,
            "NumberOfItemsUnshipped": sum(i["QuantityOrdered"] for i in items),
            "PaymentMethod": "Other",
            "PaymentMethodDetails": ["Standard"],
            "IsReplacementOrder": False,
            "MarketplaceId": self.marketplace_id,
            "ShipmentServiceLevelCategory": "Standard",
            "OrderType": "StandardOrder",
            "IsBusinessOrder": False,
            "IsPrime": False,
            "IsGlobalExpressEnabled": False,
            "IsPremiumOrder": False,
            "IsSoldByAB": False,
            "IsIBA": False,
            "IsISPU": False,
            "IsAccessPointOrder": False,
            "EasyShipShipmentStatus": "PendingPickUp",
            "ElectronicInvoiceStatus": "NotRequired",
        }
        if not pending:  # Amazon sends no OrderTotal before payment is authorised
            order["OrderTotal"] = self._order_total(items)
        self.orders[order_id] = order
        self.items[order_id] = items
        self._new_pii(order_id)
        self._updated[order_id] = int(now)
        return order_id

    def _new_pii(self, order_id: str) -> None:
        r = self._pii_rng
        city, state, zip3, area = r.choice(_CITIES)
        name = f"{r.choice(_FIRST)} {r.choice(_LAST)}"
        postal = f"{zip3}{r.randrange(100):02d}"
        if r.random() < 0.5:  # Amazon often returns ZIP+4 ("98121-2778")
            postal += f"-{r.randrange(10000):04d}"
        address = {
            "Name": name,
            "AddressLine1": f"{r.randrange(1, 9900)} {r.choice(_STREETS)} {r.choice(_SUFFIXES)}",
            "City": city,
            "StateOrRegion": state,
            "PostalCode": postal,
            "CountryCode": "US",
            "Phone": f"+1 {area}-555-01{r.randrange(100):02d}",  # 555-01xx: fictional numbers
            "AddressType": "Residential",
        }
        if r.random() < 0.3:
            address["AddressLine2"] = f"Apt {r.randrange(1, 40)}{r.choice('ABCD')}"
        if r.random() < 0.1:
            address["AddressType"] = "Commercial"
            address["CompanyName"] = f"{r.choice(_LAST)} {r.choice(('LLC', 'Inc', 'Co'))}"
        self.addresses[order_id] = address
        handle = "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(15))
        self.buyers[order_id] = {
            "BuyerEmail": f"{handle}@marketplace.amazon.com",  # Amazon's anonymised relay
            "BuyerName": name,
        }

    def _view(self, order_id: str, granted: frozenset[str]) -> dict[str, Any]:
        """The order as this caller may see it: PII only for what its RDT grants."""
        order = dict(self.orders[order_id])
        if order["OrderStatus"] in _ADDRESS_STATUSES:
            full = self.addresses[order_id]
            if "shippingAddress" in granted:
                order["ShippingAddress"] = dict(full)
            else:
                order["ShippingAddress"] = {k: full[k] for k in _PUBLIC_ADDRESS if k in full}
        order["BuyerInfo"] = dict(self.buyers[order_id]) if "buyerInfo" in granted else {}
        return order

    def _order_total(self, items: list[dict[str, Any]]) -> dict[str, str]:
        total = Decimal(0)
        for item in items:
            for key in ("ItemPrice", "ItemTax", "ShippingPrice"):
                total += Decimal(item[key]["Amount"])
            total -= Decimal(item["PromotionDiscount"]["Amount"])
        return _money(total, self.currency)

    def _bump(self, order_id: str) -> None:
        now = self.clock()
        self.orders[order_id]["LastUpdateDate"] = _iso(now)
        self._updated[order_id] = int(now)

    def _issue_token(self) -> str:
        token = "Atza|" + base64.b64encode(self._rng.randbytes(24)).decode()
        self._tokens[token] = self.clock() + self.token_lifetime_s
        return token

    def _issue_rdt(self, grants: list[tuple[str, str, frozenset[str]]]) -> str:
        token = "Atz.sprdt|" + base64.urlsafe_b64encode(self._rng.randbytes(36)).decode()
        self._rdts[token] = _Rdt(self.clock() + self.rdt_lifetime_s, grants)
        return token

    def _new_cursor(self) -> str:
        # real NextTokens are base64 with '+', '/' and '=': clients must URL-encode them
        return base64.b64encode(self._rng.randbytes(30)).decode()

    # ------------------------------------------------------------------ HTTP plumbing

    def _reply(
        self,
        operation: str,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> Response:
        self.request_log.append((operation, status))
        all_headers = {"x-amzn-RequestId": str(uuid.uuid4()), **(headers or {})}
        if operation in self._limits:
            all_headers["x-amzn-RateLimit-Limit"] = str(self._limits[operation][0])
        if body is None:
            answer = Response(status_code=status, headers=all_headers)
        else:
            answer = JSONResponse(body, status_code=status, headers=all_headers)
        return self.drop_write_answers(operation, answer)

    async def _gate(
        self, operation: str, request: Request, path: str | None = None
    ) -> Response | frozenset[str]:
        """Fault knobs, then auth, then the operation's bucket (API Gateway's order).

        The data elements the caller may see (empty for an LWA token), or the error response.
        ``path``: the restricted resource this call is (``GET path``); None = not restricted,
        where an RDT is no access token at all.
        """
        disturbed = await self.knobs.disturb(QUOTA_EXCEEDED)
        if disturbed is not None:
            self.request_log.append((operation, disturbed.status_code))
            disturbed.headers["x-amzn-RateLimit-Limit"] = str(self._limits[operation][0])
            return disturbed
        token = request.headers.get("x-amz-access-token") or ""
        with self._lock:
            now = self.clock()
            granted: frozenset[str] | None = frozenset()
            rdt = self._rdts.get(token)
            if rdt is not None:
                expiry: float | None = rdt.expiry
                granted = rdt.elements("GET", path) if path is not None else None
            else:
                expiry = self._tokens.get(token)
            if expiry is None or granted is None:
                return self._reply(operation, 403, _errors("Unauthorized", DENIED))
            if now >= expiry:
                return self._reply(
                    operation,
                    403,
                    _errors("Unauthorized", "The access token you provided has expired."),
                )
            if not self._buckets[operation].take(now):
                return self._reply(operation, 429, QUOTA_EXCEEDED)
        return granted

    # ------------------------------------------------------------------ handlers

    async def _lwa_token(self, request: Request) -> Response:
        disturbed = await self.knobs.disturb()
        if disturbed is not None:
            self.request_log.append(("lwaToken", disturbed.status_code))
            return disturbed
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        with self._lock:
            if form.get("grant_type") != "refresh_token":
                body = {
                    "error_description": (
                        "The authorization grant type is not supported by the authorization server"
                    ),
                    "error": "unsupported_grant_type",
                }
                return self._reply("lwaToken", 400, body)
            if (
                form.get("client_id") != SANDBOX_CLIENT_ID
                or form.get("client_secret") != SANDBOX_CLIENT_SECRET
            ):
                body = {
                    "error_description": "Client authentication failed",
                    "error": "invalid_client",
                }
                return self._reply("lwaToken", 401, body)
            if form.get("refresh_token") != SANDBOX_REFRESH_TOKEN:
                body = {
                    "error_description": (
                        "The request has an invalid grant parameter : refresh_token"
                    ),
                    "error": "invalid_grant",
                }
                return self._reply("lwaToken", 400, body)
            granted: dict[str, object] = {
                "access_token": self._issue_token(),
                "refresh_token": SANDBOX_REFRESH_TOKEN,
                "token_type": "bearer",
                "expires_in": self.token_lifetime_s,
            }
            return self._reply("lwaToken", 200, granted)

    async def _create_rdt(self, request: Request) -> Response:
        operation = "createRestrictedDataToken"
        if isinstance(denied := await self._gate(operation, request), Response):
            return denied
        try:
            body = await request.json()
        except ValueError:
            body = None
        with self._lock:
            if not self.pii_role:  # the app was not granted a restricted role
                return self._reply(operation, 403, _errors("Unauthorized", DENIED))
            grants = _parse_resources(body)
            if isinstance(grants, str):
                return self._reply(operation, 400, _errors("InvalidInput", grants))
            token = self._issue_rdt(grants)
            answer = {"restrictedDataToken": token, "expiresIn": self.rdt_lifetime_s}
            return self._reply(operation, 200, answer)

    async def _get_orders(self, request: Request) -> Response:
        granted = await self._gate("getOrders", request, "/orders/v0/orders")
        if isinstance(granted, Response):
            return granted
        q = request.query_params
        with self._lock:
            if not q.get("MarketplaceIds"):
                return self._reply(
                    "getOrders",
                    400,
                    _errors("InvalidInput", "Missing required parameter MarketplaceIds"),
                )
            try:
                size = int(q.get("MaxResultsPerPage", "100"))
            except ValueError:
                size = 0
            if not 1 <= size <= 100:
                return self._reply(
                    "getOrders", 400, _errors("InvalidInput", "MaxResultsPerPage must be 1 - 100")
                )
            extra: dict[str, str] = {}
            token = q.get("NextToken")
            if token:
                remaining = self._cursors.get(token)  # asked again (a retry), same page
                if remaining is None:
                    return self._reply(
                        "getOrders", 400, _errors("InvalidInput", "Invalid NextToken")
                    )
            else:
                selected = self._select(q)
                if isinstance(selected, Response):
                    return selected
                remaining, extra = selected
            size = min(size, self.page_size)
            page, rest = remaining[:size], remaining[size:]
            payload: dict[str, Any] = {"Orders": [self._view(i, granted) for i in page], **extra}
            if rest:
                payload["NextToken"] = next_token = self._new_cursor()
                self._cursors[next_token] = rest
            return self._reply("getOrders", 200, {"payload": payload})

    def _select(self, q: Any) -> tuple[list[str], dict[str, str]] | Response:
        now = self.clock()
        try:
            if q.get("LastUpdatedAfter"):
                after = _parse_iso(q["LastUpdatedAfter"])
                before = _parse_iso(q["LastUpdatedBefore"]) if q.get("LastUpdatedBefore") else now
                if q.get("LastUpdatedBefore") and (
                    before < after or before > now - self.min_before_age_s
                ):
                    raise ValueError("LastUpdatedBefore")
                when, bound_key = self._updated, "LastUpdatedBefore"
            elif q.get("CreatedAfter"):
                after, before = _parse_iso(q["CreatedAfter"]), now
                when = {i: int(_parse_iso(o["PurchaseDate"])) for i, o in self.orders.items()}
                bound_key = "CreatedBefore"
            else:
                raise ValueError("CreatedAfter or LastUpdatedAfter is required")
        except (ValueError, KeyError):
            return self._reply("getOrders", 400, _errors("InvalidInput", "Invalid Input"))
        marketplaces = set(q["MarketplaceIds"].split(","))
        ids = [
            i
            for i, at in when.items()
            if after <= at <= before and self.orders[i]["MarketplaceId"] in marketplaces
        ]
        ids.sort(key=lambda i: (when[i], i))
        return ids, {bound_key: _iso(before)}

    async def _get_order(self, order_id: str, request: Request) -> Response:
        granted = await self._gate("getOrder", request, f"/orders/v0/orders/{order_id}")
        if isinstance(granted, Response):
            return granted
        with self._lock:
            if order_id not in self.orders:
                return self._reply("getOrder", 404, _errors("NotFound", "Order not found"))
            return self._reply("getOrder", 200, {"payload": self._view(order_id, granted)})

    async def _get_order_items(self, order_id: str, request: Request) -> Response:
        path = f"/orders/v0/orders/{order_id}/orderItems"
        if isinstance(denied := await self._gate("getOrderItems", request, path), Response):
            return denied
        with self._lock:
            if order_id not in self.orders:
                return self._reply("getOrderItems", 404, _errors("NotFound", "Order not found"))
            offset = 0
            token = request.query_params.get("NextToken")
            if token:
                cursor = self._item_cursors.get(token)
                if cursor is None or cursor[0] != order_id:
                    return self._reply(
                        "getOrderItems", 400, _errors("InvalidInput", "Invalid NextToken")
                    )
                offset = cursor[1]
            items = self.items[order_id]
            end = offset + self.items_page_size
            payload: dict[str, Any] = {
                "AmazonOrderId": order_id,
                "OrderItems": [dict(i) for i in items[offset:end]],
            }
            if end < len(items):
                payload["NextToken"] = next_token = self._new_cursor()
                self._item_cursors[next_token] = (order_id, end)
            return self._reply("getOrderItems", 200, {"payload": payload})

    async def _confirm_shipment(self, order_id: str, request: Request) -> Response:
        if isinstance(denied := await self._gate("confirmShipment", request), Response):
            return denied
        try:
            body = await request.json()
            package = body["packageDetail"]
            key = (order_id, str(package["packageReferenceId"]))
            lines = {str(i["orderItemId"]): int(i["quantity"]) for i in package["orderItems"]}
            _parse_iso(package["shipDate"])
            valid = bool(
                body["marketplaceId"] and package["carrierCode"] and package["trackingNumber"]
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            valid = False
        with self._lock:
            if order_id not in self.orders:
                return self._reply("confirmShipment", 404, _errors("NotFound", "Order not found"))
            items = {i["OrderItemId"]: i for i in self.items[order_id]}
            if (
                not valid
                or key in self.shipments
                or self.orders[order_id]["OrderStatus"] in ("Pending", "Canceled")
                or any(
                    item_id not in items
                    or not 0
                    < qty
                    <= items[item_id]["QuantityOrdered"] - items[item_id]["QuantityShipped"]
                    for item_id, qty in lines.items()
                )
            ):
                return self._reply("confirmShipment", 400, _errors("InvalidInput", "Invalid Input"))
            for item_id, qty in lines.items():
                items[item_id]["QuantityShipped"] += qty
            shipped = sum(i["QuantityShipped"] for i in items.values())
            ordered = sum(i["QuantityOrdered"] for i in items.values())
            order = self.orders[order_id]
            order["OrderStatus"] = "Shipped" if shipped == ordered else "PartiallyShipped"
            order["NumberOfItemsShipped"] = shipped
            order["NumberOfItemsUnshipped"] = ordered - shipped
            self.shipments[key] = dict(package)
            self._bump(order_id)
            return self._reply("confirmShipment", 204)

    async def _search_listings(self, seller_id: str, request: Request) -> Response:
        granted = await self._gate("searchListingsItems", request)
        if isinstance(granted, Response):
            return granted
        q = request.query_params
        marketplaces = q.get("marketplaceIds", "").split(",")
        if seller_id != SANDBOX_SELLER_ID or self.marketplace_id not in marketplaces:
            return self._reply("searchListingsItems", 400, _errors("InvalidInput", "bad seller"))
        size = min(20, max(1, int(q.get("pageSize") or 10)))
        start = int(q.get("pageToken") or 0)
        with self._lock:
            every = sorted({*self.listings, *self.fba_listings})
            items = []
            for sku in every[start : start + size]:
                if sku in self.fba_listings:
                    code, qty = "AMAZON_NA", self.fba_listings[sku]
                else:
                    code, qty = "DEFAULT", self.listings[sku]
                items.append({
                    "sku": sku,
                    "summaries": [{"marketplaceId": self.marketplace_id, "status": ["BUYABLE"]}],
                    "fulfillmentAvailability": [{"fulfillmentChannelCode": code,
                                                 "quantity": qty}],
                })  # fmt: skip
        body: dict[str, Any] = {"numberOfResults": len(every), "items": items}
        if start + size < len(every):
            body["pagination"] = {"nextToken": str(start + size)}
        return self._reply("searchListingsItems", 200, body)

    async def _patch_listing(self, seller_id: str, sku: str, request: Request) -> Response:
        granted = await self._gate("patchListingsItem", request)
        if isinstance(granted, Response):
            return granted
        try:
            body = json.loads(await request.body())
            patch = body["patches"][0]
            if patch["path"] != "/attributes/fulfillment_availability" or not body["productType"]:
                raise ValueError(patch["path"])
            quantity = int(patch["value"][0]["quantity"])
            channel = patch["value"][0]["fulfillment_channel_code"]
        except (ValueError, KeyError, IndexError, TypeError):
            return self._reply("patchListingsItem", 400, _errors("InvalidInput", "bad patch"))
        with self._lock:
            self.stock_calls += 1
            if seller_id != SANDBOX_SELLER_ID or sku not in {**self.listings, **self.fba_listings}:
                return self._reply("patchListingsItem", 404, _errors("NOT_FOUND", "no such SKU"))
            if sku in self.fba_listings or channel != "DEFAULT" or quantity < 0:
                answer = {
                    "sku": sku,
                    "status": "INVALID",
                    "submissionId": uuid.uuid4().hex,
                    "issues": [
                        {
                            "code": "90000900",
                            "severity": "ERROR",
                            "message": "fulfillment_availability is not editable",
                        }
                    ],
                }
                return self._reply("patchListingsItem", 200, answer)  # fmt: skip
            self.listings[sku] = quantity
            self.stock_sets.append((sku, quantity))
        answer = {"sku": sku, "status": "ACCEPTED", "submissionId": uuid.uuid4().hex,
                  "issues": []}  # fmt: skip
        return self._reply("patchListingsItem", 200, answer)

    # ------------------------------------------------------------------ feeds 2021-06-30

    def _presigned_url(self, request: Request, document_id: str) -> str:
        """Where a document is uploaded / downloaded: this simulator's stand-in for S3, with
        a signature in the query as a presigned URL has (no SP-API token needed or taken)."""
        base = str(request.url).split(FEEDS, 1)[0]
        signature = self.documents[document_id]["signature"]
        return f"{base}/feed-documents/{document_id}?X-Amz-Signature={signature}"

    async def _create_feed_document(self, request: Request) -> Response:
        granted = await self._gate("createFeedDocument", request)
        if isinstance(granted, Response):
            return granted
        try:
            content_type = json.loads(await request.body())["contentType"]
            if not isinstance(content_type, str) or not content_type:
                raise ValueError(content_type)
        except (ValueError, KeyError, TypeError):
            return self._reply("createFeedDocument", 400,
                               _errors("InvalidInput", "contentType is required"))  # fmt: skip
        with self._lock:
            document_id = f"amzn1.tortuga.4.na.{uuid.uuid4()}"
            self.documents[document_id] = {"content_type": content_type, "content": None,
                                           "signature": uuid.uuid4().hex}  # fmt: skip
            url = self._presigned_url(request, document_id)
        return self._reply("createFeedDocument", 201, {"feedDocumentId": document_id, "url": url})

    def _document(self, document_id: str, request: Request) -> dict[str, Any] | None:
        document = self.documents.get(document_id)
        if document is None or request.query_params.get("X-Amz-Signature") != (
            document["signature"]
        ):
            return None
        return document

    async def _upload_document(self, document_id: str, request: Request) -> Response:
        content = await request.body()
        with self._lock:
            document = self._document(document_id, request)
            if document is None or document.get("result"):
                return Response("<Error><Code>AccessDenied</Code></Error>", status_code=403)
            if request.headers.get("content-type") != document["content_type"]:
                # the signature covers the content type given to createFeedDocument
                return Response("<Error><Code>SignatureDoesNotMatch</Code></Error>",
                                status_code=403)  # fmt: skip
            document["content"] = content
        return Response(status_code=200)

    async def _download_document(self, document_id: str, request: Request) -> Response:
        with self._lock:
            document = self._document(document_id, request)
            if document is None or document["content"] is None:
                return Response("<Error><Code>NoSuchKey</Code></Error>", status_code=404)
            return Response(document["content"], media_type=document["content_type"])

    async def _create_feed(self, request: Request) -> Response:
        granted = await self._gate("createFeed", request)
        if isinstance(granted, Response):
            return granted
        try:
            body = json.loads(await request.body())
            feed_type, document_id = body["feedType"], body["inputFeedDocumentId"]
            marketplaces = body["marketplaceIds"]
            if not isinstance(marketplaces, list) or not marketplaces:
                raise ValueError(marketplaces)
        except (ValueError, KeyError, TypeError):
            return self._reply("createFeed", 400, _errors("InvalidInput", "bad feed"))
        with self._lock:
            document = self.documents.get(document_id)
            if feed_type != "JSON_LISTINGS_FEED" or document is None or document["content"] is None:
                bad = _errors("InvalidInput", "unknown feedType or document")
                return self._reply("createFeed", 400, bad)
            self.stock_calls += 1
            feed_id = str(50000000000 + len(self.feeds) + 1)
            self.feeds[feed_id] = {
                "feedId": feed_id, "feedType": feed_type, "marketplaceIds": marketplaces,
                "createdTime": _iso(self.clock()), "processingStatus": "IN_QUEUE",
                "inputFeedDocumentId": document_id,
            }  # fmt: skip
            self._feed_polls[feed_id] = self.feed_polls_in_progress
        return self._reply("createFeed", 202, {"feedId": feed_id})

    async def _get_feed(self, feed_id: str, request: Request) -> Response:
        granted = await self._gate("getFeed", request)
        if isinstance(granted, Response):
            return granted
        with self._lock:
            feed = self.feeds.get(feed_id)
            if feed is None:
                return self._reply("getFeed", 404, _errors("NotFound", "no such feed"))
            if feed["processingStatus"] in ("IN_QUEUE", "IN_PROGRESS"):
                if self._feed_polls[feed_id] > 0:
                    self._feed_polls[feed_id] -= 1
                    feed["processingStatus"] = "IN_PROGRESS"
                    feed.setdefault("processingStartTime", _iso(self.clock()))
                else:
                    self._process_feed(feed)
            answer = {k: v for k, v in feed.items() if k != "inputFeedDocumentId"}
        return self._reply("getFeed", 200, answer)

    def _process_feed(self, feed: dict[str, Any]) -> None:
        """Apply a JSON_LISTINGS_FEED's messages as patchListingsItem would, and store its
        processing report (gzipped JSON, as Amazon serves it)."""
        document = self.documents[feed["inputFeedDocumentId"]]
        issues: list[dict[str, Any]] = []
        accepted = invalid = 0
        try:
            parsed = json.loads(document["content"])
            header, messages = parsed["header"], parsed["messages"]
            if header.get("sellerId") != SANDBOX_SELLER_ID or not isinstance(messages, list):
                raise ValueError("header")
        except (ValueError, KeyError, TypeError, AttributeError):
            feed["processingStatus"] = "FATAL"
            issues.append({"code": "4000001", "severity": "ERROR",
                           "message": "The feed is not a valid JSON_LISTINGS_FEED."})  # fmt: skip
            messages = []
        for message in messages:
            problem = self._feed_message(message)
            if problem is None:
                accepted += 1
                continue
            invalid += 1
            code, text = problem
            which = message.get("messageId") if isinstance(message, dict) else None
            issues.append({"messageId": which, "code": code, "severity": "ERROR",
                           "message": text})  # fmt: skip
        if feed["processingStatus"] != "FATAL":
            feed["processingStatus"] = "DONE"
        feed["processingEndTime"] = _iso(self.clock())
        report = {
            "header": {"sellerId": SANDBOX_SELLER_ID, "version": "2.0",
                       "feedId": feed["feedId"]},
            "issues": issues,
            "summary": {"errors": len(issues), "warnings": 0, "messagesProcessed": len(messages),
                        "messagesAccepted": accepted, "messagesInvalid": invalid},
        }  # fmt: skip
        result_id = f"amzn1.tortuga.4.na.{uuid.uuid4()}"
        self.documents[result_id] = {
            "content_type": "application/json", "result": True,
            "content": gzip.compress(json.dumps(report).encode()), "signature": uuid.uuid4().hex,
        }  # fmt: skip
        feed["resultFeedDocumentId"] = result_id

    def _feed_message(self, message: Any) -> tuple[str, str] | None:
        """One message of a feed: applied (None), or why not (code, message)."""
        try:
            sku = message["sku"]
            patch = message["patches"][0]
            if message["operationType"] != "PATCH" or not message["productType"] or (
                patch["path"] != "/attributes/fulfillment_availability"
            ):
                raise ValueError(patch["path"])
            quantity = int(patch["value"][0]["quantity"])
            channel = patch["value"][0]["fulfillment_channel_code"]
        except (ValueError, KeyError, IndexError, TypeError):
            return "4000003", "The message is not a valid PATCH of fulfillment_availability."
        if sku not in {**self.listings, **self.fba_listings}:
            return "NOT_FOUND", f"SKU {sku} is not a listing of this seller."
        if sku in self.fba_listings or channel != "DEFAULT" or quantity < 0:
            return "90000900", "fulfillment_availability is not editable"
        self.listings[sku] = quantity
        self.stock_sets.append((sku, quantity))
        return None

    async def _get_feed_document(self, document_id: str, request: Request) -> Response:
        granted = await self._gate("getFeedDocument", request)
        if isinstance(granted, Response):
            return granted
        with self._lock:
            document = self.documents.get(document_id)
            if document is None or not document.get("result"):
                return self._reply("getFeedDocument", 404, _errors("NotFound", "no document"))
            answer = {"feedDocumentId": document_id, "compressionAlgorithm": "GZIP",
                      "url": self._presigned_url(request, document_id)}  # fmt: skip
        return self._reply("getFeedDocument", 200, answer)

    def build_router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/auth/o2/token", self._lwa_token, methods=["POST"])
        router.add_api_route(
            "/tokens/2021-03-01/restrictedDataToken", self._create_rdt, methods=["POST"]
        )
        router.add_api_route("/orders/v0/orders", self._get_orders, methods=["GET"])
        router.add_api_route("/orders/v0/orders/{order_id}", self._get_order, methods=["GET"])
        router.add_api_route(
            "/orders/v0/orders/{order_id}/orderItems", self._get_order_items, methods=["GET"]
        )
        router.add_api_route(
            "/orders/v0/orders/{order_id}/shipmentConfirmation",
            self._confirm_shipment,
            methods=["POST"],
        )
        router.add_api_route(
            "/listings/2021-08-01/items/{seller_id}", self._search_listings, methods=["GET"]
        )
        router.add_api_route(
            "/listings/2021-08-01/items/{seller_id}/{sku}", self._patch_listing, methods=["PATCH"]
        )
        router.add_api_route(f"{FEEDS}/documents", self._create_feed_document, methods=["POST"])
        router.add_api_route(
            f"{FEEDS}/documents/{{document_id}}", self._get_feed_document, methods=["GET"]
        )
        router.add_api_route(f"{FEEDS}/feeds", self._create_feed, methods=["POST"])
        router.add_api_route(f"{FEEDS}/feeds/{{feed_id}}", self._get_feed, methods=["GET"])
        router.add_api_route(
            "/feed-documents/{document_id}", self._upload_document, methods=["PUT"]
        )
        router.add_api_route(
            "/feed-documents/{document_id}", self._download_document, methods=["GET"]
        )
        return router


def _parse_resources(body: Any) -> list[tuple[str, str, frozenset[str]]] | str:
    """``restrictedResources`` → (method, path, data elements) grants, or the 400 message."""
    resources = body.get("restrictedResources") if isinstance(body, dict) else None
    if not isinstance(resources, list) or not resources:
        return "Request is missing or has invalid parameters: restrictedResources"
    if len(resources) > 50:
        return "restrictedResources: at most 50 resources"
    grants = []
    for index, resource in enumerate(resources):
        where = f"restrictedResources[{index}]"
        if not isinstance(resource, dict):
            return f"{where}: not an object"
        method, path = resource.get("method"), resource.get("path")
        elements = resource.get("dataElements", [])
        if method not in ("GET", "PUT", "POST", "DELETE") or not isinstance(path, str):
            return f"{where}: method and path are required"
        template = next(
            (p for m, p in _RESTRICTED_PATHS if m == method and _path_matches(p, path)), None
        )
        if template is None:
            return f"{where}: {method} {path} is not a restricted resource"
        if not isinstance(elements, list) or not all(isinstance(e, str) for e in elements):
            return f"{where}: dataElements must be a list of strings"
        if set(elements) - _DATA_ELEMENTS:
            return f"{where}: unknown dataElements"
        if template in _NEEDS_ELEMENTS and not elements:
            return f"{where}: dataElements is required for {template}"
        grants.append((method, path, frozenset(elements)))
    return grants
