"""What every marketplace connector offers the workflows (OCA's Backend + Adapter in one).

A connector is built from an ``AccountConfig`` (the row in ``channel_accounts``, detached from
the database) plus the seams tests swap: an httpx transport, a rate limiter, a sleep function.
The workflows only ever see ``CanonicalOrder`` objects.

``AccountConfig.rate_limits`` is the account's ``channel_accounts.rate_limits`` column, parsed
(``registry.parse_rate_limits``): each connector lays it over its documented buckets, so every
connector built for the account (polling, ``ship``, ``accounts test``) uses the same numbers.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from domain.canonical import CanonicalOrder
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from integrations.ratelimit import AccountRateLimits, RateLimiter

__all__ = [
    "AccountConfig",
    "ConnectorFactory",
    "ConnectorSeams",
    "MarketplaceConnector",
    "OrderPage",
    "PagedOrders",
    "ShipmentGroup",
    "orders_of",
]


@dataclass(frozen=True)
class AccountConfig:
    name: str
    channel: str  # the registered marketplace's name (``integrations.registry``)
    shop: str = ""  # shop domain / site URL / marketplace id
    api_base_url: str | None = None  # None = the marketplace's production URL
    credentials: Mapping[str, Any] = field(default_factory=dict, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    #: the account's overrides of the documented rate limits (empty = the defaults)
    rate_limits: AccountRateLimits = field(default_factory=AccountRateLimits)


@dataclass
class ConnectorSeams:
    transport: httpx.BaseTransport | None = None
    limiter: RateLimiter | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    #: in how many parts at once a long window may be read (``OrderPage.lanes``): the
    #: marketplace's bulk export split by bytes, where it has one (Shopify)
    lanes: int = 1


@dataclass(frozen=True)
class OrderPage:
    """One page of a poll: its orders, and where to go on from (None: the window is read)."""

    orders: list[CanonicalOrder]
    #: an opaque token that resumes the same window after this page (the marketplace's page
    #: cursor, page number or offset, with what the connector fixed on the first page)
    resume: str | None
    #: the rest of the window split in parts read apart, a token each (each read on to its own
    #: last page, whose ``resume`` is None); given instead of orders, on a page of its own
    lanes: tuple[str, ...] = ()


def orders_of(pages: Iterator[OrderPage]) -> Iterator[CanonicalOrder]:
    """The orders of every page, in order (``fetch_updated_orders`` from ``fetch_pages``)."""
    for page in pages:
        yield from page.orders


class PagedOrders:
    """A connector's ``fetch_updated_orders``, made once from its ``fetch_pages``."""

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        raise NotImplementedError

    def fetch_updated_orders(
        self, since: dt.datetime, until: dt.datetime | None = None
    ) -> Iterator[CanonicalOrder]:
        """Every order updated in [since, until), page by page within the rate limit."""
        return orders_of(self.fetch_pages(since, until))

    def fetch_history(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        """A long window (a full sync, a first sync): ``fetch_pages``, unless the marketplace
        has a bulk export (Shopify overrides this)."""
        return self.fetch_pages(since, until, resume)


@dataclass(frozen=True)
class ShipmentGroup:
    """Lines the marketplace ships together from one of its locations (Shopify: the open
    fulfillment orders of one location): ``lines`` = (marketplace line id, quantity)."""

    location: str
    lines: tuple[tuple[str, int], ...]


class MarketplaceConnector(Protocol):
    #: the upper bound of the last ``fetch_updated_orders`` as the marketplace applied it, when
    #: it may cover less than was asked (Amazon only lists changes at least two minutes old);
    #: None = the whole window asked for was read
    last_window_end: dt.datetime | None

    def fetch_updated_orders(
        self, since: dt.datetime, until: dt.datetime | None = None
    ) -> Iterator[CanonicalOrder]:
        """Every order updated in [since, until), page by page within the rate limit."""
        ...

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        """The same, a page at a time, each with the token that resumes after it: a sync
        commits each page with its token and a later task goes on from there (``resume``)."""
        ...

    def fetch_history(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        """The same for a long window (a full sync, a first sync): a bulk export where the
        marketplace has one; its tokens and ``fetch_pages``' go on with each other."""
        ...

    def get_order(self, external_id: str) -> CanonicalOrder: ...

    def shipment_groups(self, external_id: str) -> list[ShipmentGroup]:
        """How the marketplace splits the order's open lines by location (one shipment each);
        ``[]``: it does not (the order ships from our one location)."""
        ...

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
        """Tell the marketplace a shipment left, with its tracking number: ``lines`` =
        (marketplace line id, quantity) in it (none: everything still open), ``location``
        where it left from, ``last``: the order's last shipment."""
        ...

    def push_cancellation(self, external_id: str, *, reason: str, idempotency_key: str) -> None:
        """Tell the marketplace we cancelled the order (a no-op when it is cancelled there
        already); a marketplace where the seller cannot cancel raises ``PermanentError``."""
        ...

    def push_delivery(
        self, external_id: str, *, tracking_number: str, delivered_at: str, idempotency_key: str
    ) -> None:
        """Tell the marketplace the parcel with this tracking number was delivered (only for a
        marketplace that takes it: ``Marketplace.takes_delivery``)."""
        ...

    #: quantities per bulk stock call (the API's maximum: Shopify 250, WooCommerce 100,
    #: eBay 25; Amazon's patchListingsItem takes one SKU)
    stock_batch_size: int

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        """Set the available quantity of each listing in one bulk call (at most
        ``stock_batch_size`` updates); says per listing whether it was applied, found drifted
        (the channel did not show ``expected``) or refused."""
        ...

    def list_listings(self) -> Iterator[ChannelListing]:
        """Every listing of the account on the channel, with its identifiers and the quantity
        it shows now (``listings sync``, the nightly stock check)."""
        ...

    def test_connection(self) -> str:
        """One real authenticated call; returns a short description or raises an error."""
        ...

    def close(self) -> None: ...


class ConnectorFactory(Protocol):
    """How a connector is built: a connector class is one (its extra keyword arguments, for
    tests and benchmarks, have defaults)."""

    def __call__(
        self, account: AccountConfig, seams: ConnectorSeams | None = None
    ) -> MarketplaceConnector: ...
