"""orders.syncing: a sync run read in slices, each page committed with the token that resumes
after it; a run cut off anywhere (a killed worker) goes on from its last committed page and
ends with every order once and the cursor at the window's end."""

from __future__ import annotations

import contextvars
import datetime as dt
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, Order, OutboxMessage, ReconcileReport, SyncRun
from domain.canonical import CanonicalLine, CanonicalOrder
from orders.intake import IntakeResult
from orders.syncing import (
    book_failure,
    due_for_poll,
    open_run,
    run_slice,
    stalled_runs,
    start_night,
    start_run,
)
from tests.support.shop import Shop, WorkerKilled

NOW = utcnow()
SINCE = NOW - dt.timedelta(days=30)
PAGE = 4


def _order(n: int, version: int = 0) -> CanonicalOrder:
    return CanonicalOrder(
        channel="shopify", account="shop", external_id=str(1000 + n), currency="EUR",
        subtotal=Decimal(10), total=Decimal(10), updated_at=SINCE + dt.timedelta(hours=n,
                                                                               seconds=version),
        lines=[CanonicalLine(external_id="1", sku="SKU-1", quantity=1, unit_price=Decimal(10),
                             total=Decimal(10))],
    )  # fmt: skip


@dataclass(frozen=True)
class _Page:
    orders: list[CanonicalOrder]
    resume: str | None
    lanes: tuple[str, ...] = ()


