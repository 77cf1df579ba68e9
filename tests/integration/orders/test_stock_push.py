"""Stock out to the channels (orders/stock.py marks, orders/stock_push.py flusher), on SQLite and
PostgreSQL, against a fake channel that behaves like Shopify's compare-and-set: a quantity is
set only if the channel still shows what we said we last pushed (``expected``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select, update

from db.models import ChannelAccount, Listing, StockCheck, StockDrift, StockItem
from domain.buffer import BufferRule, pushed_quantity
from domain.errors import ServerError
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from domain.states import OrderState
from orders import stock, stock_push
from orders.reservation import reserve
from tests.support.shop import Shop


class FakeChannel:
    """A marketplace's listings: quantity per SKU, a log of the bulk calls, and a hook that
    runs inside a call before the channel applies it (to interleave a second flusher)."""

    def __init__(self, skus: Sequence[str], *, batch: int = 2, compare: bool = True) -> None:
        self.shown: dict[str, int] = dict.fromkeys(skus, 0)
        self.calls: list[list[tuple[str, int]]] = []
        self.stock_batch_size = batch
        self.compare = compare
        self.before_apply: Callable[[], None] | None = None
        self.fail_with: Exception | None = None
        self.fba: set[str] = set()

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        assert len(updates) <= self.stock_batch_size
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append([(u.sku, u.quantity) for u in updates])
        hook, self.before_apply = self.before_apply, None
        if hook is not None:
            hook()
        result = StockPushResult()
        for u in updates:
            if u.sku not in self.shown:
                result.refused[u.listing_id] = "NOT_FOUND"
            elif self.compare and u.expected is not None and self.shown[u.sku] != u.expected:
                result.drifted[u.listing_id] = self.shown[u.sku]
            else:
                self.shown[u.sku] = u.quantity
                result.applied.append(u.listing_id)
        return result

    def list_listings(self) -> Iterator[ChannelListing]:
        for sku, qty in sorted(self.shown.items()):
            yield ChannelListing(sku=sku, external_id=f"item-{sku}", quantity=qty,
                                 fulfilled_by_marketplace=sku in self.fba)  # fmt: skip


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[set[int]]:
    """The after-commit trigger, recorded instead of published (no broker here)."""
    import workflows.stock

    published: list[set[int]] = []
    monkeypatch.setattr(workflows.stock, "schedule_flush", lambda ids: published.append(set(ids)))
    return published


def _listings(shop: Shop, skus: Sequence[str], **fields: Any) -> dict[str, int]:
    with shop.transaction() as session:
        rows = [Listing(channel_account_id=shop.account.id, sku=s, external_id=f"item-{s}",
                        want_version=1, pushed_version=0, dirty_at=dt.datetime.now(dt.UTC),
                        **fields) for s in skus]  # fmt: skip
        session.add_all(rows)
        session.flush()
        return {r.sku: r.id for r in rows}


def _listing(shop: Shop, sku: str) -> Listing:
    (found,) = shop.rows(Listing, sku=sku)
    return found


def _set(shop: Shop, sku: str, on_hand: int) -> None:
    with shop.transaction() as session:
        stock.set_on_hand(session, sku, on_hand, actor="test")


def _flush(shop: Shop, channel: FakeChannel, owner: str = "flusher-1",
           lease: dt.timedelta = dt.timedelta(minutes=5)) -> stock_push.FlushResult:  # fmt: skip
    return stock_push.flush(shop.transaction, shop.account.id, channel, owner=owner, lease=lease)


def test_every_change_of_what_is_available_marks_the_listings_in_its_own_transaction(
    shop: Shop, no_broker: list[set[int]]
) -> None:
    _listings(shop, ["A", "B"])
    _set(shop, "A", 10)
    _set(shop, "B", 10)

    def versions() -> dict[str, int]:
        return {row.sku: row.want_version for row in shop.rows(Listing)}

    assert versions() == {"A": 2, "B": 2}
    assert no_broker == [{shop.account.id}, {shop.account.id}]  # after each commit

    order = shop.order(OrderState.NEW, lines={"A": 2, "B": 1})
    reserve(shop.transaction, order)
    assert versions() == {"A": 3, "B": 3}

    shop.move(order, OrderState.CANCELLED)
    with shop.transaction() as session:
        assert stock.release(session, order) == 2
    assert versions() == {"A": 4, "B": 4}

    # a rolled-back change marks nothing and triggers nothing
    before = len(no_broker)
    with pytest.raises(RuntimeError), shop.transaction() as session:
        stock.set_on_hand(session, "A", 3)
        raise RuntimeError("rolled back")
    assert versions() == {"A": 4, "B": 4}
    assert len(no_broker) == before

    # a parcel leaving changes on hand and reserved alike: available is the same, no mark
    order2 = shop.order(OrderState.NEW, lines={"A": 1})
    reserve(shop.transaction, order2)
    with shop.transaction() as session:
        stock.consume(session, order2)
    assert versions()["A"] == 5  # the reservation's mark only


def test_a_flush_pushes_the_buffered_available_quantity_in_bulk_and_records_it(shop: Shop) -> None:
    skus = ["A", "B", "C", "D", "E"]
    ids = _listings(shop, skus)
    with shop.transaction() as session:
        session.execute(update(ChannelAccount).values(stock_keep_percent=20))
        session.execute(update(Listing).where(Listing.sku == "E").values(buffer_max=3))
    for i, sku in enumerate(skus):
        _set(shop, sku, 10 + i)
    channel = FakeChannel(skus, batch=2)

    result = _flush(shop, channel)

    assert result.calls == 3 and result.pushed == 5  # 5 listings, at most 2 a call
    expected = {s: pushed_quantity(10 + i, BufferRule(keep_percent=20)) for i, s in enumerate(skus)}
    expected["E"] = 3
    assert channel.shown == expected
    for sku in skus:
        listing = _listing(shop, sku)
        assert listing.pushed_version == listing.want_version
        assert listing.last_pushed_qty == expected[sku] and listing.dirty_at is None
    assert set(ids.values()) == {row.id for row in shop.rows(Listing)}

    # nothing dirty: no call; a change that leaves the buffered number as it was: no call either
    assert _flush(shop, channel).calls == 0
    _set(shop, "A", 11)  # 80 % of 10 and of 11 are both 8
    again = _flush(shop, channel)
    assert again.calls == 0 and again.unchanged == 1
    assert _listing(shop, "A").dirty_at is None


def test_two_flushers_of_one_account_never_push_at_once(shop: Shop) -> None:
    _listings(shop, ["A"])
    _set(shop, "A", 5)
    channel = FakeChannel(["A"])
    seen: list[stock_push.FlushResult] = []
    channel.before_apply = lambda: seen.append(_flush(shop, channel, owner="flusher-2"))

    _flush(shop, channel, owner="flusher-1")

    assert seen and seen[0].busy and seen[0].calls == 0
    assert len(channel.calls) == 1 and channel.shown == {"A": 5}


def test_a_push_that_lands_after_a_newer_one_is_not_recorded_and_the_newer_quantity_wins(
    shop: Shop,
) -> None:
    """Flusher 1's lease ran out while its call hung; flusher 2 pushed and recorded a newer
    quantity; then flusher 1's old quantity reached the channel. Its record loses the version
    check, the listing is dirty again, and the channel ends at the newer quantity."""
    _listings(shop, ["A"])
    _set(shop, "A", 10)
    channel = FakeChannel(["A"], compare=False)  # a channel with no compare-and-set
    second: list[stock_push.FlushResult] = []

    def meanwhile() -> None:
        _set(shop, "A", 4)  # a sale elsewhere
        second.append(_flush(shop, channel, owner="flusher-2"))
        assert channel.shown == {"A": 4}

    channel.before_apply = meanwhile
    first = _flush(shop, channel, owner="flusher-1", lease=dt.timedelta(0))  # lease runs out

    assert second[0].pushed == 1
    assert first.lost_races == 1
    assert channel.calls[0] == [("A", 10)] and channel.calls[-1] == [("A", 4)]
    assert channel.shown == {"A": 4}
    listing = _listing(shop, "A")
    assert listing.last_pushed_qty == 4 and listing.pushed_version == listing.want_version


def test_an_older_version_is_never_recorded_over_a_newer_one(shop: Shop) -> None:
    (listing_id,) = _listings(shop, ["A"]).values()
    with shop.transaction() as session:
        session.execute(
            update(Listing).where(Listing.id == listing_id)
            .values(want_version=9, pushed_version=8, last_pushed_qty=4)
        )  # fmt: skip
    late = stock_push._Due(listing_id, "A", "item-A", None, None, version=7, quantity=10,
                           last_pushed=None)  # fmt: skip
    result = stock_push.FlushResult()
    with shop.transaction() as session:
        stock_push._record(session, [late], StockPushResult(applied=[listing_id]),
                           dt.datetime.now(dt.UTC), result)  # fmt: skip
    listing = _listing(shop, "A")
    assert listing.pushed_version == 8
    assert listing.want_version == 10  # pushed again: the channel may show the old 10 now
    assert listing.last_pushed_qty is None  # unknown which landed last: no compare-from
    assert result.lost_races == 1


def test_a_quantity_changed_in_the_channel_admin_is_reported_then_repaired(shop: Shop) -> None:
    _listings(shop, ["A", "B"])
    _set(shop, "A", 10)
    _set(shop, "B", 10)
    channel = FakeChannel(["A", "B"])
    _flush(shop, channel)
    channel.shown["A"] = 2  # someone edits it in the marketplace's admin
    _set(shop, "A", 9)

    result = _flush(shop, channel)

    assert result.drifted == 1
    assert channel.shown == {"A": 9, "B": 10}  # repaired: ours again, compared from 2
    (drift,) = shop.rows(StockDrift)
    assert (drift.found_by, drift.channel_qty, drift.expected_qty) == ("push", 2, 10)
    assert drift.repaired_at is not None


def test_the_nightly_check_finds_drift_on_clean_listings_and_stores_a_report(
    shop: Shop, no_broker: list[set[int]]
) -> None:
    _listings(shop, ["A", "B", "GONE"])
    for sku in ("A", "B", "GONE"):
        _set(shop, sku, 6)
    channel = FakeChannel(["A", "B", "GONE"], compare=False)
    _flush(shop, channel)
    channel.shown["B"] = 40  # edited in the admin; the push side never saw it
    del channel.shown["GONE"]  # the product was deleted on the channel

    report = stock_push.check(shop.transaction, shop.account.id, channel)

    assert (report.checked, report.drifted, report.missing_on_channel) == (2, 1, 1)
    (run,) = shop.rows(StockCheck)
    assert (run.status, run.listings_checked, run.drifted, run.missing_on_channel) == (
        "ok", 2, 1, 1)  # fmt: skip
    (drift,) = shop.rows(StockDrift)
    assert (drift.found_by, drift.channel_qty, drift.expected_qty) == ("nightly", 40, 6)
    assert no_broker[-1] == {shop.account.id}  # the repair is triggered after commit
    _flush(shop, channel)
    assert channel.shown["B"] == 6
    assert shop.rows(StockDrift)[0].repaired_at is not None


def test_fba_listings_are_recorded_and_never_pushed(shop: Shop) -> None:
    channel = FakeChannel(["MINE", "FBA-1"])
    channel.fba = {"FBA-1"}
    _set(shop, "MINE", 3)
    _set(shop, "FBA-1", 3)

    report = stock_push.sync_listings(shop.transaction, shop.account.id, channel)
    assert report.created == 2 and report.fulfilled_by_marketplace == 1
    _set(shop, "FBA-1", 7)
    _set(shop, "MINE", 7)
    _flush(shop, channel)

    assert channel.calls == [[("MINE", 7)]]
    fba = _listing(shop, "FBA-1")
    assert fba.fulfilled_by_marketplace and fba.pushed_version == 0 and fba.want_version == 1
    # nor does the safety net keep flushing the account for it
    with shop.transaction() as session:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        assert stock_push.dirty_accounts(session, later) == []


def test_listings_sync_records_identifiers_and_reports_skus_on_one_side_only(
    shop: Shop, no_broker: list[set[int]]
) -> None:
    _set(shop, "OURS-ONLY", 1)
    _set(shop, "BOTH", 2)
    channel = FakeChannel(["BOTH", "THEIRS-ONLY"])

    report = stock_push.sync_listings(shop.transaction, shop.account.id, channel)
    again = stock_push.sync_listings(shop.transaction, shop.account.id, channel)

    assert (report.found, report.created, again.created) == (2, 2, 0)
    assert report.channel_only == ["THEIRS-ONLY"] and report.ours_only == ["OURS-ONLY"]
    assert {row.sku: row.external_id for row in shop.rows(Listing)} == {
        "BOTH": "item-BOTH", "THEIRS-ONLY": "item-THEIRS-ONLY"}  # fmt: skip
    assert no_broker[-1] == {shop.account.id}  # new listings get our quantity
    _flush(shop, channel)
    assert channel.shown == {"BOTH": 2, "THEIRS-ONLY": 0}  # not stock-managed: left alone
    assert all(row.dirty_at is None for row in shop.rows(Listing))


def test_a_failed_push_keeps_what_was_recorded_and_the_rest_stays_dirty_with_the_error(
    shop: Shop,
) -> None:
    _listings(shop, ["A", "B", "C"])
    for sku in ("A", "B", "C"):
        _set(shop, sku, 5)
    results: list[str] = []

    class Flaky(FakeChannel):
        def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
            results.append(updates[0].sku)
            if len(results) == 2:
                raise ServerError("HTTP 503", status=503)
            return super().push_stock(updates)

    flaky = Flaky(["A", "B", "C"], batch=1)
    with pytest.raises(ServerError):
        _flush(shop, flaky)
    assert flaky.shown == {"A": 5, "B": 0, "C": 0}
    assert _listing(shop, "A").dirty_at is None  # recorded before the failure
    assert _listing(shop, "B").dirty_at is not None and _listing(shop, "C").dirty_at is not None
    # the failed flusher keeps the account for its retry: another one finds it busy
    assert shop.rows(ChannelAccount)[0].stock_flush_owner == "flusher-1"
    assert _flush(shop, flaky, owner="flusher-2").busy

    assert stock_push.give_up(shop.transaction, shop.account.id, "ServerError: HTTP 503",
                              owner="flusher-1") == 2  # fmt: skip
    assert shop.rows(ChannelAccount)[0].stock_flush_owner is None
    assert _listing(shop, "B").last_error == "ServerError: HTTP 503"
    with shop.maker() as session:
        assert stock_push.dirty_accounts(session, dt.datetime.now(dt.UTC)) == [shop.account.id]

    _flush(shop, flaky, owner="flusher-3")  # the channel is back
    assert flaky.shown == {"A": 5, "B": 5, "C": 5}
    assert _listing(shop, "B").last_error is None


def test_sku_without_stock_is_not_pushed_and_an_unknown_listing_is_refused_with_a_reason(
    shop: Shop,
) -> None:
    _listings(shop, ["UNMANAGED", "GHOST", "OK"])
    _set(shop, "GHOST", 4)
    _set(shop, "OK", 4)
    channel = FakeChannel(["UNMANAGED", "OK"])  # GHOST is not on the channel
    result = _flush(shop, channel)
    assert result.refused == 1 and channel.shown == {"UNMANAGED": 0, "OK": 4}
    ghost = _listing(shop, "GHOST")
    assert ghost.last_error == "NOT_FOUND" and ghost.dirty_at is None
    with shop.maker() as session:
        assert session.scalar(select(StockItem.counted_by).where(StockItem.sku == "OK")) == "test"


class FeedChannel(FakeChannel):
    """A channel that also takes a feed (as Amazon's JSON_LISTINGS_FEED) above a threshold."""

    stock_feed_threshold = 3
    stock_feed_max_wait_s = 60.0

    def __init__(self, skus: Sequence[str]) -> None:
        super().__init__(skus, batch=1, compare=False)
        self.feeds: list[list[tuple[str, int]]] = []

    def push_stock_feed(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        self.feeds.append([(u.sku, u.quantity) for u in updates])
        for u in updates:
            self.shown[u.sku] = u.quantity
        return StockPushResult(applied=[u.listing_id for u in updates])


def test_more_changes_than_the_feed_threshold_go_in_one_feed_fewer_call_by_call(
    shop: Shop,
) -> None:
    skus = ["A", "B", "C", "D", "E"]
    _listings(shop, skus)
    for i, sku in enumerate(skus):
        _set(shop, sku, i + 1)
    channel = FeedChannel(skus)

    flushed = _flush(shop, channel)

    assert channel.feeds == [[("A", 1), ("B", 2), ("C", 3), ("D", 4), ("E", 5)]]
    assert channel.calls == []
    assert (flushed.calls, flushed.feeds, flushed.pushed) == (1, 1, 5)
    assert {r.sku: r.last_pushed_qty for r in shop.rows(Listing)} == {
        "A": 1, "B": 2, "C": 3, "D": 4, "E": 5}  # fmt: skip

    # three changes are not more than the threshold: one call each (batch size 1)
    for sku in ("A", "B", "C"):
        _set(shop, sku, 9)
    flushed = _flush(shop, channel)
    assert len(channel.feeds) == 1
    assert channel.calls == [[("A", 9)], [("B", 9)], [("C", 9)]]
    assert (flushed.calls, flushed.feeds) == (3, 0)
