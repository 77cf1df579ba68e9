"""Stock per location (orders/stock.py): a reservation takes from the first of the account's
locations that holds all of a line, a listing is pushed the sum over its account's locations,
on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy import select

from db.models import (
    ChannelAccount,
    Listing,
    StockItem,
    StockLevel,
    StockLocation,
    StockReservation,
)
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from domain.states import OrderState
from orders import stock, stock_push
from orders.reservation import reserve
from tests.support.shop import Shop


class Channel:
    """A marketplace that applies every quantity it is sent and remembers the last."""

    stock_batch_size = 50

    def __init__(self) -> None:
        self.shown: dict[str, int] = {}
        self.locations: dict[str, str | None] = {}

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        for u in updates:
            self.shown[u.sku] = u.quantity
            self.locations[u.sku] = u.location_id
        return StockPushResult(applied=[u.listing_id for u in updates])

    def list_listings(self) -> Iterator[ChannelListing]:
        return iter(())


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    import workflows.stock

    monkeypatch.setattr(workflows.stock, "schedule_flush", lambda ids: None)


@pytest.fixture
def depots(shop: Shop) -> dict[str, int]:
    """Two more warehouses beside ``main``."""
    with shop.transaction() as session:
        return {code: stock.add_location(session, code, code.title()) for code in ("east", "west")}


def _count(shop: Shop, sku: str, **at: int) -> None:
    with shop.transaction() as session:
        for code, units in at.items():
            stock.set_on_hand(session, sku, units, location=code, actor="test")


def _levels(shop: Shop, sku: str) -> dict[str, tuple[int, int]]:
    with shop.transaction() as session:
        rows = session.execute(
            select(StockLocation.code, StockLevel.on_hand, StockLevel.reserved)
            .join(StockLevel, StockLevel.location_id == StockLocation.id)
            .where(StockLevel.sku == sku)
        ).all()  # fmt: skip
        return {code: (on_hand, reserved) for code, on_hand, reserved in rows}


def _sums(shop: Shop, sku: str) -> tuple[int, int]:
    (item,) = shop.rows(StockItem, sku=sku)
    return item.on_hand, item.reserved


def _account(shop: Shop, name: str, locations: list[tuple[str, str | None]]) -> ChannelAccount:
    with shop.transaction() as session:
        account = ChannelAccount(name=name, channel="shopify", api_base_url="http://x.test")
        session.add(account)
        session.flush()
        stock.set_account_locations(session, account.id, locations)
        return account


def _listing(shop: Shop, account: ChannelAccount, sku: str) -> None:
    with shop.transaction() as session:
        session.add(Listing(channel_account_id=account.id, sku=sku, external_id=f"inv-{sku}",
                            external_location_id="gid://shopify/Location/found",
                            want_version=1, pushed_version=0,
                            dirty_at=dt.datetime.now(dt.UTC)))  # fmt: skip


def test_the_migration_makes_main_and_a_count_without_a_location_goes_there(shop: Shop) -> None:
    assert [loc.code for loc in shop.rows(StockLocation)] == ["main"]
    _count(shop, "A", main=4)
    assert _levels(shop, "A") == {"main": (4, 0)}
    assert _sums(shop, "A") == (4, 0)


def test_a_reservation_takes_from_the_second_location_when_the_first_is_short(
    shop: Shop, depots: dict[str, int]
) -> None:
    account = _account(shop, "two-depots", [("east", None), ("west", None)])
    _count(shop, "A", east=1, west=5)
    order = shop.order(OrderState.NEW, lines={"A": 3}, account=account)

    assert reserve(shop.transaction, order).result == "reserved"

    (held,) = shop.rows(StockReservation, order_id=order)
    assert (held.quantity, held.location_id) == (3, depots["west"])
    assert _levels(shop, "A") == {"east": (1, 0), "west": (5, 3)}
    assert _sums(shop, "A") == (6, 3)

    # the next order fits in the first location again: it is taken from there
    small = shop.order(OrderState.NEW, lines={"A": 1}, account=account)
    assert reserve(shop.transaction, small).result == "reserved"
    assert _levels(shop, "A") == {"east": (1, 1), "west": (5, 3)}

    # a release gives the units back where they were held
    shop.move(order, OrderState.CANCELLED)
    with shop.transaction() as session:
        assert stock.release(session, order) == 1
    assert _levels(shop, "A") == {"east": (1, 1), "west": (5, 0)}
    assert _sums(shop, "A") == (6, 1)


def test_a_line_no_single_location_holds_waits_on_hold_and_takes_nothing(
    shop: Shop, depots: dict[str, int]
) -> None:
    account = _account(shop, "two-depots", [("east", None), ("west", None)])
    _count(shop, "A", east=2, west=2)
    _count(shop, "B", east=9)
    order = shop.order(OrderState.NEW, lines={"A": 3, "B": 1}, account=account)

    assert reserve(shop.transaction, order).result == "on_hold"

    assert shop.get(order).state == OrderState.ON_HOLD
    assert [e.detail.get("short") for e in shop.events(order) if e.to_state == "on_hold"] == [
        {"A": 1}  # the best location has 2 of the 3
    ]
    assert shop.rows(StockReservation) == []
    assert _levels(shop, "A") == {"east": (2, 0), "west": (2, 0)}
    assert _sums(shop, "A") == (4, 0) and _sums(shop, "B") == (9, 0)


def test_an_account_draws_only_from_its_own_locations(
    shop: Shop, depots: dict[str, int]
) -> None:
    east_only = _account(shop, "east-only", [("east", None)])
    _count(shop, "A", main=10, west=10, east=1)
    order = shop.order(OrderState.NEW, lines={"A": 2}, account=east_only)

    assert reserve(shop.transaction, order).result == "on_hold"
    assert _sums(shop, "A") == (21, 0)


def test_a_channel_drawing_from_two_locations_is_pushed_the_sum_and_two_lists_differ(
    shop: Shop, depots: dict[str, int]
) -> None:
    both = _account(shop, "both", [("east", "gid://shopify/Location/11"),
                                   ("west", "gid://shopify/Location/22")])  # fmt: skip
    west = _account(shop, "west-only", [("west", None)])
    _count(shop, "A", east=3, west=4, main=100)
    for account in (both, west):
        _listing(shop, account, "A")
    channels = {both.id: Channel(), west.id: Channel()}

    for account_id, channel in channels.items():
        stock_push.flush(shop.transaction, account_id, channel, owner="t")

    assert channels[both.id].shown == {"A": 7}  # east + west, not main
    assert channels[west.id].shown == {"A": 4}
    # Shopify: set at the account's Location for its first location, over the one found
    assert channels[both.id].locations == {"A": "gid://shopify/Location/11"}
    assert channels[west.id].locations == {"A": "gid://shopify/Location/found"}

    # an order of the west-only account takes from west: both accounts are pushed less
    order = shop.order(OrderState.NEW, lines={"A": 2}, account=west)
    assert reserve(shop.transaction, order).result == "reserved"
    for account_id, channel in channels.items():
        stock_push.flush(shop.transaction, account_id, channel, owner="t")
    assert channels[both.id].shown == {"A": 5}
    assert channels[west.id].shown == {"A": 2}

    # stock counted at a location only the first account draws from reaches it alone
    _count(shop, "A", east=10)
    for account_id, channel in channels.items():
        stock_push.flush(shop.transaction, account_id, channel, owner="t")
    assert channels[both.id].shown == {"A": 12}
    assert channels[west.id].shown == {"A": 2}


def test_a_count_below_what_a_location_holds_is_refused_and_an_unknown_location_named(
    shop: Shop, depots: dict[str, int]
) -> None:
    account = _account(shop, "east-first", [("east", None)])
    _count(shop, "A", east=3, west=3)
    order = shop.order(OrderState.NEW, lines={"A": 2}, account=account)
    assert reserve(shop.transaction, order).result == "reserved"

    with pytest.raises(ValueError, match="2 units at east are reserved"), \
            shop.transaction() as session:  # fmt: skip
        stock.set_on_hand(session, "A", 1, location="east")
    with shop.transaction() as session:
        stock.set_on_hand(session, "A", 0, location="west")  # nothing held there
    with pytest.raises(ValueError, match=r"no stock location 'north'.*main, east, west"), \
            shop.transaction() as session:  # fmt: skip
        stock.set_on_hand(session, "A", 1, location="north")
    assert _levels(shop, "A") == {"east": (3, 2), "west": (0, 0)}
    assert _sums(shop, "A") == (3, 2)


def test_a_shipment_location_is_ours_by_code_or_by_the_accounts_marketplace_id(
    shop: Shop, depots: dict[str, int]
) -> None:
    account = _account(shop, "mapped", [("west", "gid://shopify/Location/22")])
    with shop.transaction() as session:
        assert stock.our_location(session, account.id, "east") == depots["east"]
        assert stock.our_location(session, account.id, "gid://shopify/Location/22") == \
            depots["west"]  # fmt: skip
        assert stock.our_location(session, account.id, "gid://shopify/Location/99") is None
        assert stock.our_location(session, shop.account.id, "gid://shopify/Location/22") is None


def test_a_shipment_the_marketplace_does_not_place_leaves_from_where_its_units_are_held(
    shop: Shop, depots: dict[str, int]
) -> None:
    account = _account(shop, "two-depots", [("east", None), ("west", "gid://shopify/Location/22")])
    _count(shop, "A", west=5)
    order = shop.order(OrderState.NEW, lines={"A": 1}, account=account)
    never = shop.order(OrderState.NEW, lines={"UNTRACKED": 1}, account=account)
    assert reserve(shop.transaction, order).result == "reserved"
    (main,) = shop.rows(StockLocation, code="main")
    with shop.transaction() as session:
        assert stock.shipment_location(session, order, None) == ("west", depots["west"])
        assert stock.shipment_location(session, never, None) == ("main", main.id)
        assert stock.shipment_location(session, order, "gid://shopify/Location/22") == (
            "gid://shopify/Location/22", depots["west"])  # fmt: skip
