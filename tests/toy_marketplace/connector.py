"""The toy connector: the ``MarketplaceConnector`` over ``ToyClient``.

Reads ``account.api_base_url`` (required: the toy has no production URL) and
``account.credentials["api_key"]``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping

from domain.canonical import CanonicalOrder
from domain.errors import AuthError, ValidationError
from integrations.base import AccountConfig, ConnectorSeams
from tests.toy_marketplace.client import RATE_LIMITS, ToyClient
from tests.toy_marketplace.mapper import map_order

__all__ = ["ToyConnector"]


class ToyConnector:
    def __init__(self, account: AccountConfig, seams: ConnectorSeams | None = None) -> None:
        seams = seams or ConnectorSeams()
        api_key = account.credentials.get("api_key")
        if not isinstance(api_key, str) or not api_key:
            raise AuthError(f"toy account {account.name!r}: no api_key")
        if not account.api_base_url:
            raise ValidationError(f"toy account {account.name!r}: no api_base_url")
        self.account = account
        self.last_window_end: dt.datetime | None = None  # the window asked for is read whole
        self._clock = seams.clock
        self.client = ToyClient(
            account.api_base_url,
            api_key,
            account=account.name,
            rate_limits=account.rate_limits.over(RATE_LIMITS, account=account.name),
            transport=seams.transport,
            limiter=seams.limiter,
            sleep=seams.sleep,
        )

    def fetch_updated_orders(
        self, since: dt.datetime, until: dt.datetime | None = None
    ) -> Iterator[CanonicalOrder]:
        end = until or self._clock()
        offset = 0
        while True:
            page = self.client.orders_page(since, end, offset)
            for payload in page["orders"]:
                yield map_order(payload, self.account.name)
            if page["next_offset"] is None:
                return
            offset = page["next_offset"]

    def get_order(self, external_id: str) -> CanonicalOrder:
        return map_order(self.client.get_order(external_id), self.account.name)

    def push_fulfillment(
        self, external_id: str, *, tracking_number: str, carrier: str, idempotency_key: str
    ) -> None:
        self.client.ship_order(external_id, tracking_number, idempotency_key)

    def push_stock(self, quantities: Mapping[str, int]) -> None:
        raise ValidationError("toy: stock is not pushed", code="unsupported")

    def test_connection(self) -> str:
        now = self._clock()
        page = self.client.orders_page(now - dt.timedelta(days=1), now, 0)
        return f"toy shop answers ({len(page['orders'])} orders today)"

    def close(self) -> None:
        self.client.close()