class FakeMarketplace:
    """``orders`` orders in pages of ``PAGE``; the token is the next page's number. It can
    kill the worker while the page ``kill_at`` is being read, and records what it was asked."""

    def __init__(self, orders: int, *, kill_at: int | None = None) -> None:
        self.orders = [_order(n) for n in range(orders)]
        self.kill_at = kill_at
        self.asked: list[int] = []
        self.last_window_end: dt.datetime | None = None

    def fetch_history(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[_Page]:
        return self.fetch_pages(since, until, resume)

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[_Page]:
        page = int(resume or 0)
        while True:
            self.asked.append(page)
            if page == self.kill_at:
                self.kill_at = None
                raise WorkerKilled
            chunk = self.orders[page * PAGE : (page + 1) * PAGE]
            last = (page + 1) * PAGE >= len(self.orders)
            yield _Page(chunk, None if last else str(page + 1))
            if last:
                return
            page += 1


class Followed:
    def __init__(self) -> None:
        self.created: list[int] = []

    def __call__(self, session: Session, results: Sequence[IntakeResult], account_id: int) -> None:
        self.created += [r.order_id for r in results if r.outcome == "created"]


def _start(shop: Shop) -> int:
    with shop.transaction() as session:
        return start_run(session, shop.account.id, "poll", window_from=SINCE, window_to=NOW)


def _orders(shop: Shop) -> int:
    with shop.maker() as session:
        return session.scalar(select(func.count()).select_from(Order)) or 0


def test_a_run_is_read_in_slices_and_the_cursor_moves_only_at_the_end(shop: Shop) -> None:
    # given: 10 orders in 3 pages, slices of at most 2 pages
    source, followed = FakeMarketplace(10), Followed()
    run_id = _start(shop)

    # when: the first slice runs
    first = run_slice(shop.transaction, run_id, source, followed, max_pages=2, max_seconds=60)

    # then: two pages are committed with the token after them; the cursor has not moved
    assert (first.status, first.pages, first.orders) == ("more", 2, 8)
    [run] = shop.rows(SyncRun)
    assert (run.status, run.pages, run.page_token, run.orders_seen) == ("running", 2, "2", 8)
    assert shop.rows(ChannelAccount)[0].poll_cursor is None

    # when: the next slice runs, it goes on from page 2 and ends the run
    second = run_slice(shop.transaction, run_id, source, followed, max_pages=2, max_seconds=60)
    assert (second.status, second.pages, second.orders) == ("ok", 1, 2)
    assert source.asked == [0, 1, 2]
    [run] = shop.rows(SyncRun)
    assert (run.status, run.pages, run.page_token, run.orders_seen) == ("ok", 3, None, 10)
    assert shop.rows(ChannelAccount)[0].poll_cursor == NOW
    assert _orders(shop) == 10 and len(followed.created) == 10

    # and a slice of a finished run does nothing
    again = run_slice(shop.transaction, run_id, source, followed, max_pages=2, max_seconds=60)
    assert again.status == "skip: ok" and source.asked == [0, 1, 2]


@pytest.mark.parametrize("kill_at", [0, 1, 3])
def test_a_worker_killed_at_any_page_loses_only_that_page(shop: Shop, kill_at: int) -> None:
    # given: 14 orders in 4 pages; the worker dies while reading page ``kill_at``
    source, followed = FakeMarketplace(14, kill_at=kill_at), Followed()
    run_id = _start(shop)
    with pytest.raises(WorkerKilled):
        run_slice(shop.transaction, run_id, source, followed, max_pages=10, max_seconds=60)
    [run] = shop.rows(SyncRun)
    assert (run.status, run.pages, run.page_token) == (
        "running", kill_at, str(kill_at) if kill_at else None
    )  # fmt: skip
    assert _orders(shop) == kill_at * PAGE

    # when: the redelivered slice (or the sweeper's) runs the run again
    done = run_slice(shop.transaction, run_id, source, followed, max_pages=10, max_seconds=60)

    # then: it read from the page that was lost, and every order is there once
    assert done.status == "ok"
    assert source.asked == [*range(kill_at + 1), *range(kill_at, 4)]
    assert _orders(shop) == 14 and sorted(followed.created) == sorted(set(followed.created))
    assert shop.rows(ChannelAccount)[0].poll_cursor == NOW


REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request")


class _Asked(list[int]):
    """The pages asked for, each with an event set as its read begins and the task context's
    ``REQUEST`` as the read saw it."""

    def __init__(self) -> None:
        super().__init__()
        self.begun: defaultdict[int, threading.Event] = defaultdict(threading.Event)
        self.requests: list[str | None] = []

    def append(self, page: int) -> None:
        super().append(page)
        self.requests.append(REQUEST.get(None))
        self.begun[page].set()


def test_the_next_page_is_read_while_the_page_before_is_applied(shop: Shop) -> None:
    # given: 10 orders in 3 pages, a slice of the task whose context says "task-7"
    source, asked = FakeMarketplace(10), _Asked()
    source.asked = asked
    run_id = _start(shop)
    overlapped: list[bool] = []

    def after(session: Session, results: Sequence[IntakeResult], account_id: int) -> None:
        # page n is being committed: page n + 1's read has begun meanwhile (no read-ahead:
        # it begins only after this returns, and the wait runs out)
        page = len(overlapped)
        overlapped.append(page == 2 or asked.begun[page + 1].wait(timeout=10))

    REQUEST.set("task-7")
    outcome = run_slice(shop.transaction, run_id, source, after, max_pages=10, max_seconds=60)

    assert outcome.status == "ok" and overlapped == [True, True, True]
    assert list(asked) == [0, 1, 2] and asked.requests == ["task-7"] * 3
    assert _orders(shop) == 10


def test_a_slice_that_fails_applying_a_page_waits_for_the_read_ahead_and_closes_the_source(
    shop: Shop,
) -> None:
    closed = threading.Event()

    class Closing(FakeMarketplace):
        def fetch_pages(
            self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
        ) -> Iterator[_Page]:
            try:
                yield from super().fetch_pages(since, until, resume)
            finally:
                closed.set()

    source, asked = Closing(14), _Asked()
    source.asked = asked
    run_id = _start(shop)

    def after(session: Session, results: Sequence[IntakeResult], account_id: int) -> None:
        assert asked.begun[1].wait(timeout=10)
        raise WorkerKilled  # page 0's commit fails while page 1 is read

    with pytest.raises(WorkerKilled):
        run_slice(shop.transaction, run_id, source, after, max_pages=10, max_seconds=60)

    # the source is closed when run_slice returns (the caller closes the connector next),
    # and the page read ahead is not read again; nothing of page 0 was committed
    assert closed.is_set() and list(asked) == [0, 1]
    [run] = shop.rows(SyncRun)
    assert (run.pages, run.page_token) == (0, None) and _orders(shop) == 0


def test_a_second_start_goes_on_with_the_unfinished_run_and_a_finished_one_starts_anew(
    shop: Shop,
) -> None:
    run_id = _start(shop)
    assert _start(shop) == run_id
    with shop.transaction() as session:
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(status="parked"))
    assert _start(shop) == run_id
    with shop.transaction() as session:
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(status="ok"))
    assert _start(shop) != run_id


