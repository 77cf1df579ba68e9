"""Shopify simulator: the GraphQL Admin API (2026-07) as the Shopify connector uses it.

``POST /admin/api/{version}/graphql.json`` with ``X-Shopify-Access-Token``; the operation is
picked from ``operationName`` (or the document's first ``query``/``mutation`` name) and answered
with Shopify's response shapes, ``extensions.cost`` included. A real leaky bucket limits query
cost (1000 points, 50/s restore by default): a query whose requested cost exceeds what is
available gets ``THROTTLED`` like Shopify's, one above the whole bucket ``MAX_COST_EXCEEDED``.

Orders are kept in the REST shape (``rest-2026-07/order.get.json``) with big-integer ids and
totals that add up; GraphQL nodes and webhook bodies are derived from them. Ledgers record what
the connector pushed: ``fulfillments``, ``inventory_sets`` (by idempotency key), ``cancels``,
``captures`` (by idempotency key); ``inventory`` is the quantity available per SKU at the shop's
one location, ``stock_calls`` the ``inventorySetQuantities`` calls answered, and
``edit_in_admin`` plays a merchant changing a quantity in Shopify's admin (the next
compare-and-set from the old number is refused).

Each order has its payment transactions, as ``OrderTransactions`` reads them: a ``paid`` order a
SALE, an ``authorized`` one an AUTHORIZATION that expires 7 days after checkout (Shopify
Payments' card authorizations), a ``pending`` one none. ``OrderCapture`` (``@idempotent``
required) captures an authorization once: a repeated key answers the first capture; an expired,
voided or already captured authorization, or more than it holds, is a user error.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import datetime as dt
import hashlib
import hmac
import json
import random
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from sandbox.knobs import DroppedConnection, Knobs

__all__ = [
    "API_VERSION",
    "DEFAULT_SKUS",
    "SANDBOX_ACCESS_TOKEN",
    "SANDBOX_SHOP",
    "ShopifySimulator",
    "graphql_order",
]

SANDBOX_SHOP = "ordersync-sandbox.myshopify.com"
SANDBOX_ACCESS_TOKEN = "shpat_sandbox_00000000000000000000000000000000"  # noqa: S105 - public
API_VERSION = "2026-07"
DEFAULT_SKUS = ("SKU-RED-S", "SKU-RED-M", "SKU-BLUE-S", "SKU-BLUE-M", "SKU-GREEN-L")
ORDER_TOPICS = ("orders/create", "orders/updated", "orders/cancelled", "orders/edited")

CENT = Decimal("0.01")
#: Shopify Payments card authorizations expire after 7 days
AUTHORIZATION_VALID = dt.timedelta(days=7)
TAX_RATE = Decimal("0.06")
SHOP_OFFSET = dt.timezone(dt.timedelta(hours=-4))  # REST timestamps carry the shop's offset
LOCATION_GID = "gid://shopify/Location/655441491"
#: a second location: line items of ``second_location_skus`` are assigned there, in a
#: fulfillment order of their own (as Shopify's order routing splits an order)
LOCATION_2_GID = "gid://shopify/Location/655441492"

# Shopify's static cost analysis, as the client's estimates assume it: object 1, connection
# 2 + first x node. ORDER_BASE: Order + six money bags x 2 + customer + shipping address.
ORDER_BASE, LINE_COST, MUTATION_COST = 15, 9, 10
# OrderRefunds: refunds(first: n) x (refund 3 + line items 2 + first x 6 + shipping 12 + 17)
REFUND_COST, REFUND_LINE_COST = 34, 6

_OP_NAME = re.compile(r"\b(?:query|mutation)\s+([A-Za-z_]\w*)")


def _money(value: Decimal | str) -> str:
    return str(Decimal(value).quantize(CENT))


def _gql_amount(value: Any) -> str:
    # GraphQL's Decimal scalar drops trailing zeros: "199.0", "3.98"
    text = format(Decimal(str(value)).normalize(), "f")
    return text if "." in text else text + ".0"


def _set(amount: Decimal | str, currency: str) -> dict[str, Any]:
    money = {"amount": _money(amount), "currency_code": currency}
    return {"shop_money": money, "presentment_money": dict(money)}


def _rest_time(value: dt.datetime) -> str:
    return value.astimezone(SHOP_OFFSET).replace(microsecond=0).isoformat()


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


def _gql_time(value: str | None) -> str | None:
    return None if not value else _parse_time(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def graphql_order(order: dict[str, Any]) -> dict[str, Any]:
    """A REST order as the GraphQL ``Order`` node the connector's ``OrderFields`` selects
    (all line items; the router slices ``lineItems`` to the requested page)."""
    cur = order["currency"]

    def bag(amount: Any) -> dict[str, Any] | None:
        if amount is None or amount == "":
            return None
        return {"shopMoney": {"amount": _gql_amount(amount), "currencyCode": cur}}

    shipping = ((order.get("total_shipping_price_set") or {}).get("shop_money") or {}).get("amount")
    if shipping is None:
        shipping = sum((Decimal(str(s["price"])) for s in order.get("shipping_lines") or []), 0)
    addr = order.get("shipping_address")
    customer = order.get("customer")
    fulfillment = {None: "UNFULFILLED", "partial": "PARTIALLY_FULFILLED"}.get(
        order.get("fulfillment_status"), str(order.get("fulfillment_status")).upper()
    )
    lines = []
    for item in order.get("line_items") or []:
        lines.append(
            {
                "id": item.get("admin_graphql_api_id") or f"gid://shopify/LineItem/{item['id']}",
                "sku": item.get("sku"),
                "name": item.get("name"),
                "title": item.get("title"),
                "variantTitle": item.get("variant_title") or None,
                "quantity": item["quantity"],
                "originalUnitPriceSet": bag(item["price"]),
                "taxLines": [
                    {"rate": t.get("rate"), "title": t.get("title"), "priceSet": bag(t["price"])}
                    for t in item.get("tax_lines") or []
                ],
                "discountAllocations": [
                    {"allocatedAmountSet": bag(d["amount"])}
                    for d in item.get("discount_allocations") or []
                ],
            }
        )
    return {
        "id": order.get("admin_graphql_api_id") or f"gid://shopify/Order/{order['id']}",
        "legacyResourceId": str(order["id"]),
        "name": order.get("name"),
        "email": order.get("email"),
        "test": bool(order.get("test")),
        "currencyCode": cur,
        "createdAt": _gql_time(order.get("created_at")),
        "updatedAt": _gql_time(order.get("updated_at")),
        "cancelledAt": _gql_time(order.get("cancelled_at")),
        "cancelReason": (order.get("cancel_reason") or "").upper() or None,
        "closedAt": _gql_time(order.get("closed_at")),
        "displayFinancialStatus": (order.get("financial_status") or "").upper() or None,
        "displayFulfillmentStatus": fulfillment,
        "paymentGatewayNames": list(order.get("payment_gateway_names") or []),
        "subtotalPriceSet": bag(order.get("subtotal_price")),
        "totalPriceSet": bag(order["total_price"]),
        "totalTaxSet": bag(order.get("total_tax") or "0"),
        "totalDiscountsSet": bag(order.get("total_discounts") or "0"),
        "totalShippingPriceSet": bag(shipping),
        "totalRefundedSet": bag(_refunded(order.get("refunds") or [])),
        "customer": None
        if not customer
        else {"firstName": customer.get("first_name"), "lastName": customer.get("last_name")},
        "shippingAddress": None
        if not addr
        else {
            "name": addr.get("name"),
            "firstName": addr.get("first_name"),
            "lastName": addr.get("last_name"),
            "company": addr.get("company"),
            "address1": addr.get("address1"),
            "address2": addr.get("address2"),
            "city": addr.get("city"),
            "province": addr.get("province"),
            "provinceCode": addr.get("province_code"),
            "zip": addr.get("zip"),
            "countryCodeV2": addr.get("country_code"),
            "phone": addr.get("phone"),
        },
        "lineItems": {"nodes": lines, "pageInfo": {"hasNextPage": False, "endCursor": None}},
    }


def _refunded(refunds: list[dict[str, Any]]) -> Decimal:
    """The money the REST refunds gave back (their refund transactions)."""
    return sum(
        (
            Decimal(str(t["amount"]))
            for r in refunds
            for t in r.get("transactions") or []
            if t.get("kind") == "refund"
        ),
        Decimal(0),
    )


def graphql_refund(refund: dict[str, Any], currency: str) -> dict[str, Any]:
    """A REST refund as the GraphQL ``Refund`` the connector's ``OrderRefunds`` selects."""

    def bag(amount: Any) -> dict[str, Any]:
        return {"shopMoney": {"amount": _gql_amount(amount), "currencyCode": currency}}

    def total(set_: Any, plain: Any) -> Any:
        return ((set_ or {}).get("shop_money") or {}).get("amount", plain)

    transactions = refund.get("transactions") or []
    return {
        "id": refund.get("admin_graphql_api_id") or f"gid://shopify/Refund/{refund['id']}",
        "legacyResourceId": str(refund["id"]),
        "createdAt": _gql_time(refund.get("created_at")),
        "totalRefundedSet": bag(_refunded([refund])),
        "refundLineItems": {
            "nodes": [
                {
                    "lineItem": {"id": f"gid://shopify/LineItem/{item['line_item_id']}"},
                    "quantity": item["quantity"],
                    "restockType": str(item.get("restock_type") or "no_restock").upper(),
                    "subtotalSet": bag(total(item.get("subtotal_set"), item.get("subtotal"))),
                    "totalTaxSet": bag(total(item.get("total_tax_set"), item.get("total_tax"))),
                }
                for item in refund.get("refund_line_items") or []
            ],
            "pageInfo": {"hasNextPage": False, "endCursor": None},
        },
        "refundShippingLines": {
            "nodes": [
                {
                    "subtotalAmountSet": bag(total(line.get("subtotal_amount_set"), 0)),
                    "taxAmountSet": bag(total(line.get("tax_amount_set"), 0)),
                }
                for line in refund.get("refund_shipping_lines") or []
            ]
        },
        "transactions": {
            "nodes": [
                {
                    "kind": str(t.get("kind") or "").upper(),
                    "status": str(t.get("status") or "").upper(),
                    "amountSet": bag(t["amount"]),
                }
                for t in transactions
            ]
        },
    }


