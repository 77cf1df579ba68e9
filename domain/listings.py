"""What the stock flusher and a marketplace connector say to each other (pure data).

``ChannelListing`` is a SKU as the marketplace lists it (its identifiers and, when the listing
call returns it, the quantity it shows now); ``StockUpdate`` is one quantity to set on one of
our listings; ``StockPushResult`` is what became of each update of one bulk call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ChannelListing", "StockPushResult", "StockUpdate"]


@dataclass(frozen=True)
class ChannelListing:
    sku: str
    external_id: str
    #: WooCommerce: the variable product of a variation; eBay: the offer id
    parent_id: str | None = None
    #: Shopify: the Location GID the quantity is set at; Amazon: the marketplace id
    location_id: str | None = None
    #: the quantity the channel shows now (None = the listing call does not say)
    quantity: int | None = None
    #: Amazon FBA: Amazon holds the stock; never pushed
    fulfilled_by_marketplace: bool = False


@dataclass(frozen=True)
class StockUpdate:
    listing_id: int  # ours: the key of every result
    sku: str
    external_id: str | None
    parent_id: str | None
    location_id: str | None
    quantity: int
    #: what we last pushed (Shopify's ``changeFromQuantity``); None = never pushed
    expected: int | None


@dataclass
class StockPushResult:
    #: listing ids the channel now shows at our quantity
    applied: list[int] = field(default_factory=list)
    #: listing id → the quantity the channel showed instead of ``expected`` (someone changed
    #: it there); nothing was set for these
    drifted: dict[int, int] = field(default_factory=dict)
    #: listing id → why the channel refused it (unknown SKU, deleted product): not retried
    refused: dict[int, str] = field(default_factory=dict)
