"""What staff see of stock (``ordersync stock show``, ``GET /api/stock/{sku}``, the dashboard's
stock page): on hand, reserved and available, in all and per location, and per channel listing
the locations its account draws from, what it should show,
what we last pushed and when, whether a push is pending or failed, and any drift with both
numbers."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Integer, func, select
from sqlalchemy.orm import Session

from db.models import (
    AccountLocation,
    ChannelAccount,
    Listing,
    StockDrift,
    StockItem,
    StockLevel,
    StockLocation,
)
from orders.stock import available_for
from orders.stock_push import quantity_for

__all__ = [
    "ListingView",
    "LocationView",
    "StockRow",
    "StockView",
    "locations_overview",
    "stock_overview",
    "stock_view",
]


@dataclass
class LocationView:
    code: str
    name: str
    on_hand: int
    reserved: int
    available: int


@dataclass
class ListingView:
    account: str
    channel: str
    external_id: str | None
    fulfilled_by_marketplace: bool
    draws_from: list[str]  # our locations the account sells from, in order
    may_sell: int | None  # available over those locations (before the buffer rule)
    should_show: int | None  # the buffered quantity for our available stock now
    last_pushed_qty: int | None
    last_pushed_at: dt.datetime | None
    pending: bool  # a change not pushed yet
    last_error: str | None
    drift: dict[str, Any] | None  # the latest: channel_qty, expected_qty, found_by, found_at,
    # repaired_at


@dataclass
class StockView:
    sku: str
    on_hand: int
    reserved: int
    available: int
    counted_by: str | None
    locations: list[LocationView] = field(default_factory=list)
    listings: list[ListingView] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stock_view(session: Session, sku: str) -> StockView | None:
    item = session.get(StockItem, sku)
    rows = session.execute(
        select(Listing, ChannelAccount)
        .join(ChannelAccount, ChannelAccount.id == Listing.channel_account_id)
        .where(Listing.sku == sku)
        .order_by(ChannelAccount.name)
    ).all()
    if item is None and not rows:
        return None
    view = StockView(
        sku=sku,
        on_hand=item.on_hand if item else 0,
        reserved=item.reserved if item else 0,
        available=(item.on_hand - item.reserved) if item else 0,
        counted_by=item.counted_by if item else None,
    )
    view.locations = [
        LocationView(code, name, on_hand, reserved, on_hand - reserved)
        for code, name, on_hand, reserved in session.execute(
            select(StockLocation.code, StockLocation.name, StockLevel.on_hand,
                   StockLevel.reserved)
            .join(StockLevel, StockLevel.location_id == StockLocation.id)
            .where(StockLevel.sku == sku)
            .order_by(StockLocation.id)
        )
    ]  # fmt: skip
    for listing, account in rows:
        draws_from = list(session.scalars(
            select(StockLocation.code)
            .join(AccountLocation, AccountLocation.location_id == StockLocation.id)
            .where(AccountLocation.channel_account_id == account.id)
            .order_by(AccountLocation.position)
        )) or ["every location"]  # fmt: skip
        drift = session.scalars(
            select(StockDrift).where(StockDrift.listing_id == listing.id)
            .order_by(StockDrift.id.desc()).limit(1)
        ).first()  # fmt: skip
        view.listings.append(
            ListingView(
                account=account.name, channel=account.channel, external_id=listing.external_id,
                fulfilled_by_marketplace=listing.fulfilled_by_marketplace,
                draws_from=draws_from,
                may_sell=available_for(session, account.id, [sku]).get(sku),
                should_show=None if listing.fulfilled_by_marketplace
                else quantity_for(session, listing, account),
                last_pushed_qty=listing.last_pushed_qty, last_pushed_at=listing.last_pushed_at,
                pending=listing.want_version > listing.pushed_version,
                last_error=listing.last_error,
                drift=None if drift is None else {
                    "channel_qty": drift.channel_qty, "expected_qty": drift.expected_qty,
                    "found_by": drift.found_by, "found_at": drift.found_at,
                    "repaired_at": drift.repaired_at,
                },
            )
        )  # fmt: skip
    return view


@dataclass
class StockRow:
    sku: str
    on_hand: int
    reserved: int
    available: int
    listings: int
    pending: int
    failed: int
    drifts_open: int
    #: location code → available there
    by_location: dict[str, int] = field(default_factory=dict)


def stock_overview(
    session: Session, *, limit: int = 500, problems_only: bool = False
) -> list[StockRow]:
    """One row per SKU: the numbers, and how many of its listings are pending, failed, or
    drifted and not repaired yet; SKUs with problems first."""
    listings = (
        select(
            Listing.sku.label("sku"),
            func.count().label("listings"),
            func.sum((Listing.want_version > Listing.pushed_version).cast(Integer())).label(
                "pending"
            ),
            func.sum(Listing.last_error.is_not(None).cast(Integer())).label("failed"),
        )
        .group_by(Listing.sku)
        .subquery()
    )
    drifts = (
        select(Listing.sku.label("sku"), func.count().label("open"))
        .join(StockDrift, StockDrift.listing_id == Listing.id)
        .where(StockDrift.repaired_at.is_(None))
        .group_by(Listing.sku)
        .subquery()
    )
    query = (
        select(StockItem, listings.c.listings, listings.c.pending, listings.c.failed, drifts.c.open)
        .outerjoin(listings, listings.c.sku == StockItem.sku)
        .outerjoin(drifts, drifts.c.sku == StockItem.sku)
    )
    rows = []
    for item, n, pending, failed, open_drifts in session.execute(query):
        counts = (int(n or 0), int(pending or 0), int(failed or 0), int(open_drifts or 0))
        row = StockRow(item.sku, item.on_hand, item.reserved, item.on_hand - item.reserved, *counts)
        if problems_only and not (row.failed or row.drifts_open):
            continue
        rows.append(row)
    rows.sort(key=lambda r: (-(r.failed + r.drifts_open), -r.pending, r.sku))
    rows = rows[:limit]
    by_sku = {row.sku: row for row in rows}
    for sku, code, free in session.execute(
        select(StockLevel.sku, StockLocation.code, StockLevel.on_hand - StockLevel.reserved)
        .join(StockLocation, StockLocation.id == StockLevel.location_id)
        .where(StockLevel.sku.in_(list(by_sku)))
        .order_by(StockLevel.sku, StockLocation.id)
    ):  # fmt: skip
        by_sku[sku].by_location[code] = int(free)
    return rows


def locations_overview(session: Session) -> list[dict[str, Any]]:
    """Our locations with their units (on hand, reserved) and the accounts that draw from
    each (with the marketplace's location id where one is set)."""
    totals = {
        loc: (int(on_hand or 0), int(reserved or 0))
        for loc, on_hand, reserved in session.execute(
            select(StockLevel.location_id, func.sum(StockLevel.on_hand),
                   func.sum(StockLevel.reserved)).group_by(StockLevel.location_id)
        )
    }  # fmt: skip
    accounts: dict[int, list[str]] = {}
    for loc, name, external in session.execute(
        select(AccountLocation.location_id, ChannelAccount.name,
               AccountLocation.external_location_id)
        .join(ChannelAccount, ChannelAccount.id == AccountLocation.channel_account_id)
        .order_by(ChannelAccount.name)
    ):  # fmt: skip
        accounts.setdefault(loc, []).append(f"{name} ({external})" if external else name)
    return [
        {"code": loc.code, "name": loc.name, "on_hand": totals.get(loc.id, (0, 0))[0],
         "reserved": totals.get(loc.id, (0, 0))[1], "accounts": accounts.get(loc.id, [])}
        for loc in session.scalars(select(StockLocation).order_by(StockLocation.id))
    ]  # fmt: skip
