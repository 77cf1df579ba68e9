"""The toy marketplace's REST API: an API key header, orders listed by update time in pages."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from integrations.http import ApiClient
from integrations.ratelimit import Bucket, RateLimiter, overlay

__all__ = ["PAGE_SIZE", "RATE_LIMITS", "ToyClient"]

PAGE_SIZE = 2  # small, so that a poll of a few orders reads several pages
RATE_LIMITS: Mapping[str, Bucket] = {
    "list_orders": Bucket(20.0, 20.0),
    "get_order": Bucket(20.0, 20.0),
    "ship_order": Bucket(5.0, 5.0),
}


class ToyClient(ApiClient):
    rate_limits = RATE_LIMITS

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        account: str,
        rate_limits: Mapping[str, Bucket],
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate_limits = overlay(RATE_LIMITS, rate_limits)
        self._api_key = api_key
        super().__init__(
            base_url, account=account, transport=transport, limiter=limiter, sleep=sleep
        )

    def auth_headers(self) -> dict[str, str]:
        return {"X-Toy-Key": self._api_key}

    def orders_page(self, since: dt.datetime, until: dt.datetime, offset: int) -> dict[str, Any]:
        params = {
            "updated_since": since.isoformat(),
            "updated_before": until.isoformat(),
            "offset": offset,
            "limit": PAGE_SIZE,
        }
        page: dict[str, Any] = self.request("list_orders", "GET", "/orders", params=params).json()
        return page

    def get_order(self, external_id: str) -> dict[str, Any]:
        order: dict[str, Any] = self.request("get_order", "GET", f"/orders/{external_id}").json()
        return order

    def ship_order(self, external_id: str, tracking_number: str, idempotency_key: str) -> None:
        self.request(
            "ship_order",
            "POST",
            f"/orders/{external_id}/shipments",
            json={"tracking_number": tracking_number},
            headers={"Idempotency-Key": idempotency_key},
        )