def test_a_run_whose_worker_died_is_found_once_per_idle_period(shop: Shop) -> None:
    stalled, live, parked = _start(shop), 0, 0
    with shop.transaction() as session:
        old = utcnow() - dt.timedelta(minutes=30)
        session.execute(update(SyncRun).where(SyncRun.id == stalled).values(heartbeat_at=old))
        live = start_run(session, shop.account.id, "full", window_from=SINCE, window_to=NOW)
        other = ChannelAccount(name="other", channel="shopify")
        session.add(other)
        session.flush()
        parked = start_run(session, other.id, "poll", window_from=SINCE, window_to=NOW)
        session.execute(update(SyncRun).where(SyncRun.id == parked)
                        .values(status="parked", heartbeat_at=old))  # fmt: skip

    with shop.transaction() as session:
        first = stalled_runs(session, idle_for=dt.timedelta(minutes=10), limit=10)
    with shop.transaction() as session:
        second = stalled_runs(session, idle_for=dt.timedelta(minutes=10), limit=10)

    assert first == [stalled] and second == []
    assert live not in first and parked not in first  # parked work waits for its time


def _account(shop: Shop, name: str, **fields: object) -> int:
    with shop.transaction() as session:
        account = ChannelAccount(name=name, channel="shopify", **fields)
        session.add(account)
        session.flush()
        return account.id


KEYS = {"access_token": "shpat_test"}


def test_the_accounts_due_for_a_poll_are_those_we_can_ask_that_nothing_holds_back(
    shop: Shop,
) -> None:
    hour_ago = utcnow() - dt.timedelta(hours=1)
    due = _account(shop, "due", credentials=KEYS, poll_cursor=hour_ago)
    never = _account(shop, "never-polled", credentials=KEYS)
    _account(shop, "fresh", credentials=KEYS, poll_cursor=utcnow())
    _account(shop, "webhook-only", poll_cursor=hour_ago)
    _account(shop, "off", credentials=KEYS, poll_cursor=hour_ago, active=False)
    parked = _account(shop, "parked", credentials=KEYS, poll_cursor=hour_ago)
    reading = _account(shop, "reading", credentials=KEYS, poll_cursor=hour_ago)
    with shop.transaction() as session:
        session.add(OutboxMessage(task_name="ordersync.sync.sync_slice", channel_account_id=parked,
                                  not_before=utcnow() + dt.timedelta(hours=2)))  # fmt: skip
        start_run(session, reading, "poll", window_from=SINCE, window_to=NOW)
        full = start_run(session, due, "full", window_from=SINCE, window_to=NOW)

    def polled_before_a_minute_ago() -> list[int]:
        with shop.transaction() as session:
            return due_for_poll(session, polled_before=utcnow() - dt.timedelta(minutes=1))

    assert polled_before_a_minute_ago() == [due, never]  # a full sync reading does not hold it
    with shop.transaction() as session:
        book_failure(session, full, "failed", "AuthenticationError")
        session.execute(update(SyncRun).where(SyncRun.channel_account_id == reading)
                        .values(status="ok"))  # fmt: skip
    assert polled_before_a_minute_ago() == [due, never, reading]


