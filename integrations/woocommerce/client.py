"""Typed client for the WooCommerce REST API v3 (``{site}/wp-json/wc/v3``).

Auth: consumer key/secret as HTTP Basic, which Woo accepts over HTTPS only (plain HTTP needs
OAuth 1.0a; the local sandbox accepts Basic). Keys never go in the query string here, where
they would end up in access logs. https://woocommerce.github.io/woocommerce-rest-api-docs/#authentication

Paging is ``page``/``per_page`` (at most 100) with ``X-WP-Total`` / ``X-WP-TotalPages``.
Core Woo has no REST rate limit of its own, but hosts and security plugins answer 429; the
bucket below is a polite default, corrected from ``RateLimit-*`` headers when a host sends them
(the Store API's names: RateLimit-Limit/-Remaining/-Reset/-Retry-After). ``rate_limits=``
overrides it per operation for a host that allows more or less.
Errors are WP_Error JSON: ``{"code": "woocommerce_rest_…", "message": …, "data": {"status": N}}``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from domain.errors import PayloadError, ValidationError
from integrations.http import DEFAULT_TIMEOUT, ApiClient, parse_retry_after
from integrations.ratelimit import Bucket, RateLimiter, overlay

__all__ = [
    "API_PREFIX",
    "BATCH_LIMIT",
    "MAX_PER_PAGE",
    "BatchResult",
    "OrdersPage",
    "WooCommerceClient",
]

log = structlog.get_logger(__name__)

API_PREFIX = "/wp-json/wc/v3"
MAX_PER_PAGE = 100  # the REST collection maximum for per_page
BATCH_LIMIT = 100  # woocommerce_rest_batch_items_limit default; more → 413
_POLITE = Bucket(rate=5.0, burst=10.0)


def _wc_time(value: dt.datetime) -> str:
    """Woo's zone-less ISO form; sent with ``dates_are_gmt=true`` so it is read as UTC."""
    if value.tzinfo is None:
        raise ValueError("timestamps passed to WooCommerce must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _floor_second(value: dt.datetime) -> dt.datetime:
    return value.replace(microsecond=0)


def _ceil_second(value: dt.datetime) -> dt.datetime:
    floor = value.replace(microsecond=0)
    return floor if floor == value else floor + dt.timedelta(seconds=1)


def _int_header(response: httpx.Response, name: str) -> int | None:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError):
        return None


@dataclass
class BatchResult:
    updated: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, error code)


@dataclass(frozen=True)
class OrdersPage:
    items: list[dict[str, Any]]
    total: int | None
    total_pages: int | None