def _cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


def _uncursor(value: str) -> list[Any]:
    parsed = json.loads(base64.urlsafe_b64decode(value.encode()))
    if not isinstance(parsed, list):
        raise ValueError("bad cursor")
    return parsed


def _gql_error(message: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, **extra}}


class _GraphQLFailure(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


class _Orders(dict[str, dict[str, Any]]):
    """The shop's orders (external id → REST order JSON) with an index by ``(updated_at, id)``,
    so that a page of ``OrdersUpdatedSince`` costs O(log N + page) rather than a sort of every
    order. Storing an order indexes it; an order whose ``updated_at`` changes in place must be
    passed to ``moved`` (``_bump`` and ``_cancel`` do). A page that meets an entry whose stamp
    no longer matches its order rebuilds the index first (self-healing, not a fast path)."""

    def __init__(self) -> None:
        super().__init__()
        self._index: list[tuple[dt.datetime, int]] = []  # sorted
        self._keys: dict[str, tuple[dt.datetime, int]] = {}

    @staticmethod
    def _key(order: dict[str, Any]) -> tuple[dt.datetime, int]:
        return _parse_time(order["updated_at"]), int(order["id"])

    def _unindex(self, external_id: str) -> None:
        key = self._keys.pop(external_id, None)
        if key is not None:
            at = bisect.bisect_left(self._index, key)
            if at < len(self._index) and self._index[at] == key:
                del self._index[at]

    def __setitem__(self, external_id: str, order: dict[str, Any]) -> None:
        super().__setitem__(external_id, order)
        self.moved(order)

    def __delitem__(self, external_id: str) -> None:
        super().__delitem__(external_id)
        self._unindex(external_id)

    def moved(self, order: dict[str, Any]) -> None:
        """Re-index an order whose ``updated_at`` was set."""
        external_id = str(order["id"])
        self._unindex(external_id)
        key = self._key(order)
        bisect.insort(self._index, key)
        self._keys[external_id] = key

    def _rebuild(self) -> None:
        self._keys = {eid: self._key(o) for eid, o in self.items()}
        self._index = sorted(self._keys.values())

    def updated_between(
        self,
        after: tuple[dt.datetime, int] | None,
        lower: dt.datetime | None,
        upper: dt.datetime | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` orders in ``(updated_at, id)`` order, after the key ``after``, with
        ``lower <= updated_at < upper``."""
        for _attempt in range(2):
            start = 0 if after is None else bisect.bisect_right(self._index, after)
            if lower is not None:
                start = max(start, bisect.bisect_left(self._index, (lower, -1)))
            page: list[dict[str, Any]] = []
            consistent = True
            for key in self._index[start : start + limit]:
                if upper is not None and key[0] >= upper:
                    break
                order = self.get(str(key[1]))
                if order is None or self._key(order) != key:  # changed behind the index's back
                    consistent = False
                    break
                page.append(order)
            if consistent:
                return page
            self._rebuild()
        return page


class ShopifySimulator:
    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        seed: int = 0,
        skus: Iterable[str] = DEFAULT_SKUS,
        shop: str = SANDBOX_SHOP,
        access_token: str = SANDBOX_ACCESS_TOKEN,
        bucket_max: float = 1000.0,
        restore_rate: float = 50.0,
        second_location_skus: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.knobs = knobs or Knobs(seed=seed)
        self.rng = random.Random(seed)
        self.skus = tuple(skus)
        self.shop = shop
        self.access_token = access_token
        self.bucket_max = bucket_max
        self.restore_rate = restore_rate
        self._clock = clock
        self._now = now
        self._lock = threading.RLock()
        self._available = bucket_max
        self._at = clock()
        self._seq = 0
        #: external id (REST id as a string) → REST order JSON
        self.orders = _Orders()
        #: order id → its fulfillment orders, one per location its line items are assigned to
        self._fulfillment_orders: dict[str, list[dict[str, Any]]] = {}
        self.second_location_skus = frozenset(second_location_skus)
        #: the next N fulfillmentCreate answers are dropped after the fulfillment was made
        #: ("apply then drop": the client sees a broken connection)
        self.drop_fulfillment_answers = 0
        self.prices = {sku: Decimal("14.90") + 5 * i for i, sku in enumerate(self.skus)}
        self.inventory_items = {
            sku: f"gid://shopify/InventoryItem/{49148385000 + 17 * i}"
            for i, sku in enumerate(self.skus)
        }
        self.inventory: dict[str, int] = dict.fromkeys(self.skus, 100)  # sku → available
        #: inventorySetQuantities calls answered (applied or refused), counted from outside
        self.stock_calls = 0
        #: ledgers of what the connector pushed
        self.fulfillments: list[dict[str, Any]] = []
        self.inventory_sets: dict[str, dict[str, Any]] = {}  # idempotency key → the set
        self.cancels: list[dict[str, Any]] = []
        self.fulfillment_events: list[dict[str, Any]] = []
        #: order id → its transactions (the GraphQL ``OrderTransaction`` shape)
        self.transactions: dict[str, list[dict[str, Any]]] = {}
        #: idempotency key → the capture it made (``OrderCapture``)
        self.captures: dict[str, dict[str, Any]] = {}
        #: order edits made in the admin (``edit_add_line``)
        self.edits: list[dict[str, Any]] = []
        #: seconds an ``OrderCapture`` answer waits after the capture was applied
        self.capture_reply_delay_s = 0.0
        self._next_transaction = 7_300_000_000
        #: (operation, HTTP status); a THROTTLED answer is logged as 429, its REST equivalent
        #: (on the wire it is a 200 with errors[].extensions.code = THROTTLED)
        self.request_log: list[tuple[str, int]] = []
        #: downloads of export files: (file name, the request's ``Range`` header or None);
        #: the file is served as Cloud Storage serves it, a range as 206 with its part only
        self.bulk_downloads: list[tuple[str, str | None]] = []
        #: bulk exports: GID → {status, search, url, counts, and when it completed (this
        #: simulator's clock: a benchmark's, not an answer's)}; their JSONL files live in
        #: a temporary directory of this simulator and are served at ``/_bulk/{n}.jsonl``
        self.bulk_operations: dict[str, dict[str, Any]] = {}
        self._bulk_dir: tempfile.TemporaryDirectory[str] | None = None
        self._public_url = ""  # where this simulator is reached (from the last request)

    # --- the shop's side --------------------------------------------------------------------

    def add_orders(self, n: int) -> list[str]:
        with self._lock:
            now = self._now()
            ids = []
            for _ in range(n):
                order = self._new_order(now)
                self.orders[str(order["id"])] = order
                self._open_payment(order, now)
                ids.append(str(order["id"]))
            return ids

    def _open_fulfillment_orders(self, order_id: int, line_items: list[dict[str, Any]]) -> None:
        """One OPEN fulfillment order per location the order's lines ship from."""
        by_location: dict[str, list[dict[str, Any]]] = {}
        for item in line_items:
            where = LOCATION_2_GID if item["sku"] in self.second_location_skus else LOCATION_GID
            by_location.setdefault(where, []).append(item)
        self._fulfillment_orders[str(order_id)] = [
            {
                "id": f"gid://shopify/FulfillmentOrder/{order_id + n}",
                "status": "OPEN",
                "assignedLocation": {"location": {"id": where}},
                "lineItems": {
                    "nodes": [
                        {
                            "id": f"gid://shopify/FulfillmentOrderLineItem/{item['id'] * 10 + 1}",
                            "remainingQuantity": item["quantity"],
                            "totalQuantity": item["quantity"],
                            "lineItem": {"id": item["admin_graphql_api_id"]},
                        }
                        for item in items
                    ]
                },
            }
            for n, (where, items) in enumerate(sorted(by_location.items()), start=1)
        ]

    def put_order(self, order: dict[str, Any]) -> None:
        """An order made elsewhere (a test's fixture) that now exists in this shop, with the
        payment transactions its ``financial_status`` implies, made now (an authorization
        expires 7 days from now, whatever the fixture's ``created_at``)."""
        with self._lock:
            stored = json.loads(json.dumps(order))
            stored.setdefault("fulfillments", [])
            self.orders[str(order["id"])] = stored
            if str(order["id"]) not in self._fulfillment_orders:
                self._open_fulfillment_orders(int(order["id"]), stored.get("line_items") or [])
            self.transactions.pop(str(order["id"]), None)
            self._open_payment(stored, self._now())

    def capture_count(self) -> int:
        """Captures made through ``OrderCapture`` (one per idempotency key)."""
        with self._lock:
            return len(self.captures)

    def captures_for(self, external_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self.captures.values() if c["order_id"] == external_id]

    def _transaction(
        self, order: dict[str, Any], kind: str, amount: Decimal | str, *,
        parent: str | None = None, expires: dt.datetime | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        self._next_transaction += 1
        tx = {
            "id": f"gid://shopify/OrderTransaction/{self._next_transaction}",
            "kind": kind,
            "status": "SUCCESS",
            "gateway": (order.get("payment_gateway_names") or ["shopify_payments"])[0],
            "authorizationExpiresAt": expires.strftime("%Y-%m-%dT%H:%M:%SZ") if expires else None,
            "amountSet": {"presentmentMoney": {"amount": _gql_amount(amount),
                                               "currencyCode": order["currency"]}},
            "parentTransaction": {"id": parent} if parent else None,
        }  # fmt: skip
        self.transactions.setdefault(str(order["id"]), []).append(tx)
        return tx

    def _open_payment(self, order: dict[str, Any], at: dt.datetime) -> None:
        """The transactions checkout made at ``at``: a SALE when paid, an AUTHORIZATION (valid
        7 days) when authorised."""
        status = order.get("financial_status")
        if status == "authorized":
            self._transaction(order, "AUTHORIZATION", order["total_price"],
                              expires=at + AUTHORIZATION_VALID)  # fmt: skip
        elif status == "paid":
            self._transaction(order, "SALE", order["total_price"])

    def _authorization(self, external_id: str) -> dict[str, Any]:
        return next(t for t in self.transactions.get(external_id, [])
                    if t["kind"] == "AUTHORIZATION")  # fmt: skip

    def expire_authorization(self, external_id: str) -> None:
        """The order's authorization reached its expiry (checkout 8 days ago)."""
        with self._lock:
            past = self._now() - dt.timedelta(days=1)
            self._authorization(external_id)["authorizationExpiresAt"] = past.strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )

    def void_authorization(self, external_id: str) -> None:
        """The merchant voided the authorization in the admin."""
        with self._lock:
            order = self.orders[external_id]
            auth = self._authorization(external_id)
            self._transaction(order, "VOID", "0", parent=auth["id"])
            order["financial_status"] = "voided"
            self._bump(order)

    def _new_order(self, now: dt.datetime) -> dict[str, Any]:
        rng = self.rng
        self._seq += 1
        seq = self._seq
        order_id = 5_700_000_000_000 + seq * 1_009 + rng.randrange(1_000)
        cur = "USD"
        chosen = rng.sample(self.skus, k=min(len(self.skus), rng.randint(1, 3)))
        items = [(sku, rng.randint(1, 3)) for sku in chosen]
        gross = [self.prices[sku] * qty for sku, qty in items]
        discount = Decimal("10.00") if seq % 4 == 0 else Decimal(0)
        allocations = self._allocate(discount, gross)
        line_items = []
        for i, ((sku, qty), alloc) in enumerate(zip(items, allocations, strict=True)):
            line_id = order_id * 10 + i + 1
            tax = ((self.prices[sku] * qty - alloc) * TAX_RATE).quantize(CENT, ROUND_HALF_UP)
            line_items.append(self._line_item(line_id, sku, qty, tax, alloc, cur))
        tax_total = sum((Decimal(li["tax_lines"][0]["price"]) for li in line_items), Decimal(0))
        shipping = rng.choice((Decimal("0.00"), Decimal("4.90"), Decimal("9.90")))
        line_total = sum(gross, Decimal(0))
        subtotal = line_total - discount
        total = subtotal + shipping + tax_total
        financial = rng.choice(("paid", "paid", "paid", "authorized", "pending"))
        stamp = _rest_time(now)
        first, last = rng.choice((("Bob", "Norman"), ("Ada", "Lovelace"), ("Ana", "Silva")))
        address = {
            "first_name": first,
            "address1": f"Chestnut Street {seq % 200 + 1}",
            "phone": "+1(502)-459-2181",
            "city": "Louisville",
            "zip": "40202",
            "province": "Kentucky",
            "country": "United States",
            "last_name": last,
            "address2": "",
            "company": None,
            "latitude": 45.41634,
            "longitude": -75.6868,
            "name": f"{first} {last}",
            "country_code": "US",
            "province_code": "KY",
        }
        email = f"{first.lower()}.{last.lower()}.{seq}@mail.example.com"
        order: dict[str, Any] = {
            "id": order_id,
            "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "app_id": None,
            "browser_ip": "0.0.0.0",  # noqa: S104 - a payload value, not a bind address
            "buyer_accepts_marketing": False,
            "cancel_reason": None,
            "cancelled_at": None,
            "cart_token": uuid.UUID(int=rng.getrandbits(128)).hex,
            "checkout_id": order_id // 7,
            "checkout_token": uuid.UUID(int=rng.getrandbits(128)).hex,
            "client_details": {"accept_language": None, "browser_ip": "0.0.0.0"},  # noqa: S104
            "closed_at": None,
            "confirmation_number": f"X{seq:08d}",
            "confirmed": True,
            "contact_email": email,
            "created_at": stamp,
            "currency": cur,
            "current_subtotal_price": _money(subtotal),
            "current_subtotal_price_set": _set(subtotal, cur),
            "current_total_additional_fees_set": None,
            "current_total_discounts": _money(discount),
            "current_total_discounts_set": _set(discount, cur),
            "current_total_duties_set": None,
            "current_total_price": _money(total),
            "current_total_price_set": _set(total, cur),
            "current_total_tax": _money(tax_total),
            "current_total_tax_set": _set(tax_total, cur),
            "customer_locale": "en",
            "device_id": None,
            "discount_codes": [{"code": "TENOFF", "amount": "10.00", "type": "fixed_amount"}]
            if discount
            else [],
            "duties_included": False,
            "email": email,
            "estimated_taxes": False,
            "financial_status": financial,
            "fulfillment_status": None,
            "landing_site": None,
            "landing_site_ref": None,
            "location_id": None,
            "merchant_business_entity_id": "MTU0ODM4MDAwOQ",
            "merchant_of_record_app_id": None,
            "name": f"#{1000 + seq}",
            "note": None,
            "note_attributes": [],
            "number": seq,
            "order_number": 1000 + seq,
            "order_status_url": f"https://{self.shop}/orders/{order_id}/authenticate",
            "original_total_additional_fees_set": None,
            "original_total_duties_set": None,
            "payment_gateway_names": ["shopify_payments"],
            "phone": None,
            "po_number": None,
            "presentment_currency": cur,
            "processed_at": stamp,
            "reference": None,
            "referring_site": None,
            "source_identifier": None,
            "source_name": "web",
            "source_url": None,
            "subtotal_price": _money(subtotal),
            "subtotal_price_set": _set(subtotal, cur),
            "tags": "",
            "tax_exempt": False,
            "tax_lines": [
                {
                    "price": _money(tax_total),
                    "rate": 0.06,
                    "title": "State Tax",
                    "price_set": _set(tax_total, cur),
                    "channel_liable": None,
                }
            ],
            "taxes_included": False,
            "test": False,
            "token": uuid.UUID(int=rng.getrandbits(128)).hex,
            "total_cash_rounding_payment_adjustment_set": _set("0", cur),
            "total_cash_rounding_refund_adjustment_set": _set("0", cur),
            "total_discounts": _money(discount),
            "total_discounts_set": _set(discount, cur),
            "total_line_items_price": _money(line_total),
            "total_line_items_price_set": _set(line_total, cur),
            "total_outstanding": _money(total if financial != "paid" else Decimal(0)),
            "total_price": _money(total),
            "total_price_set": _set(total, cur),
            "total_shipping_price_set": _set(shipping, cur),
            "total_tax": _money(tax_total),
            "total_tax_set": _set(tax_total, cur),
            "total_tip_received": "0.00",
            "total_weight": 200 * sum(qty for _, qty in items),
            "updated_at": stamp,
            "user_id": None,
            "billing_address": dict(address),
            "customer": {
                "id": 207119551 + seq,
                "email": email,
                "created_at": stamp,
                "updated_at": stamp,
                "first_name": first,
                "last_name": last,
                "state": "disabled",
                "note": None,
                "verified_email": True,
                "tax_exempt": False,
                "currency": cur,
                "admin_graphql_api_id": f"gid://shopify/Customer/{207119551 + seq}",
            },
            "discount_applications": [
                {
                    "target_type": "line_item",
                    "type": "discount_code",
                    "value": "10.0",
                    "value_type": "fixed_amount",
                    "allocation_method": "across",
                    "target_selection": "all",
                    "code": "TENOFF",
                }
            ]
            if discount
            else [],
            "fulfillments": [],
            "line_items": line_items,
            "payment_terms": None,
            "refunds": [],
            "shipping_address": address,
            "shipping_lines": [
                {
                    "id": order_id + 3,
                    "carrier_identifier": None,
                    "code": "Standard",
                    "discounted_price": _money(shipping),
                    "discounted_price_set": _set(shipping, cur),
                    "is_removed": False,
                    "phone": None,
                    "price": _money(shipping),
                    "price_set": _set(shipping, cur),
                    "requested_fulfillment_service_id": None,
                    "source": "shopify",
                    "title": "Standard",
                    "tax_lines": [],
                    "discount_allocations": [],
                }
            ],
        }
        self._open_fulfillment_orders(order_id, line_items)
        return order

    @staticmethod
    def _allocate(discount: Decimal, gross: list[Decimal]) -> list[Decimal]:
        """Split a fixed discount across lines by value, remainder cents on the first line."""
        if not discount:
            return [Decimal(0)] * len(gross)
        base = sum(gross, Decimal(0))
        shares = [(discount * g / base).quantize(CENT, ROUND_HALF_UP) for g in gross]
        shares[0] += discount - sum(shares, Decimal(0))
        return shares

    def _line_item(
        self, line_id: int, sku: str, qty: int, tax: Decimal, alloc: Decimal, cur: str
    ) -> dict[str, Any]:
        color, size = [*sku.split("-"), "", ""][1:3]
        title = f"T-Shirt {color.title()}".strip()
        return {
            "id": line_id,
            "admin_graphql_api_id": f"gid://shopify/LineItem/{line_id}",
            "attributed_staffs": [],
            "current_quantity": qty,
            "fulfillable_quantity": qty,
            "fulfillment_service": "manual",
            "fulfillment_status": None,
            "gift_card": False,
            "grams": 200,
            "name": f"{title} - {size}",
            "price": _money(self.prices[sku]),
            "price_set": _set(self.prices[sku], cur),
            "product_exists": True,
            "product_id": 632910392,
            "properties": [],
            "quantity": qty,
            "requires_shipping": True,
            "sku": sku,
            "taxable": True,
            "title": title,
            "total_discount": "0.00",
            "total_discount_set": _set("0", cur),
            "variant_id": 39072856 + self.skus.index(sku),
            "variant_inventory_management": "shopify",
            "variant_title": size,
            "vendor": None,
            "tax_lines": [
                {
                    "channel_liable": None,
                    "price": _money(tax),
                    "price_set": _set(tax, cur),
                    "rate": 0.06,
                    "title": "State Tax",
                }
            ],
            "duties": [],
            "discount_allocations": [
                {
                    "amount": _money(alloc),
                    "amount_set": _set(alloc, cur),
                    "discount_application_index": 0,
                }
            ]
            if alloc
            else [],
        }

    def _bump(self, order: dict[str, Any]) -> None:
        # Shopify timestamps have whole seconds: make every update visibly newer
        previous = _parse_time(order["updated_at"])
        order["updated_at"] = _rest_time(max(self._now(), previous + dt.timedelta(seconds=1)))
        self.orders.moved(order)

    def touch_order(self, external_id: str, *, cancel: bool = False) -> None:
        """An update in the shop admin: a pending/authorized payment is captured, else a tag
        is added; ``cancel=True`` cancels the order as a merchant would."""
        with self._lock:
            order = self.orders[external_id]
            if cancel:
                self._settle_for_cancel(order)
                self._cancel(order, "customer")
            elif order["financial_status"] in ("pending", "authorized"):
                if order["financial_status"] == "authorized":  # captured in the admin
                    auth = self._authorization(external_id)
                    self._transaction(order, "CAPTURE", order["total_price"], parent=auth["id"])
                else:  # the buyer paid (a manual payment method)
                    self._transaction(order, "SALE", order["total_price"])
                order["financial_status"] = "paid"
                order["total_outstanding"] = "0.00"
            else:
                order["tags"] = ", ".join(t for t in (order["tags"], "touched") if t)
            self._bump(order)

    def _retotal(self, order: dict[str, Any]) -> None:
        """Totals from the line items again (after an edit), tax at the line items' own."""
        cur = order["currency"]
        gross = sum((Decimal(li["price"]) * li["quantity"] for li in order["line_items"]),
                    Decimal(0))  # fmt: skip
        discount = sum((Decimal(d["amount"]) for li in order["line_items"]
                        for d in li["discount_allocations"]), Decimal(0))  # fmt: skip
        tax = sum((Decimal(t["price"]) for li in order["line_items"] for t in li["tax_lines"]),
                  Decimal(0))  # fmt: skip
        shipping = Decimal(order["total_shipping_price_set"]["shop_money"]["amount"])
        subtotal, total = gross - discount, gross - discount + shipping + tax
        order.update(
            subtotal_price=_money(subtotal), subtotal_price_set=_set(subtotal, cur),
            total_line_items_price=_money(gross), total_line_items_price_set=_set(gross, cur),
            total_tax=_money(tax), total_tax_set=_set(tax, cur),
            total_price=_money(total), total_price_set=_set(total, cur),
            current_total_price=_money(total), current_total_price_set=_set(total, cur),
        )  # fmt: skip

    def edit_add_line(self, external_id: str, sku: str, quantity: int) -> dict[str, Any]:
        """An order edit in the admin that adds ``quantity`` of ``sku`` (the buyer pays the
        difference: a paid order stays paid, its new SALE recorded); returns the edit, as the
        ``orders/edited`` webhook's ``order_edit`` carries it."""
        with self._lock:
            order = self.orders[external_id]
            line_id = int(order["id"]) * 10 + len(order["line_items"]) + 1
            tax = (self.prices[sku] * quantity * TAX_RATE).quantize(CENT, ROUND_HALF_UP)
            item = self._line_item(line_id, sku, quantity, tax, Decimal(0), order["currency"])
            order["line_items"].append(item)
            before = Decimal(order["total_price"])
            self._retotal(order)
            # paid, and paid with part of it refunded since: the buyer pays the difference
            if order["financial_status"] in ("paid", "partially_refunded"):
                self._transaction(order, "SALE", Decimal(order["total_price"]) - before)
            self._bump(order)
            edit = {
                "id": 10_000 + line_id % 10_000, "order_id": int(order["id"]),
                "created_at": order["updated_at"], "notify_customer": False,
                "staff_note": "", "line_items": {
                    "additions": [{"id": line_id, "delta": quantity}], "removals": []},
                "discounts": {"additions": [], "removals": []},
                "shipping_lines": {"additions": [], "removals": []},
            }  # fmt: skip
            self.edits.append(edit)
            return edit

    def refund_line(
        self, external_id: str, line_index: int, quantity: int, *, restock: bool = True
    ) -> dict[str, Any]:
        """A refund in the admin of ``quantity`` units of one line (returned and restocked, or
        not), with the money going back to the buyer's card; returns the REST refund."""
        with self._lock:
            order = self.orders[external_id]
            item = order["line_items"][line_index]
            cur = order["currency"]
            subtotal, tax = _refunded_share(item, quantity)
            refund_id = int(order["id"]) * 100 + len(order["refunds"]) + 1
            parent = self._money_in(external_id)
            line = _refund_line_item(refund_id + 7, item["id"], quantity,
                                     "return" if restock else "no_restock", subtotal, tax, cur)
            refund = self._refund(order, refund_id, note="returned", restock=restock,
                                  items=[line], amount=subtotal + tax, parent=parent)
            order["refunds"].append(refund)
            item["current_quantity"] = item.get("current_quantity", item["quantity"]) - quantity
            refunded = sum((Decimal(t["amount"]) for r in order["refunds"]
                            for t in r["transactions"]), Decimal(0))  # fmt: skip
            order["financial_status"] = (
                "refunded" if refunded >= Decimal(order["total_price"]) else "partially_refunded"
            )
            self._transaction(order, "REFUND", subtotal + tax, parent=parent)
            self._bump(order)
            return refund

    def refund_delivery(
        self, refund: dict[str, Any], secret: str, webhook_id: str | None = None
    ) -> tuple[dict[str, str], bytes]:
        """The ``refunds/create`` webhook of a refund: its body is the refund."""
        return self._signed("refunds/create", refund, secret, webhook_id)

    def edit_delivery(
        self, edit: dict[str, Any], secret: str, webhook_id: str | None = None
    ) -> tuple[dict[str, str], bytes]:
        """The ``orders/edited`` webhook of an edit: its body is ``{"order_edit": …}``."""
        return self._signed("orders/edited", {"order_edit": edit}, secret, webhook_id)

    def _money_in(self, external_id: str) -> Any:
        """The id of the order's SALE or CAPTURE: what a refund goes back against."""
        return next((t["id"] for t in self.transactions.get(external_id, [])
                     if t["kind"] in ("SALE", "CAPTURE")), None)  # fmt: skip

    def _refund(
        self, order: dict[str, Any], refund_id: int, *, note: str, restock: bool,
        items: list[dict[str, Any]], amount: Decimal, parent: Any, shipping: Decimal = Decimal(0),
    ) -> dict[str, Any]:  # fmt: skip
        """One REST refund of ``items`` (``_refund_line_item``) and ``shipping``, with its
        refund transaction of ``amount`` against ``parent`` (the sale or capture)."""
        cur = order["currency"]
        return {
            "id": refund_id, "order_id": int(order["id"]),
            "created_at": _rest_time(self._now()), "note": note, "restock": restock,
            "admin_graphql_api_id": f"gid://shopify/Refund/{refund_id}",
            "refund_line_items": items,
            "transactions": [{
                "id": refund_id + 9, "order_id": int(order["id"]), "kind": "refund",
                "status": "success", "amount": _money(amount), "currency": cur,
                "parent_id": parent,
            }],
            "order_adjustments": [],
            "refund_shipping_lines": [{
                "id": refund_id + 8,
                "subtotal_amount_set": _set(shipping, cur),
                "tax_amount_set": _set(Decimal(0), cur),
            }] if shipping else [],
        }  # fmt: skip

    def _settle_for_cancel(self, order: dict[str, Any]) -> None:
        """The money side of a cancellation in the admin, as Shopify does it by default: an
        authorization not captured is voided (``voided``); money the buyer paid goes back to
        the card in one refund of every unit not refunded yet (restocked: ``cancel``) and
        the shipping (``refunded``)."""
        external_id = str(order["id"])
        if order["financial_status"] == "authorized":
            auth = self._authorization(external_id)
            self._transaction(order, "VOID", "0", parent=auth["id"])
            order["financial_status"] = "voided"
            return
        if order["financial_status"] not in ("paid", "partially_refunded"):
            return  # nothing paid (pending): nothing to give back
        cur = order["currency"]
        refunds = order.setdefault("refunds", [])
        back = sum((Decimal(t["amount"]) for r in refunds for t in r["transactions"]),
                   Decimal(0))  # fmt: skip
        left = Decimal(order["total_price"]) - back
        if left <= 0:
            return
        refund_id = int(order["id"]) * 100 + len(refunds) + 1
        items = []
        for n, item in enumerate(order["line_items"]):
            remaining = int(item.get("current_quantity", item["quantity"]))
            if remaining <= 0:
                continue
            subtotal, tax = _refunded_share(item, remaining)
            items.append(_refund_line_item(refund_id * 10 + n, item["id"], remaining, "cancel",
                                           subtotal, tax, cur))  # fmt: skip
            item["current_quantity"] = 0
        shipping = Decimal(order["total_shipping_price_set"]["shop_money"]["amount"])
        parent = self._money_in(external_id)
        refunds.append(self._refund(order, refund_id, note="cancelled", restock=True, items=items,
                                    amount=left, parent=parent, shipping=shipping))  # fmt: skip
        order["financial_status"] = "refunded"
        self._transaction(order, "REFUND", left, parent=parent)

    def _cancel(self, order: dict[str, Any], reason: str) -> None:
        stamp = _rest_time(max(self._now(), _parse_time(order["updated_at"])))
        order["cancelled_at"] = order["closed_at"] = stamp
        order["cancel_reason"] = reason
        for fo in self._fulfillment_orders.get(str(order["id"]), []):
            fo["status"] = "CLOSED"

    def webhook_delivery(
        self, external_id: str, topic: str, secret: str, webhook_id: str | None = None
    ) -> tuple[dict[str, str], bytes]:
        """The headers and raw body Shopify would POST for this order and topic."""
        if topic not in ORDER_TOPICS or topic == "orders/edited":
            raise ValueError(f"unsupported topic {topic!r}")
        with self._lock:
            order = json.loads(json.dumps(self.orders[external_id]))
        return self._signed(topic, order, secret, webhook_id)

    def _signed(
        self, topic: str, payload: dict[str, Any], secret: str, webhook_id: str | None
    ) -> tuple[dict[str, str], bytes]:
        with self._lock:
            body = json.dumps(payload, separators=(",", ":")).encode()
            event_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            webhook_id = webhook_id or str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        now = self._now().astimezone(dt.UTC)
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
            "X-Shopify-Shop-Domain": self.shop,
            "X-Shopify-Webhook-Id": webhook_id,
            # nanoseconds, as Shopify sends them
            "X-Shopify-Triggered-At": now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z",
            "X-Shopify-API-Version": API_VERSION,
            "X-Shopify-Event-Id": event_id,
        }
        return headers, body

    # --- the cost bucket ----------------------------------------------------------------------

    def add_listings(self, skus: Iterable[str], quantity: int = 0) -> None:
        """More product variants (one inventory item each) at the shop's location."""
        with self._lock:
            for sku in skus:
                if sku not in self.inventory_items:
                    number = 49148385000 + 17 * len(self.inventory_items)
                    self.inventory_items[sku] = f"gid://shopify/InventoryItem/{number}"
                    self.inventory[sku] = quantity

    def edit_in_admin(self, sku: str, quantity: int) -> None:
        """A merchant sets the quantity in Shopify's admin (not through us)."""
        with self._lock:
            self.inventory[sku] = quantity

    def spend(self, points: float) -> None:
        """Points used by someone else (another app on this shop): the next queries may be
        THROTTLED, as they are when a client shares its shop's bucket."""
        with self._lock:
            self._refill()
            self._available = max(0.0, self._available - points)

    def _throttle_status(self) -> dict[str, Any]:
        return {
            "maximumAvailable": float(self.bucket_max),
            "currentlyAvailable": max(0, int(self._available)),
            "restoreRate": float(self.restore_rate),
        }

    def _refill(self) -> None:
        now = self._clock()
        if now > self._at:
            self._available = min(
                self.bucket_max, self._available + (now - self._at) * self.restore_rate
            )
            self._at = now

    # --- the API ------------------------------------------------------------------------------

    def build_router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/admin/api/{version}/graphql.json")
        async def graphql(version: str, request: Request) -> Response:
            operation = "graphql"
            disturbed = await self.knobs.disturb({"errors": "Exceeded 2 calls per second"})
            if disturbed is not None:
                self.request_log.append((operation, disturbed.status_code))
                return disturbed
            if request.headers.get("X-Shopify-Access-Token") != self.access_token:
                self.request_log.append((operation, 401))
                return JSONResponse(
                    {
                        "errors": "[API] Invalid API key or access token (unrecognized login or "
                        "wrong password)"
                    },
                    status_code=401,
                )
            try:
                body = json.loads(await request.body())
                query = body["query"]
                variables = body.get("variables") or {}
                if not isinstance(query, str) or not isinstance(variables, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.request_log.append((operation, 400))
                return JSONResponse(
                    {"errors": {"query": "Required parameter missing or invalid"}},
                    status_code=400,
                )
            match = _OP_NAME.search(query)
            operation = body.get("operationName") or (match.group(1) if match else "anonymous")
            self._public_url = str(request.url).split("/admin/api/", 1)[0]
            status, payload = self.execute(operation, query, variables)
            self.request_log.append((operation, status))
            if operation == "FulfillmentCreate" and self.drop_fulfillment_answers > 0:
                with self._lock:
                    self.drop_fulfillment_answers -= 1
                return DroppedConnection(json.dumps(payload).encode())
            if operation == "OrderCapture" and self.capture_reply_delay_s:
                await asyncio.sleep(self.capture_reply_delay_s)  # applied, answer on its way
            return JSONResponse(
                payload, headers={"X-Shopify-API-Version": API_VERSION, "X-Request-Id": "sim"}
            )

        @router.get("/_bulk/{name}")
        async def bulk_result(name: str, request: Request) -> Response:
            path = self._bulk_file(name)
            if path is None:
                return JSONResponse({"errors": "Not Found"}, status_code=404)
            self.bulk_downloads.append((name, request.headers.get("range")))
            return FileResponse(path, media_type="application/jsonl")

        return router

    def execute(
        self, operation: str, query: str, variables: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """One GraphQL operation → (status for the request log, response body)."""
        handler = _HANDLERS.get(operation)
        with self._lock:
            self._refill()
            if handler is None:
                error = _gql_error(f"Unknown operation {operation}", "GRAPHQL_VALIDATION_FAILED")
                return 200, {"errors": [error]}
            try:
                requested = handler.requested(variables)
            except (KeyError, ValueError, TypeError):
                error = _gql_error(
                    f"Variables of {operation} are missing or invalid", "GRAPHQL_VALIDATION_FAILED"
                )
                return 200, {"errors": [error]}
            if requested > self.bucket_max:
                error = _gql_error(
                    f"Query cost is {requested}, which exceeds the single query max cost limit "
                    f"({int(self.bucket_max)}).",
                    "MAX_COST_EXCEEDED",
                    cost=requested,
                    maxCost=int(self.bucket_max),
                )
                return 200, {"errors": [error]}
            if requested > self._available:
                error = _gql_error("Throttled", "THROTTLED")
                error["extensions"]["documentation"] = "https://shopify.dev/api/usage/limits"
                cost = {
                    "requestedQueryCost": requested,
                    "actualQueryCost": None,
                    "throttleStatus": self._throttle_status(),
                }
                return 429, {"errors": [error], "extensions": {"cost": cost}}
            errors: list[dict[str, Any]] | None = None
            try:
                data, actual = handler.run(self, query, variables)
            except _GraphQLFailure as failure:
                data, actual, errors = None, 1, [failure.error]
            except (KeyError, ValueError, TypeError):
                error = _gql_error(f"Invalid input for {operation}", "GRAPHQL_VALIDATION_FAILED")
                data, actual, errors = None, 1, [error]
            self._available -= actual
            payload: dict[str, Any] = {"data": data} if errors is None else {"errors": errors}
            payload["extensions"] = {
                "cost": {
                    "requestedQueryCost": requested,
                    "actualQueryCost": actual,
                    "throttleStatus": self._throttle_status(),
                }
            }
            return 200, payload

    # --- operations (called under the lock) ---------------------------------------------------

    def _order_node(self, order: dict[str, Any], first: int, after: str | None) -> dict[str, Any]:
        node = graphql_order(order)
        node["lineItems"] = self._slice(node["lineItems"]["nodes"], first, after)
        return node

    @staticmethod
    def _slice(items: list[dict[str, Any]], first: int, after: str | None) -> dict[str, Any]:
        start = int(_uncursor(after)[0]) if after else 0
        page = items[start : start + first]
        end = start + len(page)
        return {
            "nodes": page,
            "pageInfo": {
                "hasNextPage": end < len(items),
                "endCursor": _cursor(end) if page else None,
            },
        }

    def _orders_updated_since(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        first = int(variables["first"])
        lower, upper = _time_bounds(str(variables.get("query") or ""))
        after = variables.get("after")
        key = None
        if after:
            stamp, last_id = _uncursor(after)
            key = (_parse_time(stamp), int(last_id))
        # one more than the page, to know whether there is a next one
        rows = self.orders.updated_between(key, lower, upper, first + 1)
        page = rows[:first]
        nodes = [
            {"id": o["admin_graphql_api_id"], "updatedAt": _gql_time(o["updated_at"])}
            for o in page
        ]
        last = page[-1] if page else None
        end = _cursor(_parse_time(last["updated_at"]).isoformat(), last["id"]) if last else None
        data = {
            "orders": {
                "pageInfo": {"hasNextPage": len(rows) > first, "endCursor": end},
                "nodes": nodes,
            }
        }
        return data, 2 + len(nodes)

    # --- bulk exports (https://shopify.dev/docs/api/usage/bulk-operations/queries) -----------

    def _bulk_run_query(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """Only an export of ``orders`` with their ``lineItems`` (what the connector asks);
        one at a time per shop. It runs as it is asked about: CREATED, RUNNING, COMPLETED."""
        document = str(variables["query"])
        search = _BULK_SEARCH.search(document)
        if "orders(" not in document or "lineItems" not in document:
            raise ValueError("only orders with their line items are exported here")
        if any(op["status"] in ("CREATED", "RUNNING") for op in self.bulk_operations.values()):
            error = {"code": "OPERATION_IN_PROGRESS", "field": None,
                     "message": "A bulk query operation for this app and shop is already "
                                "in progress"}  # fmt: skip
            return {"bulkOperationRunQuery": {"bulkOperation": None, "userErrors": [error]}}, 10
        gid = f"gid://shopify/BulkOperation/{720918 + len(self.bulk_operations)}"
        self.bulk_operations[gid] = {
            "id": gid, "status": "CREATED", "errorCode": None, "objectCount": "0",
            "rootObjectCount": "0", "fileSize": None, "url": None,
            "search": search.group(1).replace('\\"', '"') if search else "",
        }  # fmt: skip
        operation = {"id": gid, "status": "CREATED"}
        return {"bulkOperationRunQuery": {"bulkOperation": operation, "userErrors": []}}, 10

    def _bulk_operation(self, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        op = self.bulk_operations.get(str(variables["id"]))
        if op is None:
            return {"node": None}, 1
        if op["status"] == "CREATED":
            op["status"] = "RUNNING"
        elif op["status"] == "RUNNING":
            self._bulk_complete(op)
        return {"node": {k: v for k, v in op.items() if k != "search" and k[0] != "_"}}, 1

    def _bulk_complete(self, op: dict[str, Any]) -> None:
        """Write the result: each order's line (no line items), then its line items, each
        with ``__parentId`` (grouped, as ``groupObjects: true`` asks)."""
        lower, upper = _time_bounds(op["search"])
        if self._bulk_dir is None:
            self._bulk_dir = tempfile.TemporaryDirectory(prefix="shopify-bulk-")
        number = op["id"].rsplit("/", 1)[-1]
        path = Path(self._bulk_dir.name) / f"{number}.jsonl"
        roots = objects = 0
        after = None
        with path.open("w") as out:
            while True:
                page = self.orders.updated_between(after, lower, upper, 500)
                for order in page:
                    node = graphql_order(order)
                    lines = node.pop("lineItems")["nodes"]
                    out.write(json.dumps(node, separators=(",", ":")) + "\n")
                    for line in lines:
                        child = {**line, "__parentId": node["id"]}
                        out.write(json.dumps(child, separators=(",", ":")) + "\n")
                    roots, objects = roots + 1, objects + 1 + len(lines)
                if len(page) < 500:
                    break
                last = page[-1]
                after = (_parse_time(last["updated_at"]), int(last["id"]))
        op.update(status="COMPLETED", rootObjectCount=str(roots), objectCount=str(objects),
                  fileSize=str(path.stat().st_size) if roots else None,
                  url=f"{self._public_url}/_bulk/{number}.jsonl" if roots else None,
                  _completed_at=self._clock())  # fmt: skip

    def _bulk_file(self, name: str) -> Path | None:
        if self._bulk_dir is None or not re.fullmatch(r"[0-9]+\.jsonl", name):
            return None
        path = Path(self._bulk_dir.name) / name
        return path if path.exists() else None

    def _orders_by_ids(self, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        first = int(variables["lineItemsFirst"])
        nodes: list[dict[str, Any] | None] = []
        actual = 0
        for gid in variables["ids"]:
            order = self.orders.get(str(gid).rsplit("/", 1)[-1])
            nodes.append(None if order is None else self._order_node(order, first, None))
            if order is not None:
                actual += ORDER_BASE + 2 + LINE_COST * min(first, len(order["line_items"]))
        return {"nodes": nodes}, max(1, actual)

    def _order(self, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        order = self._lookup(variables["id"])
        first = int(variables["lineItemsFirst"])
        if order is None:
            return {"order": None}, 1
        lines = min(first, len(order["line_items"]))
        return {"order": self._order_node(order, first, None)}, ORDER_BASE + 2 + LINE_COST * lines

    def _order_refunds(self, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The first ``refundsFirst`` refunds (Shopify lists them unpaginated), each with up to
        ``refundLinesFirst`` line items."""
        order = self._lookup(variables["id"])
        if order is None:
            return {"order": None}, 1
        first, lines_first = int(variables["refundsFirst"]), int(variables["refundLinesFirst"])
        refunds = [graphql_refund(r, order["currency"]) for r in order["refunds"][:first]]
        for refund in refunds:
            refund["refundLineItems"] = self._slice(
                refund["refundLineItems"]["nodes"], lines_first, None
            )
        lines = sum(len(r["refundLineItems"]["nodes"]) for r in refunds)
        node = {"id": order["admin_graphql_api_id"], "refunds": refunds}
        return {"order": node}, 1 + REFUND_COST * len(refunds) + REFUND_LINE_COST * lines

    def _order_line_items(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        order = self._lookup(variables["id"])
        if order is None:
            return {"order": None}, 1
        items = graphql_order(order)["lineItems"]["nodes"]
        conn = self._slice(items, int(variables["first"]), variables.get("after"))
        return {"order": {"lineItems": conn}}, 3 + LINE_COST * len(conn["nodes"])

    def _fulfillment_state(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        order = self._lookup(variables["id"])
        if order is None:
            return {"order": None}, 1
        fos = self._fulfillment_orders.get(str(order["id"]), [])
        fulfillments = [
            {
                "id": f["id"],
                "status": "SUCCESS",
                "displayStatus": f.get("display_status") or "CONFIRMED",
                "trackingInfo": [{"number": f["tracking_number"], "company": f["company"]}],
            }
            for f in self.fulfillments
            if f["order_id"] == str(order["id"])
        ]
        node = {
            "id": order["admin_graphql_api_id"],
            "cancelledAt": _gql_time(order["cancelled_at"]),
            "fulfillmentOrders": {"nodes": json.loads(json.dumps(fos))},
            "fulfillments": fulfillments,
        }
        return {"order": node}, 4 + 2 * len(fulfillments)

    def _fulfillment_create(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """One fulfillment of fulfillment orders of one location (Shopify refuses a request
        that mixes locations), of all their remaining line items or of the ones given."""
        spec = variables["fulfillment"]
        tracking = spec.get("trackingInfo") or {}
        targets: list[tuple[str, dict[str, Any], dict[str, int] | None]] = []
        for group in spec.get("lineItemsByFulfillmentOrder") or []:
            fo_gid = group.get("fulfillmentOrderId")
            found = [
                (oid, fo)
                for oid, fos in self._fulfillment_orders.items()
                for fo in fos
                if fo["id"] == fo_gid
            ]
            if not found:
                return _user_errors(
                    "fulfillmentCreate", ["fulfillment"], "Fulfillment order does not exist."
                )
            oid, fo = found[0]
            if fo["status"] not in ("OPEN", "IN_PROGRESS"):
                number = fo_gid.rsplit("/", 1)[-1]
                return _user_errors(
                    "fulfillmentCreate",
                    ["fulfillment"],
                    f"Fulfillment order {number} has an unfulfillable status= closed.",
                )
            wanted = group.get("fulfillmentOrderLineItems")
            quantities = None
            if wanted:
                quantities = {str(i["id"]): int(i["quantity"]) for i in wanted}
                remaining = {n["id"]: n["remainingQuantity"] for n in fo["lineItems"]["nodes"]}
                for line_gid, qty in quantities.items():
                    if line_gid not in remaining or not 0 < qty <= remaining[line_gid]:
                        return _user_errors(
                            "fulfillmentCreate",
                            ["fulfillment", "lineItemsByFulfillmentOrder"],
                            "Invalid fulfillment order line item quantity requested.",
                        )
            targets.append((oid, fo, quantities))
        if not targets:
            return _user_errors(
                "fulfillmentCreate",
                ["fulfillment"],
                "Line items by fulfillment order can't be blank.",
            )
        locations = {fo["assignedLocation"]["location"]["id"] for _, fo, _ in targets}
        if len(locations) > 1:
            return _user_errors(
                "fulfillmentCreate",
                ["fulfillment"],
                "All fulfillment orders must be assigned to a single location.",
            )
        fulfillment_id = f"gid://shopify/Fulfillment/{255858046 + len(self.fulfillments) + 1}"
        lines: list[dict[str, Any]] = []
        for _, fo, quantities in targets:
            for node in fo["lineItems"]["nodes"]:
                take = node["remainingQuantity"] if quantities is None else quantities.get(
                    node["id"], 0
                )
                if take:
                    node["remainingQuantity"] -= take
                    lines.append({"line_item": node["lineItem"]["id"], "quantity": take})
            if all(n["remainingQuantity"] == 0 for n in fo["lineItems"]["nodes"]):
                fo["status"] = "CLOSED"
            else:
                fo["status"] = "IN_PROGRESS"
        oid = targets[0][0]
        order = self.orders[oid]
        done = all(fo["status"] == "CLOSED" for fo in self._fulfillment_orders[oid])
        order["fulfillment_status"] = "fulfilled" if done else "partial"
        order["fulfillments"].append(
            {
                "id": int(fulfillment_id.rsplit("/", 1)[-1]),
                "admin_graphql_api_id": fulfillment_id,
                "status": "success",
                "location_id": int(next(iter(locations)).rsplit("/", 1)[-1]),
                "tracking_company": tracking.get("company"),
                "tracking_number": tracking.get("number"),
                "tracking_numbers": [tracking.get("number")],
            }
        )
        self._bump(order)
        self.fulfillments.append(
            {
                "id": fulfillment_id,
                "order_id": oid,
                "fulfillment_order_ids": [fo["id"] for _, fo, _ in targets],
                "location_id": next(iter(locations)),
                "line_items": lines,
                "tracking_number": tracking.get("number"),
                "company": tracking.get("company"),
                "notify_customer": bool(spec.get("notifyCustomer")),
            }
        )
        info = [{"number": tracking.get("number"), "company": tracking.get("company"), "url": None}]
        payload = {
            "fulfillment": {"id": fulfillment_id, "status": "SUCCESS", "trackingInfo": info},
            "userErrors": [],
        }
        return {"fulfillmentCreate": payload}, MUTATION_COST

    def _fulfillment_event_create(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """A tracking event on a fulfillment (``DELIVERED``: Shopify shows it delivered)."""
        spec = variables["fulfillmentEvent"]
        found = [f for f in self.fulfillments if f["id"] == spec.get("fulfillmentId")]
        if not found:
            return _user_errors(
                "fulfillmentEventCreate", ["fulfillmentEvent", "fulfillmentId"],
                "Fulfillment does not exist.",
            )  # fmt: skip
        status = str(spec.get("status") or "")
        event_id = f"gid://shopify/FulfillmentEvent/{944956391 + len(self.fulfillment_events)}"
        self.fulfillment_events.append({"id": event_id, "fulfillment_id": found[0]["id"],
                                        "status": status,
                                        "happened_at": spec.get("happenedAt")})  # fmt: skip
        found[0]["display_status"] = status
        payload = {"fulfillmentEvent": {"id": event_id, "status": status}, "userErrors": []}
        return {"fulfillmentEventCreate": payload}, MUTATION_COST

    def _order_cancel(self, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        order = self._lookup(variables["orderId"])
        if order is None:
            return _user_errors(
                "orderCancel",
                ["orderId"],
                "Order does not exist",
                code="NOT_FOUND",
                key="orderCancelUserErrors",
            )
        if order["cancelled_at"]:
            return _user_errors(
                "orderCancel",
                ["orderId"],
                "Cannot cancel a cancelled order.",
                code="INVALID",
                key="orderCancelUserErrors",
            )
        self._cancel(order, str(variables["reason"]).lower())
        self._bump(order)
        job = f"gid://shopify/Job/{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"
        self.cancels.append(
            {
                "order_id": str(order["id"]),
                "reason": variables["reason"],
                "restock": variables["restock"],
                "refund_method": variables.get("refundMethod"),
                "job": job,
            }
        )
        payload = {"job": {"id": job, "done": False}, "orderCancelUserErrors": []}
        return {"orderCancel": payload}, MUTATION_COST

    def _product_variants(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        skus = sorted(self.inventory_items)
        first = int(variables["first"])
        start = int(_uncursor(variables["after"])[0]) if variables.get("after") else 0
        page = skus[start : start + first]
        nodes = [
            {"sku": sku, "inventoryItem": {"id": self.inventory_items[sku],
                                           "inventoryLevel": self._level(sku, variables)}}
            for sku in page
        ]  # fmt: skip
        more = start + first < len(skus)
        info = {"hasNextPage": more, "endCursor": _cursor(start + first) if more else None}
        return {"productVariants": {"nodes": nodes, "pageInfo": info}}, 2 + 4 * len(nodes)

    def _level(self, sku: str, variables: dict[str, Any]) -> dict[str, Any] | None:
        if variables.get("location") != LOCATION_GID:
            return None
        return {"quantities": [{"name": "available", "quantity": self.inventory[sku]}]}

    def _inventory_levels(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        by_item = {gid: sku for sku, gid in self.inventory_items.items()}
        nodes: list[dict[str, Any] | None] = []
        for gid in variables["ids"]:
            sku = by_item.get(gid)
            nodes.append(
                None if sku is None
                else {"id": gid, "inventoryLevel": self._level(sku, variables)}
            )  # fmt: skip
        return {"nodes": nodes}, 1 + 3 * len(nodes)

    def _locations(self, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        nodes = [{"id": LOCATION_GID, "name": "Shop location"}]
        if self.second_location_skus:  # it keeps some SKUs at a second location
            nodes.append({"id": LOCATION_2_GID, "name": "Warehouse East"})
        return {"locations": {"nodes": nodes[: int(variables["first"])]}}, 3

    def _inventory_set_quantities(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        self.stock_calls += 1
        key = variables.get("idempotencyKey")
        if "@idempotent" not in query or not key:
            raise _GraphQLFailure(
                _gql_error(
                    "The @idempotent directive is required for this mutation but was not provided.",
                    "BAD_REQUEST",
                )
            )
        spec = variables["input"]
        quantities = spec.get("quantities") or []
        if len(quantities) > 250:
            raise _GraphQLFailure(
                _gql_error(
                    "The input array size of 251 is greater than the maximum allowed of 250.",
                    "MAX_INPUT_SIZE_EXCEEDED",
                )
            )
        if any("changeFromQuantity" not in qty for qty in quantities):
            raise _GraphQLFailure(
                _gql_error(
                    "InventoryQuantityInput must include the following argument: "
                    "changeFromQuantity.",
                    "INVALID_FIELD_ARGUMENTS",
                )
            )
        fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        earlier = self.inventory_sets.get(key)
        if earlier is not None:  # Shopify answers a repeated key with the original result
            if earlier["fingerprint"] != fingerprint:
                return _user_errors(
                    "inventorySetQuantities",
                    ["idempotencyKey"],
                    "The same idempotency key cannot be used with different operation parameters.",
                    code="IDEMPOTENCY_KEY_PARAMETER_MISMATCH",
                )
            return {"inventorySetQuantities": earlier["result"]}, MUTATION_COST
        by_item = {gid: sku for sku, gid in self.inventory_items.items()}
        changes = []
        for i, qty in enumerate(quantities):
            sku = by_item.get(qty.get("inventoryItemId"))
            if sku is None:
                return _user_errors(
                    "inventorySetQuantities",
                    ["input", "quantities", str(i), "inventoryItemId"],
                    "The specified inventory item could not be found.",
                    code="INVALID_INVENTORY_ITEM",
                )
            if qty.get("locationId") != LOCATION_GID:
                return _user_errors(
                    "inventorySetQuantities",
                    ["input", "quantities", str(i), "locationId"],
                    "The specified location could not be found.",
                    code="INVALID_LOCATION",
                )
            expected = qty.get("changeFromQuantity")
            if expected is not None and expected != self.inventory[sku]:
                return _user_errors(
                    "inventorySetQuantities",
                    ["input", "quantities", str(i), "changeFromQuantity"],
                    "The changeFromQuantity value does not match persisted value.",
                    code="CHANGE_FROM_QUANTITY_STALE",
                )
            changes.append((sku, int(qty["quantity"])))
        result_changes = []
        for sku, value in changes:
            result_changes.append(
                {
                    "name": "available",
                    "delta": value - self.inventory[sku],
                    "quantityAfterChange": value,
                }
            )
            self.inventory[sku] = value
        result = {
            "inventoryAdjustmentGroup": {
                "id": f"gid://shopify/InventoryAdjustmentGroup/{len(self.inventory_sets) + 1}",
                "reason": spec.get("reason"),
                "changes": result_changes,
            },
            "userErrors": [],
        }
        self.inventory_sets[key] = {
            "fingerprint": fingerprint,
            "quantities": dict(changes),
            "reference": spec.get("referenceDocumentUri"),
            "result": result,
        }
        return {"inventorySetQuantities": result}, MUTATION_COST

    def _order_transactions(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        order = self._lookup(variables["id"])
        if order is None:
            return {"order": None}, 1
        txs = [dict(t) for t in self.transactions.get(str(order["id"]), [])]
        node = {
            "id": order["admin_graphql_api_id"],
            "cancelledAt": _gql_time(order["cancelled_at"]),
            "displayFinancialStatus": (order.get("financial_status") or "").upper() or None,
            "transactions": txs,
        }
        return {"order": node}, 1 + 3 * len(txs)

    def _order_capture(self, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        key = variables.get("idempotencyKey")
        if "@idempotent" not in query or not key:
            raise _GraphQLFailure(
                _gql_error(
                    "The @idempotent directive is required for this mutation but was not provided.",
                    "BAD_REQUEST",
                )
            )
        spec = variables["input"]
        fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        earlier = self.captures.get(key)
        if earlier is not None:
            if earlier["fingerprint"] != fingerprint:
                return _user_errors(
                    "orderCapture", ["idempotencyKey"],
                    "The same idempotency key cannot be used with different operation parameters.",
                )  # fmt: skip
            return {"orderCapture": {"transaction": earlier["transaction"], "userErrors": []}}, (
                MUTATION_COST
            )
        order = self._lookup(spec["id"])
        if order is None:
            return _user_errors("orderCapture", ["id"], "Order does not exist")
        txs = self.transactions.get(str(order["id"]), [])
        parent = next((t for t in txs if t["id"] == spec["parentTransactionId"]), None)
        if parent is None or parent["kind"] != "AUTHORIZATION":
            return _user_errors("orderCapture", ["parentTransactionId"],
                                "Parent transaction is not an authorization")  # fmt: skip
        children = [t for t in txs if (t.get("parentTransaction") or {}).get("id") == parent["id"]]
        if any(t["kind"] == "VOID" for t in children):
            return _user_errors("orderCapture", ["parentTransactionId"],
                                "The authorization has been voided")  # fmt: skip
        if any(t["kind"] == "CAPTURE" for t in children):
            return _user_errors("orderCapture", ["parentTransactionId"],
                                "The authorization has already been captured")  # fmt: skip
        expires = parent.get("authorizationExpiresAt")
        if expires and _parse_time(expires) <= self._now():
            return _user_errors("orderCapture", ["parentTransactionId"],
                                "The authorization has expired")  # fmt: skip
        amount = Decimal(str(spec["amount"]))
        held = Decimal(parent["amountSet"]["presentmentMoney"]["amount"])
        if amount <= 0 or amount > held:
            return _user_errors("orderCapture", ["amount"],
                                "Amount must be between 0 and the authorized amount")  # fmt: skip
        tx = self._transaction(order, "CAPTURE", amount, parent=parent["id"])
        order["financial_status"] = "paid"
        order["total_outstanding"] = _money(Decimal(order["total_price"]) - amount)
        self._bump(order)
        self.captures[key] = {
            "order_id": str(order["id"]), "amount": str(amount), "transaction": dict(tx),
            "fingerprint": fingerprint,
        }  # fmt: skip
        return {"orderCapture": {"transaction": dict(tx), "userErrors": []}}, MUTATION_COST

    def _shop(self, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return {"shop": {"name": "ordersync sandbox", "myshopifyDomain": self.shop}}, 1

    def _lookup(self, gid: Any) -> dict[str, Any] | None:
        return self.orders.get(str(gid).rsplit("/", 1)[-1])


def _user_errors(
    field: str,
    path: list[str],
    message: str,
    *,
    code: str | None = None,
    key: str = "userErrors",
) -> tuple[dict[str, Any], int]:
    error: dict[str, Any] = {"field": path, "message": message}
    if code is not None:
        error["code"] = code
    return {field: {key: [error]}}, MUTATION_COST


_BULK_SEARCH = re.compile(r'orders\(query:\s*"((?:[^"\\]|\\.)*)"')
_BOUND = re.compile(r"updated_at:(>=|<)'?([0-9T:\-+.Z]+)'?")


def _refunded_share(item: dict[str, Any], quantity: int) -> tuple[Decimal, Decimal]:
    """What refunding ``quantity`` units of a line gives back: its net (after its discount)
    and its tax, in the line's proportion, to the cent."""
    share = Decimal(quantity) / Decimal(item["quantity"])
    discount = sum((Decimal(d["amount"]) for d in item["discount_allocations"]), Decimal(0))
    subtotal = (Decimal(item["price"]) * item["quantity"] - discount) * share
    tax = Decimal(item["tax_lines"][0]["price"]) * share
    return subtotal.quantize(CENT, ROUND_HALF_UP), tax.quantize(CENT, ROUND_HALF_UP)


def _refund_line_item(
    item_id: int, line_item_id: Any, quantity: int, restock_type: str, subtotal: Decimal,
    tax: Decimal, currency: str,
) -> dict[str, Any]:  # fmt: skip
    """One ``refund_line_items`` entry of a REST refund."""
    return {
        "id": item_id, "line_item_id": line_item_id, "quantity": quantity,
        "restock_type": restock_type, "subtotal": float(subtotal), "total_tax": float(tax),
        "subtotal_set": _set(subtotal, currency), "total_tax_set": _set(tax, currency),
    }  # fmt: skip


def _time_bounds(search: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    lower = upper = None
    for op, value in _BOUND.findall(search):
        if op == ">=":
            lower = _parse_time(value)
        else:
            upper = _parse_time(value)
    return lower, upper


class _Handler:
    def __init__(
        self,
        requested: Callable[[dict[str, Any]], int],
        run: Callable[[ShopifySimulator, str, dict[str, Any]], tuple[Any, int]],
    ) -> None:
        self.requested = requested
        self.run = run


def _order_cost(first: Any) -> int:
    return ORDER_BASE + 2 + LINE_COST * int(first)



def _refunds_cost(v: dict[str, Any]) -> int:
    per_refund = REFUND_COST + REFUND_LINE_COST * int(v["refundLinesFirst"])
    return 1 + int(v["refundsFirst"]) * per_refund


_S = ShopifySimulator
_HANDLERS: dict[str, _Handler] = {
    "OrdersUpdatedSince": _Handler(lambda v: 2 + int(v["first"]), _S._orders_updated_since),
    "OrdersByIds": _Handler(
        lambda v: len(v["ids"]) * _order_cost(v["lineItemsFirst"]), _S._orders_by_ids
    ),
    "Order": _Handler(lambda v: _order_cost(v["lineItemsFirst"]), _S._order),
    "OrderLineItems": _Handler(lambda v: 3 + LINE_COST * int(v["first"]), _S._order_line_items),
    "OrderRefunds": _Handler(_refunds_cost, _S._order_refunds),
    "OrderFulfillmentState": _Handler(lambda v: 1 + 62 + 40, _S._fulfillment_state),
    "FulfillmentCreate": _Handler(lambda v: MUTATION_COST, _S._fulfillment_create),
    "FulfillmentEventCreate": _Handler(lambda v: MUTATION_COST, _S._fulfillment_event_create),
    "OrderCancel": _Handler(lambda v: MUTATION_COST, _S._order_cancel),
    "ProductVariants": _Handler(lambda v: 2 + 4 * int(v["first"]), _S._product_variants),
    "InventoryLevels": _Handler(lambda v: 1 + 3 * len(v["ids"]), _S._inventory_levels),
    "Locations": _Handler(lambda v: 2 + int(v["first"]), _S._locations),
    "InventorySetQuantities": _Handler(lambda v: MUTATION_COST, _S._inventory_set_quantities),
    "Shop": _Handler(lambda v: 1, _S._shop),
    "OrderTransactions": _Handler(lambda v: 1 + 50 * 3, _S._order_transactions),
    "OrderCapture": _Handler(lambda v: MUTATION_COST, _S._order_capture),
    "BulkOperationRunQuery": _Handler(lambda v: MUTATION_COST, _S._bulk_run_query),
    "BulkOperation": _Handler(lambda v: 1, _S._bulk_operation),
}
