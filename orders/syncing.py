"""Sync runs: a poll or full sync of one account as a run of short slices that survive restarts.

A run (a ``sync_runs`` row) fixes its window ``[window_from, window_to)`` when it starts. Each
slice reads pages from the marketplace (``PageSource.fetch_pages``) from where the run stands
(``page_token``) and, **in one transaction per page**, applies the page's orders
(``orders.intake.apply_page``: the new ones in a few multi-row statements, the rest with the
same intake as webhooks; newer data wins, so a page read twice changes nothing) together with the
token that resumes after it and the run's progress. A slice stops after ``max_pages`` pages or
``max_seconds`` (well under the task time limit), and the caller schedules the next slice. A
worker killed mid-slice loses at most the page it was reading: the next slice (the redelivered
message, or the sweeper's, see ``stalled_runs``) starts again from the last committed page.

When the last page is committed the run is ``ok`` and the account's cursor moves to the end
of the window (never back). A nightly full sync's run points at the night's
``reconcile_reports`` row, compares every order it sees with ours (``orders.reconcile``) and
counts the orders it created (missing here), the states it repaired and the mismatches it
flagged for staff; the run that ends the night (done, or failed for good) totals the
row (``finish_report``). Nothing is kept in memory from one page to the next, so a backfill
of any size runs at flat memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import structlog
from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import utcnow
from db.models import ACTIVE_RUN, ChannelAccount, OutboxMessage, ReconcileReport, SyncRun
from db.session import Transaction, rowcount
from domain.canonical import CanonicalOrder
from orders.intake import IntakeOutcome, IntakeResult, apply_page
from orders.reconcile import reconcile_page

__all__ = [
    "ACTIVE",
    "UNFINISHED",
    "Page",
    "PageSource",
    "SliceOutcome",
    "book_failure",
    "due_for_poll",
    "finish_report",
    "open_run",
    "run_slice",
    "stalled_runs",
    "start_night",
    "start_run",
]

log = structlog.get_logger(__name__)

#: a run still has pages to read and someone reading them
ACTIVE = ("running", "retrying")
#: a run still has pages to read (a parked one waits in the database for its time)
UNFINISHED = (*ACTIVE, "parked")


class Page(Protocol):
    @property
    def orders(self) -> Sequence[CanonicalOrder]: ...

    @property
    def resume(self) -> str | None: ...

    @property
    def lanes(self) -> Sequence[str]:
        """The rest of the window in parts, a token each (a page of its own, no orders)."""
        ...


class PageSource(Protocol):
    """What a slice needs of the marketplace's connector."""

    last_window_end: dt.datetime | None

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[Page]: ...

    def fetch_history(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[Page]:
        """The same for a long window (a full sync, an account's first sync): the
        marketplace's bulk export where it has one (Shopify), else ``fetch_pages``."""
        ...


#: what happens after a page's orders were applied (new orders enter the pipeline, …), in the
#: page's transaction: (session, results, the account's id)
AfterIntake = Callable[[Session, Sequence[IntakeResult], int], None]


@dataclass(frozen=True)
class SliceOutcome:
    run_id: int
    #: "ok" (the window is read, or this lane of it), "more" (another slice is needed),
    #: "lanes" (the run is read in ``lanes``: a slice for each), or "skip: …"
    status: str
    pages: int = 0
    orders: int = 0
    lanes: tuple[int, ...] = ()


#: a run read in lanes keeps them in its ``page_token``: ``lanes:{"0": token, "1": null, …}``
#: (null: that lane is read to its end)
_LANES = "lanes:"


def _lane_tokens(token: str | None) -> dict[str, str | None] | None:
    if token is None or not token.startswith(_LANES):
        return None
    lanes: dict[str, str | None] = json.loads(token[len(_LANES) :])
    return lanes


def _as_token(lanes: Mapping[str, str | None]) -> str:
    return _LANES + json.dumps(lanes, separators=(",", ":"))


def _unread(lanes: Mapping[str, str | None]) -> tuple[int, ...]:
    return tuple(sorted(int(lane) for lane, token in lanes.items() if token is not None))


def start_run(
    session: Session,
    account_id: int,
    kind: str,
    *,
    window_from: dt.datetime,
    window_to: dt.datetime,
    reconcile_report_id: int | None = None,
) -> int:
    """The account's run of ``kind`` that is still unfinished (a retried or parked poll goes
    on where it stood), else a new one over the window."""
    unfinished = session.scalar(
        select(SyncRun.id).where(
            SyncRun.channel_account_id == account_id,
            SyncRun.kind == kind,
            SyncRun.status.in_(UNFINISHED),
        )
    )
    if unfinished is not None:
        return unfinished
    now = utcnow()
    run = SyncRun(channel_account_id=account_id, kind=kind, status="running",
                  window_from=window_from, window_to=window_to, started_at=now,
                  heartbeat_at=now, pages=0,
                  reconcile_report_id=reconcile_report_id)  # fmt: skip
    session.add(run)
    session.flush()
    return run.id


def run_slice(
    transaction: Transaction,
    run_id: int,
    source: PageSource,
    after_intake: AfterIntake,
    *,
    max_pages: int,
    max_seconds: float,
    lane: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SliceOutcome:
    """Read and apply up to ``max_pages`` pages (or ``max_seconds``) of the run, each page in
    one transaction with its resume token.

    A source may split the rest of the window in lanes (``Page.lanes``: a bulk export's file
    by bytes): the run keeps a token per lane, and each lane is read by slices of its own
    (``lane``), at once; each page's transaction sets its lane's token under the run's row
    lock, and the page that ends the last lane ends the run. A slice of a run in lanes
    without ``lane`` (the sweeper's) reads nothing and answers the lanes still unread."""
    with transaction() as session:
        run = session.get(SyncRun, run_id)
        if run is None or run.status not in UNFINISHED:
            return SliceOutcome(run_id, f"skip: {run.status if run else 'gone'}")
        account_id, kind = run.channel_account_id, run.kind
        account = session.get(ChannelAccount, account_id)
        channel = account.channel if account is not None else "?"
        # a full sync, or a first one, reads a long window: the bulk export if there is one
        history = kind == "full" or (account is not None and account.poll_cursor is None)
        since, until, token = run.window_from, run.window_to, run.page_token
        lanes = _lane_tokens(token)
        if lanes is not None and lane is None:
            return SliceOutcome(run_id, "lanes", lanes=_unread(lanes))
        if lane is not None:
            token = lanes.get(str(lane)) if lanes is not None else None
            if token is None:
                return SliceOutcome(run_id, f"skip: lane {lane} is read")
        run.status = "running"
    assert since is not None and until is not None
    started = clock()
    pages = orders = 0
    read = source.fetch_history if history else source.fetch_pages
    with _ReadAhead(read(since, until, token)) as ahead:
        for page in ahead:
            if page.lanes:
                split = _split(transaction, run_id, page.lanes)
                return SliceOutcome(run_id, "lanes", pages, orders, lanes=split)
            # decided as the page comes in: the next one is read while this one is applied
            more = pages + 1 < max_pages and clock() - started < max_seconds
            window_end = source.last_window_end  # as the source left it with this page
            if more and page.resume is not None:
                ahead.read_next()
            _apply(transaction, run_id, account_id, kind, channel, page, after_intake,
                   window_end, lane)  # fmt: skip
            pages, orders = pages + 1, orders + len(page.orders)
            if page.resume is None:
                return SliceOutcome(run_id, "ok", pages, orders)
            if not more:
                return SliceOutcome(run_id, "more", pages, orders)
    # the source ended without a last page (an empty window it chose not to ask for)
    with transaction() as session:
        if source.last_window_end is not None:
            session.execute(update(SyncRun).where(SyncRun.id == run_id)
                            .values(window_to=source.last_window_end))  # fmt: skip
        _finish(session, run_id, account_id)
    return SliceOutcome(run_id, "ok", pages, orders)


class _ReadAhead:
    """A slice's pages, the next one read by a thread of its own while the slice applies the
    one before: the marketplace's answer (or the bulk file's next lines, and their mapping)
    and our database's work overlap instead of taking turns. At most one page is read ahead,
    and only one the slice asked for (``read_next``), so a slice that stops reads no page it
    does not apply: a rate-limited page is not spent for nothing. The pages are read in the
    task's context (its log fields); an error reading one is raised where the slice takes it.
    Leaving waits for a read in flight and closes the source (its stream, its connection)."""

    def __init__(self, pages: Iterator[Page]) -> None:
        self._pages = pages
        self._context = contextvars.copy_context()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sync-read-ahead")
        self._next: Future[Page | None] | None = None

    def read_next(self) -> None:
        self._next = self._thread.submit(self._context.run, self._read)

    def _read(self) -> Page | None:
        return next(self._pages, None)

    def __iter__(self) -> Iterator[Page]:
        self.read_next()
        while self._next is not None:
            page, self._next = self._next.result(), None
            if page is None:
                return
            yield page

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._next is not None:  # the slice failed applying the page before this one
            with contextlib.suppress(Exception):  # its error is the one that matters
                self._next.result()
        self._thread.shutdown(wait=True)
        close = getattr(self._pages, "close", None)
        if close is not None:
            close()


def _split(transaction: Transaction, run_id: int, tokens: Sequence[str]) -> tuple[int, ...]:
    """The run is read in lanes from now on, a token each."""
    lanes = {str(n): token for n, token in enumerate(tokens)}
    with transaction() as session:
        session.execute(update(SyncRun).where(SyncRun.id == run_id)
                        .values(page_token=_as_token(lanes), heartbeat_at=utcnow()))  # fmt: skip
    log.info("sync.lanes", run_id=run_id, lanes=len(lanes))
    return _unread(lanes)


def _apply(
    transaction: Transaction,
    run_id: int,
    account_id: int,
    kind: str,
    channel: str,
    page: Page,
    after_intake: AfterIntake,
    window_end: dt.datetime | None,
    lane: int | None = None,
) -> None:
    """One page's orders applied, with its resume token and the run's progress, in one
    transaction (the run finished with its last page, or its last lane's)."""
    with transaction() as session:
        seen = changed = created = repaired = flagged = 0
        results = apply_page(session, account_id, page.orders, actor=f"{kind}:{channel}")
        for result in results:
            seen += 1
            changed += result.outcome != IntakeOutcome.STALE
            created += result.outcome == IntakeOutcome.CREATED
            repaired += result.cancelled_now  # cancelled on the marketplace, not here yet
        if kind == "full":  # every order seen is compared with ours (orders.reconcile)
            checked = reconcile_page(session, page.orders, results,
                                     actor=f"reconcile:{channel}")  # fmt: skip
            results, flagged = checked.results, checked.flagged
            repaired += checked.repaired
        after_intake(session, results, account_id)
        token, done = page.resume, page.resume is None
        if lane is not None:  # the run's row lock, last: lanes commit their pages in turn
            stored = session.scalar(select(SyncRun.page_token).where(SyncRun.id == run_id)
                                    .with_for_update())  # fmt: skip
            lanes = _lane_tokens(stored) or {}
            lanes[str(lane)] = page.resume
            token = _as_token(lanes)
            done = not _unread(lanes)
        values = {
            "page_token": token,
            "pages": SyncRun.pages + 1,
            "orders_seen": SyncRun.orders_seen + seen,
            "orders_changed": SyncRun.orders_changed + changed,
            "orders_created": SyncRun.orders_created + created,
            "states_repaired": SyncRun.states_repaired + repaired,
            "mismatches_flagged": SyncRun.mismatches_flagged + flagged,
            "heartbeat_at": utcnow(),
        }
        if window_end is not None:  # the marketplace bounded the window
            values["window_to"] = window_end
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(**values))
        if done:
            _finish(session, run_id, account_id)


def _finish(session: Session, run_id: int, account_id: int) -> None:
    """The window is read: the run is ok and the cursor moves to its end (never back)."""
    run = session.get(SyncRun, run_id, populate_existing=True)
    account = session.get(ChannelAccount, account_id, with_for_update=True)
    assert run is not None and account is not None and run.window_to is not None
    if account.poll_cursor is None or run.window_to > account.poll_cursor:
        account.poll_cursor = run.window_to
    run.status, run.finished_at, run.page_token, run.error = "ok", utcnow(), None, None
    if run.reconcile_report_id is not None:
        session.flush()
        finish_report(session, run.reconcile_report_id)


def finish_report(session: Session, report_id: int) -> bool:
    """Total the night's report if every account's run of it has ended (``ok``, or ``failed``
    for good); once, whoever gets here last (a conditional update). True if this call did."""
    report = session.get(ReconcileReport, report_id)
    if report is None or report.finished_at is not None:
        return False
    latest = (
        select(func.max(SyncRun.id))
        .where(SyncRun.reconcile_report_id == report_id)
        .group_by(SyncRun.channel_account_id)
    )
    runs = session.scalars(select(SyncRun).where(SyncRun.id.in_(latest))).all()
    if len(runs) < report.accounts or any(r.status not in ("ok", "failed") for r in runs):
        return False
    totals = {
        "seen": sum(r.orders_seen for r in runs),
        "created": sum(r.orders_created for r in runs),
        "updated": sum(r.orders_changed - r.orders_created for r in runs),
        "states_repaired": sum(r.states_repaired for r in runs),
        "flagged": sum(r.mismatches_flagged for r in runs),
        "errors": sum(1 for r in runs if r.status == "failed"),
    }
    finished = rowcount(
        session.execute(
            update(ReconcileReport)
            .where(ReconcileReport.id == report_id, ReconcileReport.finished_at.is_(None))
            .values(finished_at=utcnow(), **totals)
        )
    )
    if finished:
        log.info("sync.reconcile", report_id=report_id, accounts=report.accounts, **totals)
    return bool(finished)


def open_run(
    session: Session,
    account_id: int,
    kind: str,
    since: dt.datetime | None,
    *,
    reconcile_report_id: int | None = None,
) -> int | None:
    """The account's unfinished run of ``kind``, else a new one up to now (``start_run``)
    from ``since``, or for a poll (``since`` None) from the account's cursor less the overlap
    (``first_poll_days`` back for an account never polled). None: no such active account."""
    settings = get_settings()
    now = utcnow()
    account = session.get(ChannelAccount, account_id)
    if account is None or not account.active:
        return None
    if since is None:
        cursor = account.poll_cursor or now - dt.timedelta(days=settings.first_poll_days)
        since = cursor - dt.timedelta(seconds=settings.poll_overlap_s)
    return start_run(session, account_id, kind, window_from=since, window_to=now,
                     reconcile_report_id=reconcile_report_id)  # fmt: skip


def book_failure(session: Session, run_id: int, status: str, error: str) -> None:
    """A slice failed: the run is ``retrying``, ``parked`` (the marketplace asked us to wait;
    its page token and the account's cursor stay) or ``failed`` for good, which ends it and,
    for a run of the night's report, may total the report (an error in it)."""
    failed = status == "failed"
    report_id = session.scalar(
        update(SyncRun)
        .where(SyncRun.id == run_id)
        .values(status=status, error=error, finished_at=utcnow() if failed else None)
        .returning(SyncRun.reconcile_report_id)
    )
    if failed and report_id is not None:
        finish_report(session, report_id)


def due_for_poll(session: Session, *, polled_before: dt.datetime) -> list[int]:
    """Active accounts we can ask (with API credentials: a webhook-only one has nothing to
    poll with) last polled before ``polled_before`` (or never), with no parked work waiting
    (a poll told to come back later) and no poll still reading (its slices go on by
    themselves; the sweeper resumes one whose worker died)."""
    nothing_parked = ~exists().where(OutboxMessage.channel_account_id == ChannelAccount.id,
                                     OutboxMessage.published_at.is_(None))  # fmt: skip
    no_poll_reading = ~exists().where(SyncRun.channel_account_id == ChannelAccount.id,
                                      SyncRun.kind == "poll",
                                      SyncRun.status.in_(UNFINISHED))  # fmt: skip
    accounts = session.scalars(
        select(ChannelAccount)
        .where(
            ChannelAccount.active,
            ChannelAccount.poll_cursor.is_(None) | (ChannelAccount.poll_cursor < polled_before),
            nothing_parked,
            no_poll_reading,
        )
        .order_by(ChannelAccount.id)
    ).all()
    return [account.id for account in accounts if account.credentials]


def start_night(session: Session) -> tuple[int | None, list[int]]:
    """The night's full sync: a ``reconcile_reports`` row for every active account we can ask,
    and those accounts (each then runs on its own: one account's failure is its own run's,
    and an error in the report). (None, []) when there is none."""
    accounts = session.scalars(
        select(ChannelAccount).where(ChannelAccount.active).order_by(ChannelAccount.id)
    ).all()
    ids = [account.id for account in accounts if account.credentials]
    if not ids:
        return None, []
    report = ReconcileReport(accounts=len(ids))
    session.add(report)
    session.flush()
    return report.id, ids


def stalled_runs(session: Session, *, idle_for: dt.timedelta, limit: int) -> list[int]:
    """Runs still reading whose last page was committed longer ago than ``idle_for`` (longer
    than a slice may take: its worker died, or its message was lost): each gets its heartbeat
    moved to now, so the sweeper publishes it again at most once per ``idle_for``."""
    cutoff = utcnow() - idle_for
    runs = session.scalars(
        select(SyncRun)
        .where(
            ACTIVE_RUN,  # ACTIVE, as its partial index has it (db.models)
            or_(SyncRun.heartbeat_at.is_(None), SyncRun.heartbeat_at < cutoff),
        )
        .order_by(SyncRun.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    now = utcnow()
    for run in runs:
        run.heartbeat_at = now
    return [run.id for run in runs]
