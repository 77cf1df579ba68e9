"""Typed client of Shopify's GraphQL Admin API (2026-07) for one shop.

``POST https://{shop}/admin/api/2026-07/graphql.json`` with ``X-Shopify-Access-Token``. Every
query first waits for the shop's cost bucket (``throttle.CostBucket``) to hold its estimated
cost, so we do not hammer into ``THROTTLED``; each response corrects the bucket and the
estimate. A ``THROTTLED`` answer anyway (another worker, another app) waits for the restore and
retries a few times, then becomes ``RateLimited`` with ``retry_after`` for the task to retry.

Errors, GraphQL ``errors[].extensions.code`` and mutation ``userErrors`` included, map to
``domain.errors``; messages carry the operation and the remote code only.
https://shopify.dev/docs/api/admin-graphql#endpoints
https://shopify.dev/docs/api/usage/response-codes
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import httpx
import structlog

from core import jsonio
from domain.canonical import may_hold_surrogates
from domain.errors import (
    AuthError,
    Conflict,
    IntegrationError,
    NotFound,
    PayloadError,
    PermanentError,
    RateLimited,
    ServerError,
    TransportError,
    ValidationError,
)
from integrations.http import DEFAULT_TIMEOUT, ApiClient
from integrations.ratelimit import RateLimiter
from integrations.shopify import queries as q
from integrations.shopify.throttle import CostBucket, ThrottleStatus, shared_bucket

__all__ = ["ShopifyClient", "order_gid"]

log = structlog.get_logger(__name__)

#: GraphQL error codes → our error classes (anything else: ValidationError, our query is wrong)
#: https://shopify.dev/docs/api/usage/response-codes#graphql-errors
_GRAPHQL_ERRORS: dict[str, type[IntegrationError]] = {
    "THROTTLED": RateLimited,
    "ACCESS_DENIED": AuthError,
    "UNAUTHORIZED": AuthError,
    "SHOP_INACTIVE": PermanentError,
    "NOT_FOUND": NotFound,
    "INTERNAL_SERVER_ERROR": ServerError,
    "SERVICE_UNAVAILABLE": ServerError,
    "TIMEOUT": ServerError,
    "MAX_COST_EXCEEDED": ValidationError,
}

#: userErrors codes that are worth retrying
_RETRYABLE_USER_ERRORS: dict[str, type[IntegrationError]] = {
    "IDEMPOTENCY_CONCURRENT_REQUEST": Conflict,
    # another bulk query of this app runs on the shop (one at a time): later
    "OPERATION_IN_PROGRESS": Conflict,
    "SERVICE_UNAVAILABLE": ServerError,
}

#: HTTP statuses with a Shopify meaning beyond ``error_for_status``
#: 402 = shop frozen (unpaid bill), 423 = shop locked: nothing a retry can fix
_SHOP_STATUSES = {402: "SHOP_FROZEN", 423: "SHOP_LOCKED"}


def order_gid(external_id: str) -> str:
    return external_id if external_id.startswith("gid://") else f"gid://shopify/Order/{external_id}"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


class ShopifyClient(ApiClient):
    def __init__(
        self,
        shop: str,
        access_token: str,
        *,
        base_url: str | None = None,
        api_version: str = q.API_VERSION,
        bucket: CostBucket | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limiter: RateLimiter | None = None,
        max_attempts: int = 3,
        max_throttled: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            base_url or f"https://{shop}",
            account=shop,
            transport=transport,
            timeout=timeout,
            limiter=limiter,
            max_attempts=max_attempts,
            sleep=sleep,
        )
        self.shop = shop
        self._token = access_token
        self.path = f"/admin/api/{api_version}/graphql.json"
        self.bucket = bucket or shared_bucket(shop)
        self.max_throttled = max_throttled
        # operation → Shopify's requestedQueryCost / our estimate, from the last response
        self._scale: dict[str, float] = {}

    def __repr__(self) -> str:  # never the token
        return f"ShopifyClient(shop={self.shop!r})"

    def auth_headers(self) -> dict[str, str]:
        return {"X-Shopify-Access-Token": self._token}

    def observe(self, operation: str, response: httpx.Response) -> None:
        body = _json(response)
        status = (
            ThrottleStatus.from_extensions(body.get("extensions"))
            if isinstance(body, dict)
            else None
        )
        if status is not None:
            self.bucket.observe(status)

    def error_code(self, response: httpx.Response) -> str | None:
        body = _json(response)
        if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0]
            if isinstance(first, dict):
                code = (first.get("extensions") or {}).get("code")
                return str(code) if code else None
        return None

    # --- the one GraphQL call --------------------------------------------------------------

    def graphql(
        self, operation: str, query: str, variables: Mapping[str, Any], *, cost: float
    ) -> dict[str, Any]:
        """Run one operation; returns ``data``. ``cost`` is our requested-cost estimate."""
        body = {"query": query, "variables": dict(variables), "operationName": operation}
        estimate = cost * self._scale.get(operation, 1.0)
        for attempt in range(1, self.max_throttled + 1):
            wait = self.bucket.reserve(estimate)
            if wait > 0:
                log.info(
                    "shopify.cost_wait", shop=self.shop, operation=operation, wait=round(wait, 3)
                )
                self.wait(wait, operation)
            try:
                response = self.request(operation, "POST", self.path, json=body)
            except ValidationError as exc:
                if exc.status in _SHOP_STATUSES:
                    code = _SHOP_STATUSES[exc.status]
                    raise PermanentError(
                        f"{operation}: HTTP {exc.status} {code}", status=exc.status, code=code
                    ) from None
                raise
            payload = _json(response)
            if not isinstance(payload, dict):
                raise PayloadError(f"{operation}: response is not a JSON object")
            status = ThrottleStatus.from_extensions(payload.get("extensions"))
            if status is not None and status.requested:
                self._scale[operation] = status.requested / cost
                estimate = status.requested
            errors = payload.get("errors")
            if errors:
                code = self._first_code(errors)
                if code == "THROTTLED":
                    if attempt < self.max_throttled:
                        log.info("shopify.throttled", shop=self.shop, operation=operation)
                        continue  # the bucket now holds Shopify's numbers: reserve waits
                    retry_after = self._restore_time(status, estimate)
                    raise RateLimited(
                        f"{operation}: GraphQL THROTTLED", code=code, retry_after=retry_after
                    )
                raise self._graphql_error(operation, code)
            data = payload.get("data")
            if not isinstance(data, dict):
                raise PayloadError(f"{operation}: response has no data")
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _first_code(errors: Any) -> str:
        if isinstance(errors, list):
            for error in errors:
                if isinstance(error, dict):
                    code = (error.get("extensions") or {}).get("code")
                    if code:
                        return str(code)
            return "GRAPHQL_ERROR"
        return "GRAPHQL_ERROR"  # REST-style {"errors": "..."} string bodies

    @staticmethod
    def _restore_time(status: ThrottleStatus | None, cost: float) -> float:
        if status is None:
            return 1.0
        return max(0.0, cost - status.currently_available) / status.restore_rate

    @staticmethod
    def _graphql_error(operation: str, code: str) -> IntegrationError:
        cls = _GRAPHQL_ERRORS.get(code, ValidationError)
        return cls(f"{operation}: GraphQL {code}", code=code)

    @staticmethod
    def check_user_errors(operation: str, errors: Any) -> None:
        """Raise for a mutation's ``userErrors`` (code and field path only, no messages)."""
        if not errors:
            return
        first = errors[0] if isinstance(errors, list) and isinstance(errors[0], dict) else {}
        code = str(first.get("code") or "USER_ERROR")
        field = ".".join(str(p) for p in (first.get("field") or []))
        cls = _RETRYABLE_USER_ERRORS.get(code, ValidationError)
        where = f" at {field}" if field else ""
        raise cls(f"{operation}: userErrors {code}{where} ({len(errors)} in all)", code=code)

    # --- orders ---------------------------------------------------------------------------

    def orders_page(
        self, search: str, after: str | None, first: int = q.ORDERS_PAGE_SIZE
    ) -> tuple[list[str], bool, str | None]:
        """One page of order GIDs matching ``search``, oldest update first."""
        data = self.graphql(
            "OrdersUpdatedSince",
            q.ORDERS_UPDATED_SINCE,
            {"first": first, "after": after, "query": search},
            cost=2 + first,
        )
        conn = _dig(data, "orders", "OrdersUpdatedSince")
        nodes = conn.get("nodes") or []
        page = conn.get("pageInfo") or {}
        ids = [n["id"] for n in nodes if isinstance(n, dict) and isinstance(n.get("id"), str)]
        return ids, bool(page.get("hasNextPage")), page.get("endCursor")

    def chunk_size(self) -> int:
        """Orders per ``nodes(ids:)`` call: half a bucket, so the next one need not wait long."""
        per_order = q.order_cost() * self._scale.get("OrdersByIds", 1.0)
        return max(1, min(50, int(self.bucket.maximum / 2 // per_order)))

    def orders_by_ids(self, gids: list[str]) -> list[dict[str, Any] | None]:
        data = self.graphql(
            "OrdersByIds",
            q.ORDERS_BY_IDS,
            {"ids": gids, "lineItemsFirst": q.LINE_ITEMS_FIRST},
            cost=len(gids) * q.order_cost(),
        )
        nodes = data.get("nodes")
        if not isinstance(nodes, list):
            raise PayloadError("OrdersByIds: response has no nodes list")
        return [self._complete(n) if isinstance(n, dict) else None for n in nodes]

    def order(self, gid: str) -> dict[str, Any]:
        data = self.graphql(
            "Order",
            q.ORDER,
            {"id": gid, "lineItemsFirst": q.LINE_ITEMS_PAGE},
            cost=q.order_cost(q.LINE_ITEMS_PAGE),
        )
        node = data.get("order")
        if not isinstance(node, dict):
            raise NotFound("Order: no such order", code="NOT_FOUND")
        return self._complete(node)

    def _complete(self, node: dict[str, Any]) -> dict[str, Any]:
        """Fetch the rest of an order's line items so the node holds all of them."""
        conn = node.get("lineItems")
        if not isinstance(conn, dict):
            return node
        nodes = list(conn.get("nodes") or [])
        page = conn.get("pageInfo") or {}
        while page.get("hasNextPage") and page.get("endCursor"):
            data = self.graphql(
                "OrderLineItems",
                q.ORDER_LINE_ITEMS,
                {"id": node.get("id"), "first": q.LINE_ITEMS_PAGE, "after": page["endCursor"]},
                cost=3 + q.LINE_ITEMS_PAGE * q.LINE_ITEM_COST,
            )
            more = _dig(_dig(data, "order", "OrderLineItems"), "lineItems", "OrderLineItems")
            nodes.extend(more.get("nodes") or [])
            page = more.get("pageInfo") or {}
        complete = {**node, "lineItems": {"nodes": nodes, "pageInfo": {"hasNextPage": False}}}
        return self._with_refunds(complete)

    def _with_refunds(self, node: dict[str, Any]) -> dict[str, Any]:
        """An order that has refunds gets them (``ORDER_REFUNDS``): a refund made in the admin
        whose webhook never came is read by the next poll."""
        refunded = ((node.get("totalRefundedSet") or {}).get("shopMoney") or {}).get("amount")
        try:
            some = refunded is not None and Decimal(str(refunded)) > 0
        except ArithmeticError:
            raise PayloadError("Order: totalRefundedSet is not an amount") from None
        if not some:
            return node
        data = self.graphql(
            "OrderRefunds",
            q.ORDER_REFUNDS,
            {"id": node.get("id"), "refundsFirst": q.REFUNDS_FIRST,
             "refundLinesFirst": q.REFUND_LINES_FIRST},
            cost=q.ORDER_REFUNDS_COST,
        )  # fmt: skip
        refunds = _dig(data, "order", "OrderRefunds").get("refunds")
        if not isinstance(refunds, list):
            raise PayloadError("OrderRefunds: response has no refunds list")
        return {**node, "refunds": refunds}

    # --- bulk export ------------------------------------------------------------------------

    def bulk_run_query(self, query: str) -> str:
        """Start a bulk export; returns its ``BulkOperation`` GID."""
        data = self.graphql(
            "BulkOperationRunQuery", q.BULK_OPERATION_RUN_QUERY, {"query": query},
            cost=q.MUTATION_COST,
        )  # fmt: skip
        payload = _dig(data, "bulkOperationRunQuery", "BulkOperationRunQuery")
        self.check_user_errors("BulkOperationRunQuery", payload.get("userErrors"))
        operation = payload.get("bulkOperation") or {}
        if not isinstance(operation.get("id"), str):
            raise PayloadError("BulkOperationRunQuery: no bulk operation in the answer")
        return str(operation["id"])

    def bulk_operation(self, gid: str) -> dict[str, Any]:
        """The operation's ``status``, ``errorCode``, ``objectCount``, ``fileSize`` (bytes, a
        string: ``UnsignedInt64``) and ``url``."""
        data = self.graphql("BulkOperation", q.BULK_OPERATION, {"id": gid}, cost=1)
        node = data.get("node")
        if not isinstance(node, dict) or not isinstance(node.get("status"), str):
            raise NotFound("BulkOperation: no such bulk operation", code="NOT_FOUND")
        return node

    def bulk_lines(
        self, url: str, skip: int = 0, *, start: int = 0, from_byte: bool = False
    ) -> Generator[tuple[dict[str, Any], bool, int], None, None]:
        """The result file's objects, one per line, read as a stream (never held whole), after
        the first ``skip`` objects (blank lines are not counted), each with whether its text
        may hold a lone surrogate (``domain.canonical.may_hold_surrogates``) and the byte of
        the file at which its line begins. The URL is signed storage, not the Admin API: no
        token goes with it.

        ``start``, when known, is the byte at which object ``skip + 1`` begins (as this method
        gave it): the file is asked from there with a ``Range`` request (Cloud Storage answers
        206 with that part only), so a slice that resumes a large export does not download and
        split again every line before it. A server that ignores the range (200, the whole
        file) is read from the start, ``skip`` objects counted past as without it.

        ``from_byte`` (a lane of the file, ``ShopifyConnector``): the objects whose lines begin
        at ``start`` or after, whatever byte that is, even one inside a line; ``skip`` is not
        used. The file is asked from the byte before, so the line cut there, or the newline
        that ends the line before, is seen and passed over."""
        if from_byte:
            skip, start, first = 0, max(start - 1, 0), start
        else:
            first = 0
        headers = {"Range": f"bytes={start}-"} if start > 0 else None
        try:
            with self.http.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 206 and headers is not None:
                    asked = response.headers.get("content-range", "")
                    if not asked.startswith(f"bytes {start}-"):
                        raise PayloadError(f"bulk result: asked from byte {start}, "
                                           f"answered {asked or 'no Content-Range'}")  # fmt: skip
                    number, at = skip, start
                elif status == 200:
                    number, at = 0, 0
                else:
                    cls = ServerError if status >= 500 else ValidationError
                    raise cls(f"bulk result: HTTP {status}", status=status)
                for raw in _jsonl_lines(response.iter_bytes()):
                    begins, at = at, at + len(raw) + 1
                    if begins < first or not raw.strip():
                        continue
                    number += 1
                    if number <= skip:
                        continue
                    item = jsonio.loads(raw)
                    if not isinstance(item, dict):
                        raise PayloadError(f"bulk result object {number} is not an object")
                    yield item, may_hold_surrogates(raw), begins
        except httpx.TransportError as exc:
            raise TransportError(f"bulk result: {type(exc).__name__}") from None
        except json.JSONDecodeError:
            raise PayloadError("bulk result: a line is not JSON") from None

    # --- fulfillment, cancel --------------------------------------------------------------

    def fulfillment_state(self, gid: str) -> dict[str, Any]:
        data = self.graphql(
            "OrderFulfillmentState",
            q.ORDER_FULFILLMENT_STATE,
            {"id": gid},
            cost=q.FULFILLMENT_STATE_COST,
        )
        node = data.get("order")
        if not isinstance(node, dict):
            raise NotFound("OrderFulfillmentState: no such order", code="NOT_FOUND")
        return node

    def fulfillment_create(
        self, fulfillment: Mapping[str, Any], message: str | None = None
    ) -> dict[str, Any]:
        data = self.graphql(
            "FulfillmentCreate",
            q.FULFILLMENT_CREATE,
            {"fulfillment": dict(fulfillment), "message": message},
            cost=q.MUTATION_COST,
        )
        result = _dig(data, "fulfillmentCreate", "FulfillmentCreate")
        self.check_user_errors("FulfillmentCreate", result.get("userErrors"))
        return result

    def fulfillment_event_create(self, event: Mapping[str, Any]) -> dict[str, Any]:
        data = self.graphql(
            "FulfillmentEventCreate",
            q.FULFILLMENT_EVENT_CREATE,
            {"fulfillmentEvent": dict(event)},
            cost=q.MUTATION_COST,
        )
        result = _dig(data, "fulfillmentEventCreate", "FulfillmentEventCreate")
        self.check_user_errors("FulfillmentEventCreate", result.get("userErrors"))
        return result

    def order_cancel(
        self,
        gid: str,
        *,
        reason: str,
        restock: bool,
        notify_customer: bool,
        staff_note: str | None,
    ) -> dict[str, Any]:
        data = self.graphql(
            "OrderCancel",
            q.ORDER_CANCEL,
            {
                "orderId": gid,
                "reason": reason,
                "refundMethod": {"originalPaymentMethodsRefund": True},
                "restock": restock,
                "notifyCustomer": notify_customer,
                "staffNote": staff_note,
            },
            cost=q.MUTATION_COST,
        )
        result = _dig(data, "orderCancel", "OrderCancel")
        self.check_user_errors("OrderCancel", result.get("orderCancelUserErrors"))
        return result

    # --- payments -------------------------------------------------------------------------

    def order_transactions(self, gid: str) -> dict[str, Any]:
        data = self.graphql(
            "OrderTransactions",
            q.ORDER_TRANSACTIONS,
            {"id": gid},
            cost=q.ORDER_TRANSACTIONS_COST,
        )
        node = data.get("order")
        if not isinstance(node, dict):
            raise NotFound("OrderTransactions: no such order", code="NOT_FOUND")
        return node

    def order_capture(
        self,
        gid: str,
        *,
        parent_transaction_id: str,
        amount: str,
        currency: str,
        idempotency_key: str,
    ) -> dict[str, Any]:
        data = self.graphql(
            "OrderCapture",
            q.ORDER_CAPTURE,
            {
                "input": {
                    "id": gid,
                    "parentTransactionId": parent_transaction_id,
                    "amount": amount,
                    "currency": currency,
                    "finalCapture": True,
                },
                "idempotencyKey": idempotency_key,
            },
            cost=q.MUTATION_COST,
        )
        result = _dig(data, "orderCapture", "OrderCapture")
        self.check_user_errors("OrderCapture", result.get("userErrors"))
        transaction = result.get("transaction")
        if not isinstance(transaction, dict):
            raise PayloadError("OrderCapture: response has no transaction")
        return transaction

    # --- inventory ------------------------------------------------------------------------

    def variants_page(
        self, location: str, after: str | None, first: int = q.VARIANTS_PAGE_SIZE
    ) -> tuple[list[dict[str, Any]], bool, str | None]:
        """One page of product variants with their inventory item and its level at
        ``location``: (nodes, has next page, end cursor)."""
        data = self.graphql(
            "ProductVariants",
            q.PRODUCT_VARIANTS,
            {"first": first, "after": after, "location": location},
            cost=q.variants_cost(first),
        )
        page = _dig(data, "productVariants", "ProductVariants")
        info = page.get("pageInfo") or {}
        nodes = [n for n in page.get("nodes") or [] if isinstance(n, dict)]
        return nodes, bool(info.get("hasNextPage")), info.get("endCursor")

    def inventory_available(self, item_ids: list[str], location: str) -> dict[str, int]:
        """InventoryItem GID → ``available`` at ``location`` (items without a level left out)."""
        data = self.graphql(
            "InventoryLevels",
            q.INVENTORY_LEVELS,
            {"ids": item_ids, "location": location},
            cost=q.levels_cost(len(item_ids)),
        )
        found: dict[str, int] = {}
        for node in data.get("nodes") or []:
            if not isinstance(node, dict) or not node.get("id"):
                continue
            for quantity in (node.get("inventoryLevel") or {}).get("quantities") or []:
                value = quantity.get("quantity")
                if quantity.get("name") == "available" and isinstance(value, int):
                    found[str(node["id"])] = value
        return found

    def active_location_count(self) -> int:
        """How many active locations the shop has (at most 2: enough to know whether an order
        can ship from more than one)."""
        data = self.graphql("Locations", q.LOCATIONS, {"first": 2}, cost=4)
        return len(_dig(data, "locations", "Locations").get("nodes") or [])

    def first_location(self) -> str:
        data = self.graphql("Locations", q.LOCATIONS, {"first": 1}, cost=3)
        nodes = _dig(data, "locations", "Locations").get("nodes") or []
        if not nodes or not isinstance(nodes[0], dict) or not nodes[0].get("id"):
            raise ValidationError("Locations: the shop has no active location", code="NO_LOCATION")
        return str(nodes[0]["id"])

    def inventory_set_quantities(
        self, quantities: list[dict[str, Any]], *, idempotency_key: str, reference: str
    ) -> dict[str, Any]:
        if len(quantities) > q.INVENTORY_SET_MAX:
            raise ValueError(f"at most {q.INVENTORY_SET_MAX} quantities per call")
        data = self.graphql(
            "InventorySetQuantities",
            q.INVENTORY_SET_QUANTITIES,
            {
                "input": {
                    "name": "available",
                    "reason": "correction",
                    "referenceDocumentUri": reference,
                    "quantities": quantities,
                },
                "idempotencyKey": idempotency_key,
            },
            cost=q.MUTATION_COST,
        )
        # userErrors are the caller's to read: one stale item must not sink the batch
        return _dig(data, "inventorySetQuantities", "InventorySetQuantities")

    def shop_info(self) -> dict[str, Any]:
        return _dig(self.graphql("Shop", q.SHOP, {}, cost=1), "shop", "Shop")


def _dig(data: Mapping[str, Any], key: str, operation: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise PayloadError(f"{operation}: response has no {key}")
    return value


def _jsonl_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a JSONL stream as bytes, split at ``\\n`` only (a ``\\r`` before it is
    JSON whitespace). JSON escapes ``\\n`` (every control character) inside its strings but
    not U+2028, U+2029 or U+0085, which Shopify writes as they are and at which httpx's
    ``iter_lines`` (``str.splitlines``) breaks a line: a title holding one failed the whole
    export as "not JSON". Splitting the bytes is also about a third cheaper than decoding the
    text first. A line may span chunks; the last may end without a newline."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest
