"""Stock out to the channels: the per-account flusher, the nightly check and listings sync.

**Flush** (``flush``). One flusher per account at a time: a lease on the account row
(``stock_flush_owner`` / ``stock_flush_until``, taken by a conditional update). It reads the
account's dirty listings (``want_version > pushed_version``) with our available stock *as it is
now*, applies each listing's buffer rule (``domain/buffer.py``), and sends the quantities that
differ from what the channel was last told in the channel's bulk call, batch by batch
(``StockChannel.stock_batch_size``). Each batch is recorded in its own transaction with a
conditional update, ``pushed_version = :v WHERE pushed_version < :v``: an older quantity is never
recorded over a newer one. A push whose record loses (a second flusher, after a lease ran out,
recorded a newer version first) may have overwritten the newer quantity on the channel, so the
listing is marked dirty again and the current quantity goes out on the next round.

**Drift.** A quantity the channel shows that is not what we last pushed (someone edited it in
the marketplace's admin) is a ``stock_drifts`` row with both numbers. Shopify finds it on every
push (``changeFromQuantity``); the nightly check (``check``) reads every listing. The policy is
ours-wins: the listing is left dirty with the channel's number as the last known one, so the
next push sets ours again (compare-and-set from what is really there) and the drift row is
marked repaired.

Outside calls go through ``StockChannel`` (a connector); a failed call raises out of ``flush``
(what was recorded before stays recorded) and the task retries it with backoff.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import (
    AccountLocation,
    ChannelAccount,
    Listing,
    StockCheck,
    StockDrift,
    StockItem,
)
from db.session import Transaction, dialect_insert, rowcount
from domain.buffer import BufferRule, pushed_quantity
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from orders.stock import DIRTY_ACCOUNTS, available_for

__all__ = [
    "CheckReport",
    "FlushResult",
    "ListingsReport",
    "StockChannel",
    "StockFeedChannel",
    "check",
    "dirty_accounts",
    "flush",
    "give_up",
    "mark_dirty_listings",
    "quantity_for",
    "sync_listings",
]

#: rounds of one flush (a round = every listing dirty when it starts); changes that keep coming
#: after that wait for the next trigger, so one busy account never holds a worker for ever
MAX_ROUNDS = 20
#: dirty listings read per round
ROUND_LIMIT = 2000


class StockChannel(Protocol):
    """The part of a marketplace connector the flusher calls."""

    #: quantities per bulk call (Shopify 250, WooCommerce 100, eBay 25, Amazon 1)
    stock_batch_size: int

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult: ...

    def list_listings(self) -> Iterator[ChannelListing]: ...


@runtime_checkable
class StockFeedChannel(Protocol):
    """A channel that also takes many quantities in one asynchronous feed (Amazon's
    ``JSON_LISTINGS_FEED``): used when a round has more than ``stock_feed_threshold`` to send;
    the lease is held ``stock_feed_max_wait_s`` longer while the feed is processed."""

    stock_feed_threshold: int
    stock_feed_max_wait_s: float

    def push_stock_feed(self, updates: Sequence[StockUpdate]) -> StockPushResult: ...


@dataclass
class FlushResult:
    busy: bool = False  # another flusher holds the account
    pushed: int = 0  # quantities the channel accepted
    calls: int = 0  # bulk calls made
    unchanged: int = 0  # dirty, but the channel already shows that quantity: no call
    drifted: int = 0
    refused: int = 0
    lost_races: int = 0  # recorded by a newer push first: marked dirty again
    feeds: int = 0  # of the calls, asynchronous feeds (Amazon JSON_LISTINGS_FEED)
    more: bool = False  # listings still dirty after MAX_ROUNDS

    def as_dict(self) -> dict[str, int | bool]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Due:
    listing_id: int
    sku: str
    external_id: str | None
    parent_id: str | None
    location_id: str | None
    version: int
    quantity: int
    last_pushed: int | None


def _rule(account: ChannelAccount, listing: Listing) -> BufferRule:
    default = BufferRule(account.stock_keep_percent, account.stock_max_quantity,
                         account.stock_zero_at_or_below)  # fmt: skip
    return BufferRule.over(default, keep_percent=listing.buffer_percent,
                           max_quantity=listing.buffer_max,
                           zero_at_or_below=listing.zero_at_or_below)  # fmt: skip


def quantity_for(session: Session, listing: Listing, account: ChannelAccount) -> int | None:
    """What ``listing`` should show now (None: its SKU is not stock-managed): the buffer rule
    over what the account may sell, the sum over its locations."""
    free = available_for(session, account.id, [listing.sku])
    if listing.sku not in free:
        return None
    return pushed_quantity(free[listing.sku], _rule(account, listing))


def _push_location(session: Session, account: ChannelAccount) -> str | None:
    """Shopify: the account's Location GID for the first of its locations that names one, where
    its listings are set (over the one the listings sync found); None: the listing's own."""
    if account.channel != "shopify":
        return None
    found = session.scalar(
        select(AccountLocation.external_location_id)
        .where(AccountLocation.channel_account_id == account.id,
               AccountLocation.external_location_id.is_not(None))
        .order_by(AccountLocation.position).limit(1)
    )  # fmt: skip
    return str(found) if found else None