def test_a_run_opens_from_the_cursor_less_the_overlap_and_goes_on_while_unfinished(
    shop: Shop,
) -> None:
    cursor = utcnow() - dt.timedelta(hours=3)
    account = _account(shop, "polled", credentials=KEYS, poll_cursor=cursor)
    off = _account(shop, "off", credentials=KEYS, active=False)
    with shop.transaction() as session:
        run_id = open_run(session, account, "poll", None)
        assert open_run(session, account, "poll", None) == run_id
        assert open_run(session, off, "poll", None) is None
        assert open_run(session, 10**9, "poll", None) is None
    (run,) = shop.rows(SyncRun, id=run_id)
    overlap = dt.timedelta(seconds=get_settings().poll_overlap_s)
    assert run.window_to is not None
    assert run.window_from == cursor - overlap and run.window_to > cursor


def test_the_night_reports_on_every_account_we_can_ask_and_a_failed_run_totals_it(
    shop: Shop,
) -> None:
    with shop.transaction() as session:
        assert start_night(session) == (None, [])  # the shop's account has no credentials
    one = _account(shop, "one", credentials=KEYS)
    two = _account(shop, "two", credentials=KEYS)
    _account(shop, "off", credentials=KEYS, active=False)
    with shop.transaction() as session:
        report_id, accounts = start_night(session)
        assert report_id is not None and accounts == [one, two]
        runs = [start_run(session, a, "full", window_from=SINCE, window_to=NOW,
                          reconcile_report_id=report_id) for a in accounts]  # fmt: skip
    with shop.transaction() as session:
        session.execute(update(SyncRun).where(SyncRun.id == runs[0]).values(status="ok"))
        book_failure(session, runs[1], "retrying", "TransportError")
    (report,) = shop.rows(ReconcileReport, id=report_id)
    assert report.finished_at is None  # a run still retrying: the night is not over
    with shop.transaction() as session:
        book_failure(session, runs[1], "failed", "AuthenticationError: token revoked")
    (report,) = shop.rows(ReconcileReport, id=report_id)
    (failed,) = shop.rows(SyncRun, id=runs[1])
    assert report.finished_at is not None and report.errors == 1
    assert (failed.status, failed.error) == ("failed", "AuthenticationError: token revoked")
    assert failed.finished_at is not None


LANES = 3