class WooCommerceClient(ApiClient):
    rate_limits = {
        op: _POLITE
        for op in (
            "list_orders",
            "get_order",
            "update_order",
            "list_notes",
            "list_refunds",
            "add_note",
            "list_products",
            "batch_products",
        )
    }

    def __init__(
        self,
        site_url: str,
        consumer_key: str,
        consumer_secret: str,
        *,
        account: str = "default",
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limiter: RateLimiter | None = None,
        max_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        per_page: int = MAX_PER_PAGE,
        rate_limits: Mapping[str, Bucket] | None = None,
    ) -> None:
        """``rate_limits``: buckets of the operations given, the others keep the default."""
        if not consumer_key or not consumer_secret:
            raise ValueError("woocommerce: consumer_key and consumer_secret are required")
        # an instance attribute, read by ApiClient.__init__ to seed the limiter
        self.rate_limits = overlay(type(self).rate_limits, rate_limits or {})
        self.per_page = max(1, min(per_page, MAX_PER_PAGE))
        token = base64.b64encode(f"{consumer_key}:{consumer_secret}".encode()).decode()
        self.__authorization = f"Basic {token}"
        super().__init__(
            site_url.rstrip("/") + API_PREFIX,
            account=account,
            transport=transport,
            timeout=timeout,
            limiter=limiter,
            max_attempts=max_attempts,
            sleep=sleep,
        )

    def __repr__(self) -> str:
        return f"WooCommerceClient(base_url={str(self.http.base_url)!r}, account={self.account!r})"

    # -- ApiClient hooks -------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": self.__authorization, "Accept": "application/json"}

    def error_code(self, response: httpx.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        code = body.get("code") if isinstance(body, dict) else None
        return code[:80] if isinstance(code, str) else None

    def observe(self, operation: str, response: httpx.Response) -> None:
        """A host that announces its window: stop sending when ``RateLimit-Remaining`` hits 0."""
        if _int_header(response, "RateLimit-Remaining") != 0:
            return
        wait = parse_retry_after(response.headers.get("RateLimit-Retry-After"))
        reset = _int_header(response, "RateLimit-Reset")
        if wait is None and reset is not None:
            wait = max(0.0, reset - time.time())
        if wait:
            # a new window admits requests at once: resume with a token, not an empty bucket
            self.limiter.pause(self.limit_key(operation), wait, resume_tokens=1.0)

    # -- helpers ---------------------------------------------------------------------------

    def _json(self, operation: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise PayloadError(f"{operation}: response is not JSON") from None

    def _object(self, operation: str, response: httpx.Response) -> dict[str, Any]:
        body = self._json(operation, response)
        if not isinstance(body, dict):
            raise PayloadError(f"{operation}: expected a JSON object")
        return body

    def _list(self, operation: str, response: httpx.Response) -> list[dict[str, Any]]:
        body = self._json(operation, response)
        if not isinstance(body, list) or not all(isinstance(i, dict) for i in body):
            raise PayloadError(f"{operation}: expected a JSON array of objects")
        return body

    # -- orders ----------------------------------------------------------------------------

    def list_orders_page(
        self, modified_after: dt.datetime, modified_before: dt.datetime, page: int
    ) -> OrdersPage:
        params = {
            # Woo compares strictly (>, <): one second back keeps orders modified exactly at
            # ``since``; rounding ``until`` up keeps the window [since, until) on whole seconds
            "modified_after": _wc_time(_floor_second(modified_after) - dt.timedelta(seconds=1)),
            "modified_before": _wc_time(_ceil_second(modified_before)),
            "dates_are_gmt": "true",
            "orderby": "modified",
            "order": "asc",
            "per_page": str(self.per_page),
            "page": str(page),
        }
        response = self.request("list_orders", "GET", "/orders", params=params)
        return OrdersPage(
            items=self._list("list_orders", response),
            total=_int_header(response, "X-WP-Total"),
            total_pages=_int_header(response, "X-WP-TotalPages"),
        )

    def iter_order_pages(
        self,
        modified_after: dt.datetime,
        modified_before: dt.datetime,
        resume: str | None = None,
        *,
        max_restarts: int = 3,
    ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """Every order modified in the window, a page at a time, each with the token that
        resumes after it (None after the last page).

        The window's end is fixed, so an order modified while we page leaves the result set and
        everything after it moves one place towards page 1: the next page would skip an order.
        ``X-WP-Total`` shrinking shows it; we then re-read from page 1 (orders already returned
        in this call are skipped; a resumed call may return some again, which the newer-wins
        intake absorbs). Orders that left are newer than the window: the next poll has them.
        """
        seen: set[tuple[str, str]] = set()
        state = json.loads(resume) if resume else {}
        restarts: int = state.get("restarts", 0)
        page: int = state.get("page", 1)
        first_total: int | None = state.get("total")
        while True:
            result = self.list_orders_page(modified_after, modified_before, page)
            if first_total is None or page == 1:
                first_total = result.total
            elif result.total is not None and result.total < first_total:
                if restarts < max_restarts:
                    restarts += 1
                    log.info("woocommerce.orders.restart", account=self.account, page=page)
                    page = 1
                    continue
                log.warning("woocommerce.orders.window_shifting", account=self.account)
            items = []
            for item in result.items:
                key = (str(item.get("id")), str(item.get("date_modified_gmt")))
                if key not in seen:
                    seen.add(key)
                    items.append(item)
            last = result.total_pages if result.total_pages is not None else page
            if not result.items or page >= last:
                yield items, None
                return
            page += 1
            yield items, json.dumps({"page": page, "total": first_total, "restarts": restarts})

    def get_order(self, order_id: str) -> dict[str, Any]:
        response = self.request("get_order", "GET", f"/orders/{_path_id(order_id)}")
        return self._object("get_order", response)

    def update_order(self, order_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        response = self.request(
            "update_order", "PUT", f"/orders/{_path_id(order_id)}", json=changes
        )
        return self._object("update_order", response)

    def create_refund(self, order_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /orders/{id}/refunds``; ``api_refund: true`` has the order's payment gateway
        give the money back (without it Woo only records the refund)."""
        response = self.request(
            "create_refund", "POST", f"/orders/{_path_id(order_id)}/refunds", json=body,
            replay=False,  # Woo has no idempotency key: a second POST is a second refund
        )  # fmt: skip
        return self._object("create_refund", response)

    def list_refunds(self, order_id: str) -> list[dict[str, Any]]:
        """``GET /orders/{id}/refunds``: the order's refunds whole, with their line items (an
        order has few: one page of the most Woo gives)."""
        response = self.request(
            "list_refunds", "GET", f"/orders/{_path_id(order_id)}/refunds",
            params={"per_page": MAX_PER_PAGE},
        )  # fmt: skip
        return self._list("list_refunds", response)

    def list_notes(self, order_id: str) -> list[dict[str, Any]]:
        response = self.request(
            "list_notes", "GET", f"/orders/{_path_id(order_id)}/notes", params={"type": "any"}
        )
        return self._list("list_notes", response)

    def add_note(self, order_id: str, note: str, *, customer_note: bool) -> dict[str, Any]:
        response = self.request(
            "add_note",
            "POST",
            f"/orders/{_path_id(order_id)}/notes",
            json={"note": note, "customer_note": customer_note},
            replay=False,  # a second POST is a second note (and a second e-mail to the buyer)
        )
        return self._object("add_note", response)

    def count_orders(self) -> int | None:
        response = self.request("list_orders", "GET", "/orders", params={"per_page": "1"})
        self._list("list_orders", response)
        return _int_header(response, "X-WP-Total")

    # -- products / stock ------------------------------------------------------------------

    def iter_products(self, path: str = "/products") -> Iterator[dict[str, Any]]:
        """Every product at ``path`` (``/products``, or ``/products/{id}/variations``), page by
        page (``per_page`` 100, ``X-WP-TotalPages``)."""
        operation = "list_products"
        page = 1
        while True:
            params = {"per_page": str(MAX_PER_PAGE), "page": str(page)}
            response = self.request(operation, "GET", path, params=params)
            items = self._list(operation, response)
            yield from items
            pages = _int_header(response, "X-WP-TotalPages") or page
            if not items or page >= pages:
                return
            page += 1

    def batch_update(self, path: str, updates: Sequence[dict[str, Any]]) -> BatchResult:
        """``POST {path}`` with ``{"update": [...]}`` in chunks of ``BATCH_LIMIT``.

        A batch answers 200 even when items fail (each failed item carries ``error``, e.g.
        ``woocommerce_rest_product_invalid_id``); they come back in ``failed`` as (id, code).
        """
        result = BatchResult()
        for start in range(0, len(updates), BATCH_LIMIT):
            chunk = list(updates[start : start + BATCH_LIMIT])
            response = self.request("batch_products", "POST", path, json={"update": chunk})
            body = self._object("batch_products", response)
            updated = body.get("update", [])
            if not isinstance(updated, list):
                raise PayloadError("batch_products: 'update' is not a list")
            for sent, item in zip(chunk, updated, strict=False):
                error = item.get("error") if isinstance(item, dict) else None
                if error:
                    code = error.get("code") if isinstance(error, dict) else None
                    result.failed.append((str(sent.get("id")), str(code or "error")[:80]))
                elif isinstance(item, dict):
                    result.updated.append(item)
        return result


def _path_id(value: str) -> str:
    """Order ids are positive integers in Woo; refuse anything that could change the path."""
    text = str(value).strip()
    if not text.isdigit() or not text.isascii():
        raise ValidationError("woocommerce: order ids are positive integers")
    return text
