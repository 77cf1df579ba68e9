"""The toy connector: the ``MarketplaceConnector`` over ``ToyClient``.

Reads ``account.api_base_url`` (required: the toy has no production URL) and
``account.credentials["api_key"]``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

from domain.canonical import CanonicalOrder
from domain.errors import AuthError, ValidationError
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from integrations.base import AccountConfig, ConnectorSeams, OrderPage, ShipmentGroup, orders_of
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
        return orders_of(self.fetch_pages(since, until or self._clock()))

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime, resume: str | None = None
    ) -> Iterator[OrderPage]:
        offset = int(resume) if resume else 0
        while True:
            page = self.client.orders_page(since, until, offset)
            orders = [map_order(payload, self.account.name) for payload in page["orders"]]
            following = page["next_offset"]
            yield OrderPage(orders, None if following is None else str(following))
            if following is None:
                return
            offset = following

    def get_order(self, external_id: str) -> CanonicalOrder:
        return map_order(self.client.get_order(external_id), self.account.name)

    def shipment_groups(self, external_id: str) -> list[ShipmentGroup]:
        return []  # one location: the order ships from ours

    def push_fulfillment(
        self,
        external_id: str,
        *,
        tracking_number: str,
        carrier: str,
        idempotency_key: str,
        lines: Sequence[tuple[str, int]] = (),
        location: str = "",
        last: bool = True,
    ) -> None:
        self.client.ship_order(external_id, tracking_number, idempotency_key)

    def push_cancellation(self, external_id: str, *, reason: str, idempotency_key: str) -> None:
        raise ValidationError("toy: orders are not cancelled through the API", code="unsupported")

    def push_delivery(
        self, external_id: str, *, tracking_number: str, delivered_at: str, idempotency_key: str
    ) -> None:
        raise ValidationError(
            "toy: the marketplace takes no delivery events (its declaration says so)",
            code="NotSupported",
        )

    #: the toy shop keeps no stock of ours: it lists nothing, so nothing is ever pushed to it
    stock_batch_size = 1

    def list_listings(self) -> Iterator[ChannelListing]:
        return iter(())

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        return StockPushResult(refused={u.listing_id: "toy: stock is not pushed" for u in updates})

    def test_connection(self) -> str:
        now = self._clock()
        page = self.client.orders_page(now - dt.timedelta(days=1), now, 0)
        return f"toy shop answers ({len(page['orders'])} orders today)"

    def close(self) -> None:
        self.client.close()