# --- the lease --------------------------------------------------------------------------------


def _take(session: Session, account_id: int, owner: str, lease: dt.timedelta) -> bool:
    now = utcnow()
    took = session.execute(
        update(ChannelAccount)
        .where(
            ChannelAccount.id == account_id,
            or_(
                ChannelAccount.stock_flush_owner.is_(None),
                ChannelAccount.stock_flush_owner == owner,
                ChannelAccount.stock_flush_until < now,
            ),
        )
        .values(stock_flush_owner=owner, stock_flush_until=now + lease)
    )
    return rowcount(took) == 1


def _let_go(session: Session, account_id: int, owner: str) -> None:
    session.execute(
        update(ChannelAccount)
        .where(ChannelAccount.id == account_id, ChannelAccount.stock_flush_owner == owner)
        .values(stock_flush_owner=None, stock_flush_until=None)
    )


# --- the flush ----------------------------------------------------------------------------------


def _due(
    session: Session, account_id: int, limit: int, cutoff: dt.datetime | None = None
) -> tuple[list[_Due], list[int]]:
    """(dirty listings with the quantity to push now, dirty listings of SKUs that are not
    stock-managed: nothing to push, made clean). ``cutoff``: only listings dirty since then
    or before (what changes later waits for the next window)."""
    since = (
        or_(Listing.dirty_at.is_(None), Listing.dirty_at <= cutoff) if cutoff is not None
        else Listing.id.is_not(None)
    )  # fmt: skip
    account = session.get(ChannelAccount, account_id)
    if account is None:
        return [], []
    listings = session.scalars(
        select(Listing)
        .where(
            Listing.channel_account_id == account_id,
            Listing.want_version > Listing.pushed_version,
            Listing.fulfilled_by_marketplace.is_(False),
            since,
        )
        .order_by(Listing.sku)
        .limit(limit)
    ).all()
    free = available_for(session, account_id, (listing.sku for listing in listings))
    where = _push_location(session, account) if listings else None
    due: list[_Due] = []
    unmanaged: list[int] = []
    for listing in listings:
        if listing.sku not in free:
            unmanaged.append(listing.id)
            continue
        due.append(
            _Due(listing.id, listing.sku, listing.external_id, listing.external_parent_id,
                 where or listing.external_location_id, listing.want_version,
                 pushed_quantity(free[listing.sku], _rule(account, listing)),
                 listing.last_pushed_qty)
        )  # fmt: skip
    return due, unmanaged


def _lock_stock(session: Session, skus: Iterable[str]) -> None:
    # the stock rows first, in SKU order, as every reservation takes them: a reservation holds
    # its SKUs' stock rows while it marks their listings, so taking the listings first could
    # deadlock with it (PostgreSQL; SQLite has one writer)
    session.execute(
        select(StockItem.sku).where(StockItem.sku.in_(sorted(set(skus))))
        .order_by(StockItem.sku).with_for_update()
    ).all()  # fmt: skip


