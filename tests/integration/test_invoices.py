"""Invoices under real concurrency, on SQLite and PostgreSQL (invariant 4).

Concurrency: every thread runs its own session and transaction, and all of them are released at
once by a ``threading.Barrier``. On PostgreSQL the engine's pool is capped at 32 connections
(the server allows 100 in all, shared with other test runs), so 100 threads start together and
at most 32 of them hold a transaction at any moment while the rest queue for a connection. Every
one of the 100 still races for the same counter row.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TypeVar

import pytest
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.models import ChannelAccount, Invoice, InvoiceCounter, Order, OrderLine
from db.session import make_engine
from domain.states import OrderState
from orders.invoice_pdf import render_invoice
from orders.invoices import (
    CREDIT_NOTE,
    DEMO_SELLER,
    INVOICE,
    InvoiceRefused,
    attach_pdf,
    build_document,
    find_gaps,
    format_number,
    issue_credit_note,
    issue_invoice,
    next_number,
    series_for,
)

T = TypeVar("T")
POOL = 32  # connections at once; see the module docstring


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated_url, pool_size=POOL, max_overflow=0, pool_timeout=120)
    yield engine
    engine.dispose()


@pytest.fixture
def maker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def _orders(maker: sessionmaker[Session], count: int, *, state: str = OrderState.PAID) -> list[int]:
    """``count`` orders of one account, two lines each, inserted directly."""
    with maker() as session, session.begin():
        account = session.scalar(select(ChannelAccount))
        if account is None:
            account = ChannelAccount(name="shop", channel="shopify", webhook_secret="s")
            session.add(account)
            session.flush()
        start = session.scalar(select(func.count()).select_from(Order)) or 0
        orders = [
            Order(
                channel_account_id=account.id,
                channel="shopify",
                external_id=str(9_000_000_000_000 + start + i),
                external_number=f"#{1000 + start + i}",
                state=state,
                currency="EUR",
                subtotal=Decimal("40.00"),
                tax_total=Decimal("7.60"),
                shipping_total=Decimal("4.90"),
                discount_total=Decimal("2.00"),
                total=Decimal("42.90"),
                buyer_name="Jane Buyer",
                shipping_address={"line1": "1 Road", "city": "Town", "country_code": "DE"},
                external_updated_at=utcnow(),
                lines=[
                    OrderLine(
                        external_id=f"{start + i}-{n}",
                        sku=f"SKU-{n}",
                        title=f"Widget {n}",
                        quantity=2,
                        unit_price=Decimal("10.00"),
                        tax=Decimal("3.80"),
                        total=Decimal("20.00"),
                    )
                    for n in range(2)
                ],
            )
            for i in range(count)
        ]
        session.add_all(orders)
        session.flush()
        return [order.id for order in orders]


def _all_at_once(workers: int, job: Callable[[int], T]) -> list[T]:
    """Run ``job(i)`` for i in range(workers), each in its own thread, released together."""
    barrier = threading.Barrier(workers, timeout=60)

    def run(i: int) -> T:
        barrier.wait()
        return job(i)

    with ThreadPoolExecutor(workers) as pool:
        return [f.result(timeout=240) for f in [pool.submit(run, i) for i in range(workers)]]


def _invoice_in_own_transaction(maker: sessionmaker[Session], order_id: int) -> tuple[int, int]:
    with maker() as session, session.begin():
        invoice = issue_invoice(session, order_id, seller=DEMO_SELLER)
        return invoice.id, invoice.number


def _cancel(maker: sessionmaker[Session], order_id: int) -> None:
    with maker() as session, session.begin():
        session.execute(
            update(Order).where(Order.id == order_id).values(state=OrderState.CANCELLED.value)
        )


def _invoices(maker: sessionmaker[Session]) -> list[Invoice]:
    with maker() as session:
        return list(session.scalars(select(Invoice).order_by(Invoice.id)))


def test_100_orders_invoiced_at_once_take_numbers_1_to_100_without_gaps_or_duplicates(
    maker: sessionmaker[Session],
) -> None:
    # given 100 orders and no counter row yet (its creation is raced as well)
    order_ids = _orders(maker, 100)

    # when 100 threads each invoice one order at the same moment
    results = _all_at_once(100, lambda i: _invoice_in_own_transaction(maker, order_ids[i]))

    # then the numbers are exactly 1..100, one invoice per order
    assert sorted(number for _, number in results) == list(range(1, 101))
    invoices = _invoices(maker)
    assert len(invoices) == 100
    assert sorted(inv.order_id for inv in invoices) == sorted(order_ids)
    series = invoices[0].series
    assert {inv.series for inv in invoices} == {series}
    assert {inv.full_number for inv in invoices} == {
        format_number(series, n) for n in range(1, 101)
    }
    assert all(inv.pdf is not None and inv.pdf.startswith(b"%PDF-") for inv in invoices)
    with maker() as session:
        assert session.get_one(InvoiceCounter, series).next_number == 101
        assert find_gaps(session) == {}


def test_the_same_order_invoiced_by_20_threads_at_once_gets_one_invoice(
    maker: sessionmaker[Session],
) -> None:
    # given one order
    [order_id] = _orders(maker, 1)

    # when 20 workers invoice it at the same moment
    results = _all_at_once(20, lambda _: _invoice_in_own_transaction(maker, order_id))

    # then they all got the same invoice, and no number was used up by the losers
    assert set(results) == {results[0]}
    invoices = _invoices(maker)
    assert len(invoices) == 1
    assert invoices[0].number == 1
    with maker() as session:
        assert session.get_one(InvoiceCounter, invoices[0].series).next_number == 2
        assert find_gaps(session) == {}


def test_invoicing_again_returns_the_stored_invoice_unchanged(
    maker: sessionmaker[Session],
) -> None:
    [order_id] = _orders(maker, 1)
    with maker() as session, session.begin():
        first = issue_invoice(session, order_id, seller=DEMO_SELLER)
        first_values = (first.id, first.full_number, first.total, first.issued_at, first.pdf)

    with maker() as session, session.begin():
        again = issue_invoice(session, order_id, seller=DEMO_SELLER)
        again_values = (again.id, again.full_number, again.total, again.issued_at, again.pdf)

    assert again_values == first_values
    assert first.kind == INVOICE
    assert first.total == Decimal("42.90")
    assert first.currency == "EUR"
    assert first.full_number == f"{series_for(Order(), first.issued_at)}-000001"


def test_a_transaction_that_took_a_number_and_rolled_back_leaves_no_gap(
    maker: sessionmaker[Session],
) -> None:
    # given an issued invoice, then a transaction that invoices another order and rolls back
    first, doomed, later = _orders(maker, 3)
    _invoice_in_own_transaction(maker, first)
    with maker() as session:
        session.begin()
        assert issue_invoice(session, doomed, seller=DEMO_SELLER).number == 2
        session.rollback()

    # when the next invoice is issued
    _, number = _invoice_in_own_transaction(maker, later)

    # then it takes the number the rolled-back transaction had
    assert number == 2
    assert [inv.order_id for inv in _invoices(maker)] == [first, later]
    with maker() as session:
        assert find_gaps(session) == {}


def _wait_until_a_session_waits_for_a_lock(engine: Engine, deadline: float = 20) -> None:
    """PostgreSQL: poll ``pg_stat_activity`` until another session is blocked on a lock.

    Each look is its own transaction: PostgreSQL reads the activity of other sessions once per
    transaction and keeps that snapshot until it ends, so polling inside one transaction sees
    the moment of its first look forever (a waiter that arrived after it was never seen)."""
    if engine.dialect.name != "postgresql":
        return  # SQLite shows no waiter; the test holds for either interleaving anyway
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    stop = time.monotonic() + deadline
    with engine.connect() as conn:
        while True:
            found = conn.execute(waiting).scalar_one()
            conn.rollback()  # the next look takes a fresh snapshot
            if found:
                return
            assert time.monotonic() < stop, "the second transaction never waited for the lock"
            time.sleep(0.01)


def test_a_transaction_waiting_on_the_counter_gets_the_number_of_one_that_rolls_back(
    engine: Engine, maker: sessionmaker[Session]
) -> None:
    # given a transaction holding number 1 of the series, uncommitted
    doomed, waiting = _orders(maker, 2)
    holder = maker()
    holder.begin()
    assert issue_invoice(holder, doomed, seller=DEMO_SELLER).number == 1

    # when another worker invoices in the meantime (and blocks), and the first rolls back
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(_invoice_in_own_transaction, maker, waiting)
        try:
            _wait_until_a_session_waits_for_a_lock(engine)
        finally:  # released whatever happens: a failed wait must not leave the waiter blocked
            holder.rollback()
            holder.close()
        _, number = future.result(timeout=60)

    # then the waiter took number 1: nothing was burnt
    assert number == 1
    with maker() as session:
        assert find_gaps(session) == {}


def test_numbers_grow_past_six_digits(maker: sessionmaker[Session]) -> None:
    a, b = _orders(maker, 2)
    series = series_for(Order(), utcnow())
    with maker() as session, session.begin():
        session.add(InvoiceCounter(series=series, next_number=999_999))

    _invoice_in_own_transaction(maker, a)
    _invoice_in_own_transaction(maker, b)

    assert [inv.full_number for inv in _invoices(maker)] == [
        f"{series}-999999",
        f"{series}-1000000",
    ]


def test_next_number_creates_the_counter_and_a_rollback_undoes_the_increment(
    maker: sessionmaker[Session],
) -> None:
    with maker() as session, session.begin():
        assert next_number(session, "TEST-1") == 1
        assert next_number(session, "TEST-1") == 2
    with maker() as session:
        session.begin()
        assert next_number(session, "TEST-1") == 3
        session.rollback()
    with maker() as session, session.begin():
        assert next_number(session, "TEST-1") == 3
        assert next_number(session, "TEST-2") == 1


def test_series_follow_kind_and_utc_year() -> None:
    order = Order()
    assert series_for(order, dt.datetime(2026, 6, 1, tzinfo=dt.UTC)) == "INV-2026"
    assert series_for(order, dt.datetime(2026, 6, 1, tzinfo=dt.UTC), kind=CREDIT_NOTE) == "CN-2026"
    late_evening = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert series_for(order, late_evening) == "INV-2027"
    assert format_number("INV-2026", 123) == "INV-2026-000123"


def test_a_cancelled_invoiced_order_gets_one_credit_note_and_the_invoice_stays_as_it_was(
    maker: sessionmaker[Session],
) -> None:
    # given an invoiced order that is then cancelled
    [order_id] = _orders(maker, 1)
    _invoice_in_own_transaction(maker, order_id)
    [invoice] = _invoices(maker)
    _cancel(maker, order_id)

    # when 10 workers issue its credit note at once
    def credit(_: int) -> int:
        with maker() as session, session.begin():
            note = issue_credit_note(session, order_id, seller=DEMO_SELLER)
            assert note is not None
            return note.id

    note_ids = _all_at_once(10, credit)

    # then there is one credit note, in its own series, cancelling the invoice's total
    assert len(set(note_ids)) == 1
    stored_invoice, note = _invoices(maker)
    assert note.id == note_ids[0]
    assert note.kind == CREDIT_NOTE
    assert note.series == series_for(Order(), note.issued_at, kind=CREDIT_NOTE)
    assert note.number == 1
    assert note.credits_invoice_id == invoice.id
    assert note.total == -invoice.total == Decimal("-42.90")
    assert note.pdf is not None and note.pdf.startswith(b"%PDF-")
    unchanged = ("full_number", "number", "total", "currency", "issued_at", "pdf", "kind")
    for column in unchanged:
        assert getattr(stored_invoice, column) == getattr(invoice, column), column
    with maker() as session:
        assert find_gaps(session) == {}


def test_no_credit_note_for_a_cancelled_order_that_was_never_invoiced(
    maker: sessionmaker[Session],
) -> None:
    [order_id] = _orders(maker, 1, state=OrderState.CANCELLED)

    with maker() as session, session.begin():
        assert issue_credit_note(session, order_id, seller=DEMO_SELLER) is None

    assert _invoices(maker) == []


def test_credit_note_refused_while_the_order_is_not_cancelled(
    maker: sessionmaker[Session],
) -> None:
    [order_id] = _orders(maker, 1)
    _invoice_in_own_transaction(maker, order_id)

    with maker() as session, session.begin(), pytest.raises(InvoiceRefused):
        issue_credit_note(session, order_id, seller=DEMO_SELLER)
    assert len(_invoices(maker)) == 1


def test_a_cancelled_order_gets_no_new_invoice_but_keeps_the_one_it_had(
    maker: sessionmaker[Session],
) -> None:
    never_invoiced, invoiced = _orders(maker, 2)
    _, number = _invoice_in_own_transaction(maker, invoiced)
    _cancel(maker, never_invoiced)
    _cancel(maker, invoiced)

    with maker() as session, session.begin(), pytest.raises(InvoiceRefused):
        issue_invoice(session, never_invoiced, seller=DEMO_SELLER)
    assert _invoice_in_own_transaction(maker, invoiced)[1] == number
    with maker() as session:
        assert session.get_one(InvoiceCounter, _invoices(maker)[0].series).next_number == 2


def test_an_invoice_issued_without_its_pdf_gets_it_attached_once(
    maker: sessionmaker[Session],
) -> None:
    [order_id] = _orders(maker, 1)
    with maker() as session, session.begin():
        invoice_id = issue_invoice(session, order_id, seller=DEMO_SELLER, render=False).id
    assert _invoices(maker)[0].pdf is None

    with maker() as session:
        invoice = session.get_one(Invoice, invoice_id)
        order = session.get_one(Order, invoice.order_id)
        pdf = render_invoice(build_document(order, invoice, seller=DEMO_SELLER))
    with maker() as session, session.begin():
        stored = attach_pdf(session, invoice_id, pdf)
    with maker() as session, session.begin():
        again = attach_pdf(session, invoice_id, b"%PDF- another rendering")

    assert pdf.startswith(b"%PDF-") and (stored, again) == (True, False)
    assert _invoices(maker)[0].pdf == pdf


def test_find_gaps_reports_a_missing_invoice_inside_a_series_and_at_its_end(
    maker: sessionmaker[Session],
) -> None:
    # given five invoices without gaps
    for order_id in _orders(maker, 5):
        _invoice_in_own_transaction(maker, order_id)
    series = _invoices(maker)[0].series

    # when a row is deleted in a transaction that is never committed (finalised invoices are
    # never really deleted; the test looks at its own uncommitted copy of the table)
    def gaps_without(numbers: list[int]) -> dict[str, list[int]]:
        with maker() as session:
            session.begin()
            session.execute(
                delete(Invoice).where(Invoice.series == series, Invoice.number.in_(numbers))
            )
            try:
                return find_gaps(session)
            finally:
                session.rollback()

    # then the hole is reported, also when it is the last number (known from the counter)
    assert gaps_without([3]) == {series: [3]}
    assert gaps_without([1, 2]) == {series: [1, 2]}
    assert gaps_without([5]) == {series: [5]}
    assert gaps_without([2, 4, 5]) == {series: [2, 4, 5]}
    with maker() as session:
        assert find_gaps(session) == {}
        assert session.scalar(select(func.count()).select_from(Invoice)) == 5


def test_an_account_with_its_own_series_numbers_its_invoices_apart_from_the_shared_one(
    maker: sessionmaker[Session],
) -> None:
    # given an order of the shared series' account and one of a seller entity with its own
    shared = _orders(maker, 1)[0]
    with maker() as session, session.begin():
        entity = ChannelAccount(name="us-shop", channel="shopify", invoice_series="ACME-US")
        session.add(entity)
        session.flush()
        other = session.get_one(Order, shared)
        own = Order(channel_account_id=entity.id, channel="shopify", external_id="us-1",
                    state=OrderState.PAID, currency="USD", subtotal=Decimal(5),
                    tax_total=Decimal(0), shipping_total=Decimal(0), discount_total=Decimal(0),
                    total=Decimal(5), external_updated_at=utcnow(), lines=[])  # fmt: skip
        session.add(own)
        session.flush()
        own_id, shared_id = own.id, other.id

    # when both are invoiced
    _invoice_in_own_transaction(maker, shared_id)
    _invoice_in_own_transaction(maker, own_id)

    # then each series starts at 1: the entity's is prefixed by its series
    year = utcnow().year
    by_order = {i.order_id: i for i in _invoices(maker)}
    assert by_order[shared_id].full_number == f"INV-{year}-000001"
    assert by_order[own_id].full_number == f"ACME-US-INV-{year}-000001"
    assert by_order[own_id].total == Decimal(5)  # no lines: the adjustment carries the total
