"""A local WooCommerce shop speaking REST API v3 (``/wp-json/wc/v3``): tests, demo, benchmarks.

Orders are built in the shape of the official samples (fixtures/official/woocommerce/
order.retrieve.json): integer ``id`` next to string ``number``, money as strings except
``line_items[].price`` (a number), ``""`` for missing values, zone-less ``date_*`` in shop-local
time (UTC-3, as in the samples) next to ``date_*_gmt``.

Served (mount with ``app.include_router(sim.build_router(), prefix="/woocommerce")``):

- ``GET /wp-json/wc/v3/orders`` — ``page``/``per_page`` (≤ 100, else 400 ``rest_invalid_param``),
  ``orderby``/``order``, ``modified_after``/``modified_before``/``after``/``before`` (strict),
  ``dates_are_gmt``, ``status``; ``X-WP-Total``, ``X-WP-TotalPages`` and ``Link`` headers;
- ``GET|PUT|POST|PATCH /orders/{id}``, ``GET|POST /orders/{id}/notes``;
- ``GET /products[?sku=a,b]`` (variations only in a SKU search), ``GET /products/{id}/variations``,
  ``POST /products/batch`` (simple products), ``POST /products/{id}/variations/batch``; a ledger of
  every stock set (``stock:{sku}``), ``stock_calls`` (batches answered) and ``edit_in_admin``
  (≤ 100 items, else 413 ``rest_request_entity_too_large``; bad ids fail per item).

Auth: consumer key/secret as HTTP Basic or as ``consumer_key``/``consumer_secret`` query
parameters (both accepted by Woo over HTTPS). Core Woo has no REST rate limit; hosts and the
Store API limiter answer 429 ``rate_limit_exceeded`` with ``RateLimit-*`` headers, which is what
the fixed window here (per consumer key, from the clock) does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sandbox.knobs import Knobs, WriteDrops

__all__ = [
    "DEFAULT_SKUS",
    "SANDBOX_CONSUMER_KEY",
    "SANDBOX_CONSUMER_SECRET",
    "SANDBOX_WEBHOOK_SECRET",
    "WooCommerceSimulator",
]

SANDBOX_CONSUMER_KEY = "ck_ordersync_sandbox_00000000000000000000"
# public, fixed sandbox credentials (never valid anywhere else)
SANDBOX_CONSUMER_SECRET = "cs_ordersync_sandbox_00000000000000000000"  # noqa: S105
SANDBOX_WEBHOOK_SECRET = "ordersync-sandbox-webhook-secret"  # noqa: S105
DEFAULT_SKUS = ("SKU-RED-S", "SKU-RED-M", "SKU-BLUE-S", "SKU-BLUE-M", "SKU-MUG")
API = "/wp-json/wc/v3"
SHOP_OFFSET = dt.timedelta(hours=-3)  # shop-local time of the official samples
STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed")
BATCH_LIMIT = 100
#: the writes ordersync makes here, each of which ``drop_write_answers`` can drop
WRITE_OPERATIONS = (
    "update_order", "create_refund", "add_note", "batch_products", "batch_variations",
)  # fmt: skip
_CENT = Decimal("0.01")
_BUYERS = (("John", "Doe"), ("João", "Silva"), ("Zoë", "Müller"), ("Ama", "Mensah"))


def _money(value: Decimal) -> str:
    return str(value.quantize(_CENT, rounding=ROUND_HALF_UP))


def _wc(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def _wp_json(payload: Any) -> bytes:
    """Bytes as ``wp_json_encode`` writes them: ASCII-escaped, ``/`` escaped as ``\\/``."""
    return json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _refund_items(items: Any) -> list[tuple[str, int, Decimal, Decimal]]:
    """A refund request's ``line_items`` (v3: the order line's ``id``, ``quantity``,
    ``refund_total``, ``refund_tax`` as ``[{"id": rate, "refund_total": …}]``) as (line,
    units, net, tax); raises ValueError (or KeyError, TypeError) on anything else."""
    if not isinstance(items, list):
        raise ValueError("line_items is not a list")
    wanted = []
    for item in items:
        taxes = item.get("refund_tax") or []
        tax = sum((Decimal(str(t["refund_total"])) for t in taxes), Decimal(0))
        total = Decimal(str(item.get("refund_total") or 0))
        units = int(item["quantity"])
        if total < 0 or tax < 0:
            raise ValueError("a refund's line amounts are positive")
        wanted.append((str(item["id"]), units, total, tax))
    return wanted


def _add_meta(item: dict[str, Any], key: str, units: int, next_id: Callable[[], int]) -> None:
    """Add ``units`` to an integer meta of an order line (created at 0)."""
    for meta in item["meta_data"]:
        if meta["key"] == key:
            meta["value"] = str(int(meta["value"]) + units)
            return
    item["meta_data"].append({"id": next_id(), "key": key, "value": str(units)})


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "data": {"status": status, **extra}}, status_code=status
    )


class WooCommerceSimulator:
    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        seed: int = 0,
        skus: Sequence[str] = DEFAULT_SKUS,
        site_url: str = "https://sandbox.example.com",
        rate_limit: tuple[int, float] | None = (25, 10.0),
        clock: Callable[[], float] = time.time,
        webhook_id: int = 142,
        authorizer: Callable[[str, int, str], str] | None = None,
    ) -> None:
        """``authorizer(order_ref, amount in minor units, currency)`` → a PaymentIntent id: the
        shop's Stripe gateway (woocommerce-gateway-stripe) authorising a card at checkout. With
        it, the orders that wait ``on-hold`` are card orders authorised but not captured
        (``_stripe_intent_id``, ``_stripe_charge_captured: no``) rather than bank transfers."""
        self.knobs = knobs or Knobs(seed=seed)
        self.site_url = site_url.rstrip("/")
        self.rate_limit = rate_limit  # (requests, window seconds) per consumer key, or None
        self.webhook_id = webhook_id
        self.authorizer = authorizer
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._next_id = 1000
        self._next_note = 5000
        self._next_meta = 20000
        self._window: tuple[int, int] = (0, 0)  # (window index, requests in it)
        self.orders: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        #: order id → its refunds whole (``GET /orders/{id}/refunds``); the order lists them
        self.refunds: dict[str, list[dict[str, Any]]] = defaultdict(list)
        #: effects the connector pushed: "fulfillment:{order}", "note:{order}",
        #: "cancellation:{order}", "stock:{sku}"
        self.ledger: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.request_log: list[tuple[str, int]] = []
        #: "apply then drop": ``drop_write_answers.arm(n, "add_note", ...)`` has the next n
        #: answers of those writes (``WRITE_OPERATIONS``; all of them when none is named)
        #: dropped after the write was applied. Woo has no idempotency keys: a note or a
        #: refund sent again is made again
        self.drop_write_answers = WriteDrops(WRITE_OPERATIONS)
        self.products: dict[int, dict[str, Any]] = {}
        parent = 500
        for i, sku in enumerate(skus):
            # every other SKU is a variation of one variable product: stock goes through
            # /products/{parent}/variations/batch for those
            pid, variation = 100 + i, i % 2 == 1
            self.products[pid] = {
                "id": pid,
                "name": sku.title(),
                "type": "variation" if variation else "simple",
                "status": "publish",
                "sku": sku,
                "price": _money(Decimal(10) + Decimal(5) * i),
                "parent_id": parent if variation else 0,
                "manage_stock": True,
                "stock_quantity": 0,
                "stock_status": "outofstock",
            }
        # the variable product the variations belong to (no SKU, no stock of its own)
        self.products[parent] = {
            "id": parent, "name": "Variable product", "type": "variable", "status": "publish",
            "sku": "", "price": "0.00", "parent_id": 0, "manage_stock": False,
            "stock_quantity": None, "stock_status": "instock",
        }  # fmt: skip
        #: products/batch and variations/batch calls answered, counted from outside
        self.stock_calls = 0

    # -- state ---------------------------------------------------------------------------

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(self._clock()), dt.UTC).replace(tzinfo=None)

    def _set_date(self, order: dict[str, Any], name: str, gmt: dt.datetime | None) -> None:
        order[name] = _wc(gmt + SHOP_OFFSET) if gmt else None
        order[f"{name}_gmt"] = _wc(gmt) if gmt else None

    def add_orders(self, n: int, *, status: str | None = None) -> list[str]:
        """``n`` new orders; ``status`` forces theirs (``on-hold``: card orders authorised at
        the payment provider, when the shop has its Stripe gateway)."""
        with self._lock:
            return [self._new_order(status) for _ in range(n)]

    def cancel_order(self, external_id: str) -> None:
        """The shop cancels the order (WooCommerce → Orders → Cancelled)."""
        with self._lock:
            order = self.orders[external_id]
            order["status"] = "cancelled"
            self._set_date(order, "date_modified", self._later(order))

    def _new_order(self, forced_status: str | None = None) -> str:
        oid, now, rng = self._next_id, self._now(), self._rng
        self._next_id += 1
        sellable = [p for p in self.products.values() if p["sku"]]
        lines, subtotal, tax_total = [], Decimal(0), Decimal(0)
        for j, product in enumerate(rng.sample(sellable, k=rng.randint(1, min(3, len(sellable))))):
            qty, price = rng.randint(1, 3), Decimal(product["price"])
            total = price * qty
            tax = (total * Decimal("0.075")).quantize(_CENT, rounding=ROUND_HALF_UP)
            subtotal, tax_total = subtotal + total, tax_total + tax
            lines.append(
                {
                    "id": oid * 10 + j,
                    "name": product["name"],
                    "product_id": product["parent_id"] or product["id"],
                    "variation_id": product["id"] if product["parent_id"] else 0,
                    "quantity": qty,
                    "tax_class": "",
                    "subtotal": _money(total),
                    "subtotal_tax": _money(tax),
                    "total": _money(total),
                    "total_tax": _money(tax),
                    "taxes": [{"id": 75, "total": _money(tax), "subtotal": _money(tax)}],
                    "meta_data": [],
                    "sku": product["sku"],
                    "price": int(price)
                    if price % 1 == 0
                    else float(price),  # a JSON number, as in the samples
                }
            )
        shipping = Decimal("10.00")
        first, last = _BUYERS[oid % len(_BUYERS)]
        address = {
            "first_name": first,
            "last_name": last,
            "company": "",
            "address_1": "969 Market",
            "address_2": "",
            "city": "San Francisco",
            "state": "CA",
            "postcode": "94103",
            "country": "US",
        }
        status = rng.choices(("processing", "pending", "on-hold"), weights=(7, 2, 1))[0]
        status = forced_status or status
        total = subtotal + shipping + tax_total
        payment: dict[str, Any] = {
            "payment_method": "bacs",
            "payment_method_title": "Direct Bank Transfer",
            "transaction_id": "",
            "meta_data": [],
        }
        if status == "on-hold" and self.authorizer is not None:
            intent = self.authorizer(f"woocommerce:{oid}", int(total * 100), "usd")
            payment = {
                "payment_method": "stripe",
                "payment_method_title": "Credit Card (Stripe)",
                "transaction_id": "",
                "meta_data": [
                    {"id": self._meta_id(), "key": "_stripe_intent_id", "value": intent},
                    {"id": self._meta_id(), "key": "_stripe_charge_captured", "value": "no"},
                ],
            }
        order: dict[str, Any] = {
            "id": oid,
            "parent_id": 0,
            "number": str(oid),
            "order_key": f"wc_order_{oid:x}sim",
            "created_via": "checkout",
            "version": "9.8.0",
            "status": status,
            "currency": "USD",
            "discount_total": "0.00",
            "discount_tax": "0.00",
            "shipping_total": _money(shipping),
            "shipping_tax": "0.00",
            "cart_tax": _money(tax_total),
            "total": _money(total),
            "total_tax": _money(tax_total),
            "prices_include_tax": False,
            "customer_id": 0,
            "customer_ip_address": "",
            "customer_user_agent": "",
            "customer_note": "",
            "billing": {
                **address,
                "email": f"{first.lower()}.{oid}@example.com",
                "phone": "(555) 555-5555",
            },
            "shipping": address,
            **payment,
            "cart_hash": "",
            "line_items": lines,
            "tax_lines": [],
            "fee_lines": [],
            "shipping_lines": [
                {
                    "id": oid * 10 + 9,
                    "method_title": "Flat Rate",
                    "method_id": "flat_rate",
                    "total": _money(shipping),
                    "total_tax": "0.00",
                    "taxes": [],
                    "meta_data": [],
                }
            ],
            "coupon_lines": [],
            "refunds": [],
            "_links": {
                "self": [{"href": f"{self.site_url}{API}/orders/{oid}"}],
                "collection": [{"href": f"{self.site_url}{API}/orders"}],
            },
        }
        self._set_date(order, "date_created", now)
        self._set_date(order, "date_modified", now)
        self._set_date(order, "date_paid", now if status == "processing" else None)
        self._set_date(order, "date_completed", None)
        self.orders[str(oid)] = order
        return str(oid)

    def _meta_id(self) -> int:
        self._next_meta += 1
        return self._next_meta

    def touch_order(self, external_id: str) -> None:
        """An update in the shop: unpaid orders get paid; the modification time moves on."""
        with self._lock:
            order = self.orders[external_id]
            if order["status"] in ("pending", "on-hold"):
                order["status"] = "processing"
                self._set_date(order, "date_paid", self._now())
            self._set_date(order, "date_modified", self._later(order))

    def _later(self, order: dict[str, Any]) -> dt.datetime:
        """Now, or a second after the order's last change: Woo's times have whole seconds, and
        every change must read as newer."""
        previous = dt.datetime.fromisoformat(order["date_modified_gmt"])
        return max(self._now(), previous + dt.timedelta(seconds=1))

    def add_listings(self, skus: Iterable[str], quantity: int = 0) -> None:
        """More simple products, one per SKU."""
        with self._lock:
            known = {p["sku"] for p in self.products.values()}
            for sku in skus:
                if sku in known:
                    continue
                pid = 10_000 + len(self.products)
                self.products[pid] = {
                    "id": pid, "name": sku.title(), "type": "simple", "status": "publish",
                    "sku": sku, "price": "10.00", "parent_id": 0, "manage_stock": True,
                    "stock_quantity": quantity,
                    "stock_status": "instock" if quantity > 0 else "outofstock",
                }  # fmt: skip

    def edit_in_admin(self, sku: str, quantity: int) -> None:
        """A merchant sets the stock in the WordPress admin (not through us)."""
        with self._lock:
            for product in self.products.values():
                if product["sku"] == sku:
                    product["stock_quantity"] = quantity

    def stock(self, sku: str) -> int | None:
        with self._lock:
            for product in self.products.values():
                if product["sku"] == sku:
                    return int(product["stock_quantity"])
        return None

    # -- webhooks ------------------------------------------------------------------------

    def webhook_delivery(
        self, external_id: str, topic: str, secret: str, delivery_id: str | None = None
    ) -> tuple[dict[str, str], bytes]:
        """Headers and raw body of the POST WooCommerce would send (WC_Webhook::deliver)."""
        resource, _, event = topic.partition(".")
        with self._lock:
            order = self.orders[external_id]
            payload = {"id": order["id"]} if event == "deleted" else order
            body = _wp_json(payload)
        if delivery_id is None:  # wp_hash( webhook id . time() ): one per webhook per second
            seed = f"{self.webhook_id}{int(self._clock())}".encode()
            delivery_id = hmac.new(b"sandbox-salt", seed, hashlib.md5).hexdigest()
        signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "WooCommerce/9.8.0 Hookshot (WordPress/6.8)",
            "X-WC-Webhook-Source": f"{self.site_url}/",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": signature.decode(),
            "X-WC-Webhook-ID": str(self.webhook_id),
            "X-WC-Webhook-Delivery-ID": delivery_id,
        }
        return headers, body

    def ping_delivery(self) -> tuple[dict[str, str], bytes]:
        """The unsigned ping sent when a webhook is saved (WC_Webhook::deliver_ping)."""
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "WooCommerce/9.8.0 Hookshot (WordPress/6.8)",
        }
        return headers, f"webhook_id={self.webhook_id}".encode()

    # -- HTTP plumbing -------------------------------------------------------------------

    def _log(self, operation: str, response: Response) -> Response:
        with self._lock:
            self.request_log.append((operation, response.status_code))
        return response

    def _credentials(self, request: Request) -> tuple[str, str] | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return key, secret
        query = request.query_params
        if "consumer_key" in query:
            return query["consumer_key"], query.get("consumer_secret", "")
        return None

    def _throttle(self) -> tuple[JSONResponse | None, dict[str, str]]:
        if self.rate_limit is None:
            return None, {}
        limit, window = self.rate_limit
        now = self._clock()
        index = int(now // window)
        with self._lock:
            current, used = self._window
            used = used + 1 if current == index else 1
            self._window = (index, used)
        reset = (index + 1) * window
        headers = {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(max(0, limit - used)),
            "RateLimit-Reset": str(math.ceil(reset)),
        }
        if used <= limit:
            return None, headers
        wait = str(max(1, math.ceil(reset - now)))
        headers |= {"RateLimit-Retry-After": wait, "Retry-After": wait}
        response = _error(
            429,
            "rate_limit_exceeded",
            f"Too many requests. Please wait {wait} seconds before trying again.",
        )
        response.headers.update(headers)
        return response, headers

    async def _guard(
        self, request: Request, operation: str
    ) -> tuple[Response | None, dict[str, str]]:
        disturbed = await self.knobs.disturb(
            {
                "code": "rate_limit_exceeded",
                "message": "Too many requests.",
                "data": {"status": 429},
            },
            operation=operation,
        )
        if disturbed is not None:
            return self._log(operation, disturbed), {}
        creds = self._credentials(request)
        if creds is None:
            return self._log(
                operation,
                _error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources."),
            ), {}
        key, secret = creds
        if not hmac.compare_digest(key.encode(), SANDBOX_CONSUMER_KEY.encode()):
            return self._log(
                operation,
                _error(401, "woocommerce_rest_authentication_error", "Consumer key is invalid."),
            ), {}
        if not hmac.compare_digest(secret.encode(), SANDBOX_CONSUMER_SECRET.encode()):
            return self._log(
                operation,
                _error(
                    401,
                    "woocommerce_rest_authentication_error",
                    "Invalid signature - provided signature does not match.",
                ),
            ), {}
        throttled, headers = self._throttle()
        if throttled is not None:
            return self._log(operation, throttled), {}
        return None, headers

    def _ok(
        self, operation: str, body: Any, headers: dict[str, str], status: int = 200
    ) -> Response:
        answer = self._log(operation, JSONResponse(body, status_code=status, headers=headers))
        return self.drop_write_answers(operation, answer)

    # -- handlers ------------------------------------------------------------------------

    def _filter_orders(self, request: Request) -> list[dict[str, Any]] | JSONResponse:
        q = request.query_params
        gmt = q.get("dates_are_gmt", "false").lower() in ("1", "true")
        bounds: dict[str, dt.datetime] = {}
        for name in ("modified_after", "modified_before", "after", "before"):
            if name in q:
                try:
                    value = dt.datetime.fromisoformat(q[name])
                except ValueError:
                    return _error(
                        400,
                        "rest_invalid_param",
                        f"Invalid parameter(s): {name}",
                        params={name: "Invalid date."},
                    )
                if value.tzinfo is not None:
                    value = value.astimezone(dt.UTC).replace(tzinfo=None) + (
                        dt.timedelta(0) if gmt else SHOP_OFFSET
                    )
                bounds[name] = value
        wanted = {s for s in q.get("status", "any").split(",") if s}
        suffix = "_gmt" if gmt else ""

        def stamp(order: dict[str, Any], field: str) -> dt.datetime:
            return dt.datetime.fromisoformat(order[f"{field}{suffix}"])

        picked = []
        for order in self.orders.values():
            if "any" not in wanted and order["status"] not in wanted:
                continue
            modified, created = stamp(order, "date_modified"), stamp(order, "date_created")
            if ("modified_after" in bounds and not modified > bounds["modified_after"]) or (
                "modified_before" in bounds and not modified < bounds["modified_before"]
            ):
                continue
            if ("after" in bounds and not created > bounds["after"]) or (
                "before" in bounds and not created < bounds["before"]
            ):
                continue
            picked.append(order)
        orderby = q.get("orderby", "date")
        key: Callable[[dict[str, Any]], Any] = {
            "modified": lambda o: (o["date_modified_gmt"], o["id"]),
            "id": lambda o: o["id"],
        }.get(orderby, lambda o: (o["date_created_gmt"], o["id"]))
        picked.sort(key=key, reverse=q.get("order", "desc") == "desc")
        return picked

    def build_router(self) -> APIRouter:
        router = APIRouter()

        @router.get(f"{API}/orders")
        async def list_orders(request: Request) -> Response:
            refused, headers = await self._guard(request, "list_orders")
            if refused:
                return refused
            q = request.query_params
            try:
                page, per_page = int(q.get("page", "1")), int(q.get("per_page", "10"))
            except ValueError:
                return self._log(
                    "list_orders",
                    _error(400, "rest_invalid_param", "Invalid parameter(s): page, per_page"),
                )
            if not 1 <= per_page <= 100 or page < 1:
                return self._log(
                    "list_orders",
                    _error(
                        400,
                        "rest_invalid_param",
                        "Invalid parameter(s): per_page",
                        params={
                            "per_page": "per_page must be between 1 (inclusive) and 100 (inclusive)"
                        },
                    ),
                )
            with self._lock:
                picked = self._filter_orders(request)
                if isinstance(picked, JSONResponse):
                    return self._log("list_orders", picked)
                items = json.loads(json.dumps(picked[(page - 1) * per_page : page * per_page]))
            total = len(picked)
            pages = math.ceil(total / per_page)
            headers |= {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
            links = []
            if page > 1:
                links.append(f'<{request.url.include_query_params(page=page - 1)}>; rel="prev"')
            if page < pages:
                links.append(f'<{request.url.include_query_params(page=page + 1)}>; rel="next"')
            if links:
                headers["Link"] = ", ".join(links)
            return self._ok("list_orders", items, headers)

        def _order_or_404(order_id: str) -> dict[str, Any] | None:
            return self.orders.get(order_id)

        @router.get(f"{API}/orders/{{order_id}}")
        async def get_order(order_id: str, request: Request) -> Response:
            refused, headers = await self._guard(request, "get_order")
            if refused:
                return refused
            with self._lock:
                order = _order_or_404(order_id)
                body = json.loads(json.dumps(order)) if order else None
            if body is None:
                return self._log(
                    "get_order",
                    _error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID."),
                )
            return self._ok("get_order", body, headers)

        @router.api_route(f"{API}/orders/{{order_id}}", methods=["PUT", "POST", "PATCH"])
        async def update_order(order_id: str, request: Request) -> Response:
            refused, headers = await self._guard(request, "update_order")
            if refused:
                return refused
            try:
                changes = json.loads(await request.body() or b"{}")
            except ValueError:
                return self._log(
                    "update_order", _error(400, "rest_invalid_json", "Invalid JSON body passed.")
                )
            if not isinstance(changes, dict):
                changes = {}
            status = changes.get("status")
            if status is not None and status not in STATUSES:
                return self._log(
                    "update_order",
                    _error(400, "rest_invalid_param", "Invalid parameter(s): status"),
                )
            with self._lock:
                order = _order_or_404(order_id)
                if order is None:
                    return self._log(
                        "update_order",
                        _error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID."),
                    )
                now = self._now()
                if status and status != order["status"]:
                    order["status"] = status
                    if status == "completed":
                        self._set_date(order, "date_completed", now)
                        self.ledger[f"fulfillment:{order_id}"].append({"at": _wc(now)})
                    if status == "cancelled":
                        self.ledger[f"cancellation:{order_id}"].append({"at": _wc(now)})
                    if status == "processing" and not order["date_paid_gmt"]:
                        self._set_date(order, "date_paid", now)
                for meta in changes.get("meta_data") or []:
                    if not isinstance(meta, dict) or "key" not in meta:
                        continue
                    existing = next(
                        (m for m in order["meta_data"] if m["key"] == meta["key"]), None
                    )
                    if existing is not None:
                        existing["value"] = meta.get("value")
                    else:
                        self._next_meta += 1
                        order["meta_data"].append(
                            {"id": self._next_meta, "key": meta["key"], "value": meta.get("value")}
                        )
                self._set_date(order, "date_modified", now)
                body = json.loads(json.dumps(order))
            return self._ok("update_order", body, headers)

        @router.post(f"{API}/orders/{{order_id}}/refunds")
        async def create_refund(order_id: str, request: Request) -> Response:
            """A refund of an amount, or of line items (``line_items``: the order line's
            ``id``, ``quantity``, ``refund_total`` and ``refund_tax``; the amount is theirs
            unless ``amount`` is given); ``api_refund`` has the gateway give the money back
            (the ledger counts those) and ``api_restock`` (default true) puts the refunded
            units back in stock (the order line's ``_restock_refunded_items``). Woo refuses
            more than is left, and marks an order refunded in full ``refunded``."""
            refused, headers = await self._guard(request, "create_refund")
            if refused:
                return refused
            invalid = _error(400, "woocommerce_rest_invalid_order_refund", "Invalid amount.")
            try:
                data = json.loads(await request.body() or b"{}")
                wanted = _refund_items(data.get("line_items") or [])
                amount = (
                    Decimal(str(data["amount"])) if data.get("amount") not in (None, "")
                    else sum((total + tax for _, _, total, tax in wanted), Decimal(0))
                )  # fmt: skip
            except (ValueError, KeyError, TypeError, ArithmeticError, AttributeError):
                return self._log("create_refund", invalid)
            with self._lock:
                order = _order_or_404(order_id)
                if order is None:
                    return self._log("create_refund", _error(
                        404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID."))  # fmt: skip
                back = sum((-Decimal(r["total"]) for r in order["refunds"]), Decimal(0))
                lines = {str(item["id"]): item for item in order["line_items"]}
                if amount <= 0 or back + amount > Decimal(order["total"]) or any(
                    line not in lines or not 0 < units <= lines[line]["quantity"]
                    for line, units, _, _ in wanted
                ):
                    return self._log("create_refund", _error(
                        400, "woocommerce_rest_invalid_order_refund",
                        "Invalid refund amount."))  # fmt: skip
                refund_id, now = self._meta_id(), self._now()
                restock = data.get("api_restock", True) is not False
                items = []
                for line, units, total, tax in wanted:
                    item = lines[line]
                    items.append({
                        "id": self._meta_id(), "name": item["name"],
                        "product_id": item["product_id"], "variation_id": item["variation_id"],
                        "quantity": -units, "tax_class": "", "subtotal": _money(-total),
                        "subtotal_tax": _money(-tax), "total": _money(-total),
                        "total_tax": _money(-tax), "taxes": [], "sku": item["sku"],
                        "meta_data": [{"id": self._meta_id(), "key": "_refunded_item_id",
                                       "value": line}],
                        "price": float(-total / units),
                    })  # fmt: skip
                    if restock:
                        _add_meta(item, "_restock_refunded_items", units, self._meta_id)
                detail = {"id": refund_id, "reason": str(data.get("reason") or ""),
                          "amount": _money(amount), "refunded_by": 1,
                          "refunded_payment": bool(data.get("api_refund")), "meta_data": [],
                          "line_items": items, "shipping_lines": [], "tax_lines": [],
                          "fee_lines": []}  # fmt: skip
                self._set_date(detail, "date_created", now)
                self.refunds[order_id].append(detail)
                refund = {"id": refund_id, "reason": detail["reason"],
                          "total": _money(-amount)}  # fmt: skip
                order["refunds"].append(refund)
                if data.get("api_refund"):
                    self.ledger[f"refund:{order_id}"].append({"amount": _money(amount)})
                if back + amount == Decimal(order["total"]):
                    order["status"] = "refunded"
                self._set_date(order, "date_modified", now)
                body = json.loads(json.dumps(detail))
            return self._ok("create_refund", body, headers, status=201)

        @router.get(f"{API}/orders/{{order_id}}/refunds")
        async def list_refunds(order_id: str, request: Request) -> Response:
            """The order's refunds whole, newest first (as Woo lists them)."""
            refused, headers = await self._guard(request, "list_refunds")
            if refused:
                return refused
            with self._lock:
                if order_id not in self.orders:
                    return self._log("list_refunds", _error(
                        404, "woocommerce_rest_order_invalid_id", "Invalid order ID."))  # fmt: skip
                body = json.loads(json.dumps(list(reversed(self.refunds[order_id]))))
            return self._ok("list_refunds", body, headers)

        @router.get(f"{API}/orders/{{order_id}}/notes")
        async def list_notes(order_id: str, request: Request) -> Response:
            refused, headers = await self._guard(request, "list_notes")
            if refused:
                return refused
            with self._lock:
                if order_id not in self.orders:
                    return self._log(
                        "list_notes",
                        _error(404, "woocommerce_rest_order_invalid_id", "Invalid order ID."),
                    )
                notes = list(reversed(self.notes[order_id]))  # newest first, like Woo
            return self._ok("list_notes", notes, headers)

        @router.post(f"{API}/orders/{{order_id}}/notes")
        async def add_note(order_id: str, request: Request) -> Response:
            refused, headers = await self._guard(request, "add_note")
            if refused:
                return refused
            try:
                data = json.loads(await request.body() or b"{}")
            except ValueError:
                data = None
            if not isinstance(data, dict) or not str(data.get("note") or "").strip():
                return self._log(
                    "add_note",
                    _error(
                        400,
                        "rest_missing_callback_param",
                        "Missing parameter(s): note",
                        params=["note"],
                    ),
                )
            with self._lock:
                if order_id not in self.orders:
                    return self._log(
                        "add_note",
                        _error(404, "woocommerce_rest_order_invalid_id", "Invalid order ID."),
                    )
                now = self._now()
                self._next_note += 1
                note = {
                    "id": self._next_note,
                    "author": "ordersync-sandbox",
                    "date_created": _wc(now + SHOP_OFFSET),
                    "date_created_gmt": _wc(now),
                    "note": str(data["note"]),
                    "customer_note": bool(data.get("customer_note")),
                    "added_by_user": False,
                }
                self.notes[order_id].append(note)
                self.ledger[f"note:{order_id}"].append({"note": note["note"]})
            return self._ok("add_note", note, headers, status=201)

        @router.get(f"{API}/products")
        async def list_products(request: Request) -> Response:
            refused, headers = await self._guard(request, "list_products")
            if refused:
                return refused
            q = request.query_params
            page = max(1, _int(q.get("page"), 1))
            per_page = min(100, max(1, _int(q.get("per_page"), 10)))
            with self._lock:
                items = list(self.products.values())
                if "sku" in q:
                    # a comma list, and (as Woo does) the whole string as one SKU too;
                    # a SKU search finds variations too
                    skus = {*q["sku"].split(","), q["sku"]}
                    items = [p for p in items if p["sku"] in skus]
                else:  # a listing shows products, not their variations
                    items = [p for p in items if p["type"] != "variation"]
                items = json.loads(json.dumps(items))
            total = len(items)
            headers |= {
                "X-WP-Total": str(total),
                "X-WP-TotalPages": str(math.ceil(total / per_page)),
            }
            return self._ok(
                "list_products", items[(page - 1) * per_page : page * per_page], headers
            )

        async def _batch(request: Request, operation: str, parent: int | None) -> Response:
            refused, headers = await self._guard(request, operation)
            if refused:
                return refused
            try:
                data = json.loads(await request.body() or b"{}")
            except ValueError:
                return self._log(
                    operation, _error(400, "rest_invalid_json", "Invalid JSON body passed.")
                )
            data = data if isinstance(data, dict) else {}
            updates = data.get("update") or []
            count = sum(len(data.get(k) or []) for k in ("create", "update", "delete"))
            if count > BATCH_LIMIT:
                return self._log(
                    operation,
                    _error(
                        413,
                        "rest_request_entity_too_large",
                        f"Unable to accept more than {BATCH_LIMIT} items for this request.",
                    ),
                )
            out = []
            with self._lock:
                self.stock_calls += 1
                for item in updates:
                    product = self.products.get(
                        _int(item.get("id")) if isinstance(item, dict) else 0
                    )
                    wrong_kind = product is not None and (product["type"] == "variation") != (
                        parent is not None
                    )
                    if (
                        product is None
                        or wrong_kind
                        or (parent is not None and product["parent_id"] != parent)
                    ):
                        out.append(
                            {
                                "id": 0,
                                "error": {
                                    "code": "woocommerce_rest_product_invalid_id",
                                    "message": "Invalid ID.",
                                    "data": {"status": 400},
                                },
                            }
                        )
                        continue
                    if "manage_stock" in item:
                        product["manage_stock"] = bool(item["manage_stock"])
                    if "stock_quantity" in item:
                        qty = _int(item["stock_quantity"])
                        product["stock_quantity"] = qty
                        product["stock_status"] = "instock" if qty > 0 else "outofstock"
                        self.ledger[f"stock:{product['sku']}"].append({"quantity": qty})
                    out.append(dict(product))
            return self._ok(operation, {"update": out}, headers)

        @router.get(f"{API}/products/{{product_id}}/variations")
        async def list_variations(product_id: int, request: Request) -> Response:
            refused, headers = await self._guard(request, "list_variations")
            if refused:
                return refused
            q = request.query_params
            page = max(1, _int(q.get("page"), 1))
            per_page = min(100, max(1, _int(q.get("per_page"), 10)))
            with self._lock:
                items = [p for p in self.products.values() if p["parent_id"] == product_id]
                items = json.loads(json.dumps(items))
            headers |= {
                "X-WP-Total": str(len(items)),
                "X-WP-TotalPages": str(math.ceil(len(items) / per_page)),
            }
            return self._ok(
                "list_variations", items[(page - 1) * per_page : page * per_page], headers
            )

        @router.post(f"{API}/products/batch")
        async def batch_products(request: Request) -> Response:
            return await _batch(request, "batch_products", None)

        @router.post(f"{API}/products/{{product_id}}/variations/batch")
        async def batch_variations(product_id: int, request: Request) -> Response:
            return await _batch(request, "batch_variations", product_id)

        return router