def _record(
    session: Session, batch: Sequence[_Due], result: StockPushResult, now: dt.datetime,
    flushed: FlushResult, cutoff: dt.datetime | None = None,
) -> None:  # fmt: skip
    _lock_stock(session, (d.sku for d in batch))
    applied = set(result.applied)
    lost: list[str] = []
    recorded: list[int] = []
    for due in batch:
        if due.listing_id in applied:
            won = session.execute(
                update(Listing)
                .where(Listing.id == due.listing_id, Listing.pushed_version < due.version)
                .values(pushed_version=due.version, last_pushed_qty=due.quantity,
                        last_pushed_at=now, last_error=None)
            )  # fmt: skip
            if rowcount(won) == 1:
                flushed.pushed += 1
                recorded.append(due.listing_id)
                session.execute(
                    update(StockDrift)
                    .where(StockDrift.listing_id == due.listing_id,
                           StockDrift.repaired_at.is_(None))
                    .values(repaired_at=now)
                )  # fmt: skip
            else:
                lost.append(due.sku)
                flushed.lost_races += 1
        elif due.listing_id in result.drifted:
            seen = result.drifted[due.listing_id]
            current = session.get(Listing, due.listing_id)
            if current is not None and current.last_pushed_qty == seen:
                # not drift: a racing flusher of ours pushed that number since we read
                lost.append(due.sku)
                flushed.lost_races += 1
                continue
            flushed.drifted += 1
            session.add(StockDrift(listing_id=due.listing_id, found_by="push", found_at=now,
                                   channel_qty=seen, expected_qty=due.last_pushed))  # fmt: skip
            # still dirty; the next round sets ours from what the channel really shows
            session.execute(
                update(Listing).where(Listing.id == due.listing_id).values(last_pushed_qty=seen)
            )
        elif due.listing_id in result.refused:
            flushed.refused += 1
            # not retried until the SKU changes again; staff see why
            session.execute(
                update(Listing)
                .where(Listing.id == due.listing_id, Listing.pushed_version < due.version)
                .values(pushed_version=due.version,
                        last_error=result.refused[due.listing_id][:2000])
            )  # fmt: skip
    if lost:
        mark_dirty_listings(session, [d.listing_id for d in batch if d.sku in set(lost)],
                            at=cutoff or now)  # fmt: skip
    _clean(session, [d.listing_id for d in batch])
    if recorded:
        # changed again while we pushed: that change is the next window's, not this flush's
        session.execute(
            update(Listing)
            .where(Listing.id.in_(recorded), Listing.want_version > Listing.pushed_version)
            .values(dirty_at=now)
        )


def mark_dirty_listings(
    session: Session, listing_ids: Sequence[int], *, at: dt.datetime | None = None
) -> None:
    """These listings must be pushed again: their record lost to a newer push, and which of
    the two the channel applied last is not known, so neither is what it shows
    (``last_pushed_qty`` None: the next push is sent, without a compare-from). ``at``: dirty
    since (a flush's start: its next round takes them)."""
    session.execute(
        update(Listing)
        .where(Listing.id.in_(listing_ids))
        .values(want_version=Listing.want_version + 1, last_pushed_qty=None,
                dirty_at=func.coalesce(Listing.dirty_at, at or utcnow()))
    )  # fmt: skip


def _clean(session: Session, listing_ids: Sequence[int]) -> None:
    session.execute(
        update(Listing)
        .where(Listing.id.in_(listing_ids), Listing.want_version <= Listing.pushed_version)
        .values(dirty_at=None)
    )


def flush(
    transaction: Transaction, account_id: int, channel: StockChannel, *, owner: str,
    lease: dt.timedelta = dt.timedelta(minutes=5), clock: Callable[[], dt.datetime] = utcnow,
    flushed: FlushResult | None = None,
) -> FlushResult:  # fmt: skip
    """Push every dirty listing of the account, as it is now, in bulk; see the module.
    ``flushed``: counted into as the batches are recorded (what a failed flush did before it
    failed stays there); a new one by default.

    A failed call raises; the lease stays with ``owner`` (the task, whose retry has the same
    id) until the retry, or until ``give_up`` lets it go: other triggers meanwhile find the
    account busy and leave the work to it. ``more``: listings were still dirty when the lease
    was let go (a change that came after the last round, or ``MAX_ROUNDS`` were done): flush
    again."""
    flushed = FlushResult() if flushed is None else flushed
    with transaction() as session:
        if not _take(session, account_id, owner, lease):
            flushed.busy = True
            return flushed
    # rounds take what was dirty when the flush started (and what must go again: drift, a lost
    # race); what changes meanwhile is the next window's, so that it coalesces
    cutoff = clock()
    try:
        for _ in range(MAX_ROUNDS):
            if not _round(transaction, account_id, channel, owner, lease, clock, flushed,
                          cutoff):  # fmt: skip
                break
    except BaseException:
        with transaction() as session:
            _take(session, account_id, owner, lease)  # held for this owner's retry
        raise
    with transaction() as session:
        _let_go(session, account_id, owner)
        flushed.more = bool(_due(session, account_id, 1)[0])
    return flushed