class LanedMarketplace(FakeMarketplace):
    """A long window split in ``LANES`` lanes (as a bulk export's file by bytes): lane ``k``
    holds every ``LANES``-th order from ``k``, in pages of ``PAGE``; a lane's token is
    ``k:page``. It can kill the worker reading page ``kill_at`` of lane ``kill_lane``."""

    def __init__(self, orders: int, *, kill_lane: int | None = None, kill_at: int = 0) -> None:
        super().__init__(orders)
        self.kill_lane, self.kill_at_page = kill_lane, kill_at
        self.lane_asked: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def fetch_history(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[_Page]:
        if resume is None:
            yield _Page([], None, lanes=tuple(f"{k}:0" for k in range(LANES)))
            return
        lane, page = (int(part) for part in resume.split(":"))
        mine = self.orders[lane::LANES]
        while True:
            with self._lock:
                self.lane_asked.append((lane, page))
            if (lane, page) == (self.kill_lane, self.kill_at_page):
                self.kill_lane = None
                raise WorkerKilled
            last = (page + 1) * PAGE >= len(mine)
            chunk = mine[page * PAGE : (page + 1) * PAGE]
            yield _Page(chunk, None if last else f"{lane}:{page + 1}")
            if last:
                return
            page += 1


def _first_sync(shop: Shop) -> int:
    with shop.transaction() as session:  # never polled: the run reads the long window
        return start_run(session, shop.account.id, "full", window_from=SINCE, window_to=NOW)


def test_a_run_split_in_lanes_is_read_by_a_slice_per_lane_at_once_and_ends_once(
    shop: Shop,
) -> None:
    # given: 50 orders that the source splits in 3 lanes (17, 17 and 16 orders: 5, 5 and 4
    # pages), slices of at most 2 pages
    source, followed = LanedMarketplace(50), Followed()
    run_id = _first_sync(shop)

    # when: the first slice runs, it splits the run and reads no order
    first = run_slice(shop.transaction, run_id, source, followed, max_pages=2, max_seconds=60)
    assert (first.status, first.lanes, first.orders) == ("lanes", (0, 1, 2), 0)
    [run] = shop.rows(SyncRun)
    assert run.status == "running" and (run.page_token or "").startswith("lanes:")
    # a slice without a lane (the sweeper's) answers the lanes still unread, reading nothing
    swept = run_slice(shop.transaction, run_id, source, followed, max_pages=2, max_seconds=60)
    assert (swept.status, swept.lanes) == ("lanes", (0, 1, 2)) and source.lane_asked == []

    # when: each lane is read by slices of its own, the three at once
    start = threading.Barrier(LANES)
    outcomes: dict[int, list[str]] = defaultdict(list)

    def read(lane: int) -> None:
        start.wait(timeout=10)
        while True:
            outcome = run_slice(shop.transaction, run_id, source, followed, max_pages=2,
                                max_seconds=60, lane=lane)  # fmt: skip
            outcomes[lane].append(outcome.status)
            if outcome.status != "more":
                return

    threads = [threading.Thread(target=read, args=(lane,)) for lane in range(LANES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # then: every lane read to its end once, every order once, and the run ended once, by
    # the lane that committed the last page (the cursor at the window's end)
    assert {lane: statuses[-1] for lane, statuses in outcomes.items()} == dict.fromkeys(
        range(LANES), "ok"
    )
    assert sorted(source.lane_asked) == [*((0, p) for p in range(5)), *((1, p) for p in range(5)),
                                         *((2, p) for p in range(4))]  # fmt: skip
    assert _orders(shop) == 50 and len(followed.created) == len(set(followed.created)) == 50
    [run] = shop.rows(SyncRun)
    assert (run.status, run.pages, run.orders_seen, run.page_token) == ("ok", 14, 50, None)
    assert shop.rows(ChannelAccount)[0].poll_cursor == NOW
    again = run_slice(shop.transaction, run_id, source, followed, max_pages=2, max_seconds=60,
                      lane=1)  # fmt: skip
    assert again.status == "skip: ok"


def test_a_lane_killed_at_a_page_loses_only_that_page_and_the_other_lanes_go_on(
    shop: Shop,
) -> None:
    # given: a run in 3 lanes; the worker of lane 1 dies reading its page 2
    source, followed = LanedMarketplace(50, kill_lane=1, kill_at=2), Followed()
    run_id = _first_sync(shop)
    assert run_slice(shop.transaction, run_id, source, followed, max_pages=10,
                     max_seconds=60).status == "lanes"  # fmt: skip
    with pytest.raises(WorkerKilled):
        run_slice(shop.transaction, run_id, source, followed, max_pages=10, max_seconds=60,
                  lane=1)  # fmt: skip
    for lane in (0, 2):
        done = run_slice(shop.transaction, run_id, source, followed, max_pages=10,
                         max_seconds=60, lane=lane)  # fmt: skip
        assert done.status == "ok"

    # then: the run waits for lane 1, which the sweeper's slice names, and it goes on from
    # its last committed page
    [run] = shop.rows(SyncRun)
    assert run.status == "running" and _orders(shop) == 17 + 2 * PAGE + 16
    swept = run_slice(shop.transaction, run_id, source, followed, max_pages=10, max_seconds=60)
    assert (swept.status, swept.lanes) == ("lanes", (1,))
    done = run_slice(shop.transaction, run_id, source, followed, max_pages=10, max_seconds=60,
                     lane=1)  # fmt: skip
    assert done.status == "ok"
    assert [p for lane, p in source.lane_asked if lane == 1] == [0, 1, 2, 2, 3, 4]
    assert _orders(shop) == 50 and len(followed.created) == len(set(followed.created)) == 50
    [run] = shop.rows(SyncRun)
    assert (run.status, run.page_token) == ("ok", None)
    assert shop.rows(ChannelAccount)[0].poll_cursor == NOW