def _round(
    transaction: Transaction, account_id: int, channel: StockChannel, owner: str,
    lease: dt.timedelta, clock: Callable[[], dt.datetime], flushed: FlushResult,
    cutoff: dt.datetime,
) -> bool:  # fmt: skip
    """One round: every listing dirty since ``cutoff`` or before. False when none was."""
    with transaction() as session:
        due, unmanaged = _due(session, account_id, ROUND_LIMIT, cutoff)
        if unmanaged:
            session.execute(
                update(Listing).where(Listing.id.in_(unmanaged))
                .values(pushed_version=Listing.want_version, dirty_at=None)
            )  # fmt: skip
    if not due:
        return False
    same = [d for d in due if d.quantity == d.last_pushed]
    send = [d for d in due if d.quantity != d.last_pushed]
    if same:
        with transaction() as session:
            _record(session, same, StockPushResult(applied=[d.listing_id for d in same]),
                    clock(), flushed, cutoff)  # fmt: skip
            flushed.pushed -= len(same)
            flushed.unchanged += len(same)
    size = max(1, channel.stock_batch_size)
    feeder = (
        channel if isinstance(channel, StockFeedChannel)
        and len(send) > channel.stock_feed_threshold else None
    )  # fmt: skip
    if feeder is not None:  # all of them in one feed
        size = len(send)
        with transaction() as session:  # held while the channel processes the feed
            _take(session, account_id, owner,
                  lease + dt.timedelta(seconds=feeder.stock_feed_max_wait_s))  # fmt: skip
    for start in range(0, len(send), size):
        batch = send[start : start + size]
        updates = [StockUpdate(d.listing_id, d.sku, d.external_id, d.parent_id, d.location_id,
                               d.quantity, d.last_pushed) for d in batch]  # fmt: skip
        if feeder is not None:
            result = feeder.push_stock_feed(updates)
            flushed.feeds += 1
        else:
            result = channel.push_stock(updates)
        flushed.calls += 1
        with transaction() as session:
            _record(session, batch, result, clock(), flushed, cutoff)
            _take(session, account_id, owner, lease)  # still ours: renew
    return True


def give_up(transaction: Transaction, account_id: int, error: str, *, owner: str) -> int:
    """Retries ran out: the account's dirty listings say why, where staff look (they stay
    dirty: the next change, Beat's ``flush_dirty`` or the nightly check pushes them again),
    and ``owner`` lets the account go."""
    with transaction() as session:
        _let_go(session, account_id, owner)
        done = session.execute(
            update(Listing)
            .where(Listing.channel_account_id == account_id,
                   Listing.want_version > Listing.pushed_version)
            .values(last_error=error[:2000])
        )  # fmt: skip
        return rowcount(done)


def dirty_accounts(session: Session, older_than: dt.datetime) -> list[int]:
    """Accounts with a listing dirty since before ``older_than`` and no flusher holding them:
    the safety net for a trigger that was lost (a broker blip after commit)."""
    now = utcnow()
    return list(
        session.scalars(
            select(Listing.channel_account_id)
            .join(ChannelAccount, ChannelAccount.id == Listing.channel_account_id)
            .where(
                Listing.dirty_at < older_than,
                Listing.want_version > Listing.pushed_version,
                Listing.fulfilled_by_marketplace.is_(False),
                ChannelAccount.active.is_(True),
                or_(ChannelAccount.stock_flush_until.is_(None),
                    ChannelAccount.stock_flush_until < now),
            )
            .group_by(Listing.channel_account_id)
        ).all()
    )  # fmt: skip


# --- listings sync ------------------------------------------------------------------------------


@dataclass
class ListingsReport:
    found: int = 0
    created: int = 0
    updated: int = 0
    fulfilled_by_marketplace: int = 0
    #: SKUs listed on the channel that we hold no stock of
    channel_only: list[str] = field(default_factory=list)
    #: SKUs we hold stock of that the channel does not list
    ours_only: list[str] = field(default_factory=list)


def sync_listings(
    transaction: Transaction, account_id: int, channel: StockChannel
) -> ListingsReport:
    """Discover the account's listings from the marketplace (by SKU) and record them; new ones
    are dirty, so the next flush pushes our quantity to them."""
    report = ListingsReport()
    seen: dict[str, ChannelListing] = {}
    for found in channel.list_listings():
        seen.setdefault(found.sku, found)
    report.found = len(seen)
    now = utcnow()
    with transaction() as session:
        existing = {
            listing.sku: listing
            for listing in session.scalars(
                select(Listing).where(Listing.channel_account_id == account_id)
            )
        }
        ours = set(session.scalars(select(StockItem.sku)).all())
        for sku, found in sorted(seen.items()):
            listing = existing.get(sku)
            values = dict(external_id=found.external_id, external_parent_id=found.parent_id,
                          external_location_id=found.location_id,
                          fulfilled_by_marketplace=found.fulfilled_by_marketplace)  # fmt: skip
            report.fulfilled_by_marketplace += found.fulfilled_by_marketplace
            if listing is None:
                session.execute(
                    dialect_insert(session)(Listing)
                    .values(channel_account_id=account_id, sku=sku, want_version=1,
                            pushed_version=0, dirty_at=now, created_at=now,
                            last_pushed_qty=found.quantity, **values)
                    .on_conflict_do_nothing(index_elements=["channel_account_id", "sku"])
                )  # fmt: skip
                report.created += 1
            elif any(getattr(listing, k) != v for k, v in values.items()):
                for k, v in values.items():
                    setattr(listing, k, v)
                report.updated += 1
        report.channel_only = sorted(set(seen) - ours)
        report.ours_only = sorted(ours - set(seen))
        if report.created:  # new listings are dirty: the trigger flushes them after commit
            session.info.setdefault(DIRTY_ACCOUNTS, set()).add(account_id)
    return report


# --- the nightly check --------------------------------------------------------------------------


@dataclass
class CheckReport:
    check_id: int
    checked: int
    drifted: int
    missing_on_channel: int


def check(transaction: Transaction, account_id: int, channel: StockChannel) -> CheckReport:
    """Read every listing's quantity on the channel, compare it with what we would push now,
    record drift with both numbers and leave the drifted listings dirty (the flush that follows
    repairs them); the run is a ``stock_checks`` row."""
    with transaction() as session:
        run = StockCheck(channel_account_id=account_id, status="running", started_at=utcnow())
        session.add(run)
        session.flush()
        check_id = run.id
    try:
        shown = {found.sku: found.quantity for found in channel.list_listings()}
    except Exception as exc:
        with transaction() as session:
            session.execute(
                update(StockCheck).where(StockCheck.id == check_id)
                .values(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                        finished_at=utcnow())
            )  # fmt: skip
        raise
    now = utcnow()
    checked = drifted = missing = 0
    with transaction() as session:
        account = session.get(ChannelAccount, account_id)
        assert account is not None
        listings = session.scalars(
            select(Listing)
            .where(
                Listing.channel_account_id == account_id,
                Listing.fulfilled_by_marketplace.is_(False),
            )
            .order_by(Listing.sku)
        ).all()
        _lock_stock(session, (listing.sku for listing in listings))
        free = available_for(session, account_id, (listing.sku for listing in listings))
        for listing in listings:
            if listing.sku not in shown:
                missing += 1
                continue
            there = shown[listing.sku]
            want = (pushed_quantity(free[listing.sku], _rule(account, listing))
                    if listing.sku in free else None)  # fmt: skip
            if there is None or want is None:
                continue
            checked += 1
            dirty = listing.want_version > listing.pushed_version
            if there != want and not dirty:
                drifted += 1
                session.add(StockDrift(listing_id=listing.id, found_by="nightly", found_at=now,
                                       channel_qty=there, expected_qty=want))  # fmt: skip
                listing.want_version += 1
                listing.dirty_at = now
            if there != listing.last_pushed_qty:
                listing.last_pushed_qty = there  # what a compare-and-set must start from
        session.execute(
            update(StockCheck).where(StockCheck.id == check_id)
            .values(status="ok", listings_checked=checked, drifted=drifted,
                    missing_on_channel=missing, finished_at=utcnow())
        )  # fmt: skip
        if drifted:
            session.info.setdefault(DIRTY_ACCOUNTS, set()).add(account_id)
    return CheckReport(check_id, checked, drifted, missing)
