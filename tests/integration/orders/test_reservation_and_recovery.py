"""orders.reservation, orders.documents and orders.recovery: stock held or the order on hold,
its documents issued once, a failed step recorded for staff and resumed from where it failed."""

from __future__ import annotations

import pytest

from db.models import Invoice, StockItem, StockReservation
from domain.states import OrderState
from orders import stock
from orders.documents import credit_note, issue_invoice
from orders.recovery import RESUME_STATE, record_failure, retry
from orders.reservation import release_waiting, reserve
from orders.steps import Outcome
from orders.transitions import IllegalTransition
from tests.support.shop import FollowUps, Shop, WorkerKilled

S = OrderState


def _stock(shop: Shop, **on_hand: int) -> None:
    with shop.transaction() as session:
        for sku, units in on_hand.items():
            stock.set_on_hand(session, sku, units)


# --- reservation ------------------------------------------------------------------------------


def test_reserve_holds_the_stock_of_every_line(shop: Shop) -> None:
    _stock(shop, A=5, B=1)
    order_id = shop.order(S.NEW, lines={"A": 2, "B": 1})

    assert reserve(shop.transaction, order_id) == Outcome("reserved")
    assert reserve(shop.transaction, order_id) == Outcome("skip: reserved")

    held = {r.sku: r.quantity for r in shop.rows(StockReservation, order_id=order_id)}
    assert held == {"A": 2, "B": 1}
    (moved,) = shop.events(order_id, "transition")
    assert moved.to_state == S.RESERVED and moved.detail == {"reserved": {"A": 2, "B": 1}}


def test_the_reserve_step_reads_the_order_once(shop: Shop) -> None:
    """The step holds the order (locked); the stock service is told its account instead of
    reading the order again."""
    import sqlalchemy as sa

    _stock(shop, A=5)
    order_id = shop.order(S.NEW, lines={"A": 2})
    sent: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        sent.append(" ".join(statement.split()))

    sa.event.listen(shop.engine, "before_cursor_execute", record)
    try:
        assert reserve(shop.transaction, order_id) == Outcome("reserved")
    finally:
        sa.event.remove(shop.engine, "before_cursor_execute", record)
    reads = [s for s in sent if s.startswith("SELECT") and s.split(" WHERE ")[0].endswith(
        "FROM orders")]  # fmt: skip
    assert len(reads) == 1, reads


def test_short_stock_puts_the_order_on_hold_and_stops_the_chain_until_stock_arrives(
    shop: Shop, later: FollowUps
) -> None:
    _stock(shop, A=1)
    order_id = shop.order(S.NEW, lines={"A": 2})

    assert reserve(shop.transaction, order_id) == Outcome("on_hold", stop=True)
    assert shop.get(order_id).state == S.ON_HOLD
    assert shop.rows(StockItem, sku="A")[0].reserved == 0
    assert reserve(shop.transaction, order_id) == Outcome("on_hold", stop=True)  # still short

    _stock(shop, A=2)
    with shop.transaction() as session:
        assert release_waiting(session, "A", resume=later("pipeline")) == [order_id]
    assert later.scheduled == {"pipeline": [order_id]}
    assert reserve(shop.transaction, order_id) == Outcome("reserved")


def test_an_order_the_marketplace_fulfils_reserves_none_of_our_stock(shop: Shop) -> None:
    _stock(shop, A=5)
    order_id = shop.order(S.NEW, lines={"A": 2}, channel="amazon", fulfilled_by_marketplace=True)

    assert reserve(shop.transaction, order_id) == Outcome("reserved: fulfilled by the marketplace")
    assert shop.rows(StockReservation) == [] and shop.rows(StockItem, sku="A")[0].reserved == 0
    (moved,) = shop.events(order_id, "transition")
    assert moved.detail == {"reserved": {}, "fulfilled_by": "amazon"}


@pytest.mark.parametrize(("state", "stop"), [(S.CANCELLED, True), (S.PAID, False)])
def test_reserve_leaves_an_order_past_reservation_alone(
    shop: Shop, state: OrderState, stop: bool
) -> None:
    order_id = shop.order(state)

    assert reserve(shop.transaction, order_id) == Outcome(f"skip: {state}", stop=stop)


# --- documents --------------------------------------------------------------------------------


def test_a_paid_order_gets_one_invoice_and_after_a_cancel_one_credit_note(shop: Shop) -> None:
    order_id = shop.order(S.PAID)

    first = issue_invoice(shop.transaction, order_id)
    assert issue_invoice(shop.transaction, order_id) == first
    (invoice,) = shop.rows(Invoice, order_id=order_id)
    assert first == Outcome(invoice.full_number) and invoice.kind == "invoice"

    shop.move(order_id, S.CANCELLED)
    assert issue_invoice(shop.transaction, order_id) == Outcome("skip: cancelled")
    note = credit_note(shop.transaction, order_id)
    assert credit_note(shop.transaction, order_id) == note
    kinds = {i.kind: i for i in shop.rows(Invoice, order_id=order_id)}
    assert set(kinds) == {"invoice", "credit_note"}
    assert note == Outcome(kinds["credit_note"].full_number)
    assert kinds["credit_note"].credits_invoice_id == invoice.id


def test_invoicing_an_order_without_refunds_reads_the_invoices_once_and_never_its_pdf(
    shop: Shop,
) -> None:
    """The pipeline's invoice step: one read of the order's invoices (in force, and how many:
    the revision) before the INSERT; nothing read after it, as there is no refund to credit
    (it used to read the new invoice back, its PDF of some 44 KB included)."""
    import sqlalchemy as sa

    order_id = shop.order(S.PAID)
    sent: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        sent.append(" ".join(statement.split()))

    sa.event.listen(shop.engine, "before_cursor_execute", record)
    try:
        outcome = issue_invoice(shop.transaction, order_id)
    finally:
        sa.event.remove(shop.engine, "before_cursor_execute", record)
    (invoice,) = shop.rows(Invoice, order_id=order_id)
    assert outcome == Outcome(invoice.full_number) and invoice.pdf is not None
    inserted = next(i for i, s in enumerate(sent) if s.startswith("INSERT INTO invoices "))
    reads = [s for s in sent if s.startswith("SELECT") and " FROM invoices " in s]
    assert len([s for s in reads if "invoices.pdf" in s]) == 1  # the one read, before
    assert not any(" FROM invoices " in s for s in sent[inserted + 1 :])


def test_the_invoice_pdf_is_printed_after_the_commit_while_another_invoice_can_be_issued(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reportlab runs outside the series' lock (and SQLite's write lock): while the first
    order's PDF renders, another worker issues the next number of the same series; the first
    invoice, already committed, then gets its PDF."""
    from concurrent.futures import ThreadPoolExecutor

    from orders import invoice_pdf, invoices
    from orders.invoices import issue_invoice as issue_numbered

    first, second = shop.order(S.PAID), shop.order(S.PAID)
    render = invoice_pdf.render_invoice
    seen: dict[str, object] = {}

    def render_while_another_issues(document: invoice_pdf.InvoiceDocument) -> bytes:
        if seen:  # the second invoice's own PDF
            return render(document)
        seen["rendering"] = document.full_number

        def issue_second() -> str:
            with shop.transaction() as session:
                return issue_numbered(session, second).full_number

        pool = ThreadPoolExecutor(1)
        try:  # a lock still held times this out (and the step's rollback then frees it)
            seen["second"] = pool.submit(issue_second).result(timeout=20)
        finally:
            pool.shutdown(wait=False)
        seen["committed"] = [i.full_number for i in shop.rows(Invoice, order_id=first)]
        return render(document)

    monkeypatch.setattr(invoice_pdf, "render_invoice", render_while_another_issues)
    monkeypatch.setattr(invoices, "render_invoice", render_while_another_issues)
    outcome = issue_invoice(shop.transaction, first)

    (invoice,) = shop.rows(Invoice, order_id=first)
    assert outcome == Outcome(invoice.full_number)
    assert seen["rendering"] == invoice.full_number
    assert seen["committed"] == [invoice.full_number]  # committed before the rendering
    assert str(seen["second"]).endswith(f"{invoice.number + 1:06d}")
    assert invoice.pdf is not None and invoice.pdf.startswith(b"%PDF-")


def test_a_crash_before_the_pdf_is_stored_leaves_the_invoice_and_the_retry_prints_it(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orders import invoice_pdf

    order_id = shop.order(S.PAID)
    render = invoice_pdf.render_invoice

    def killed(_document: invoice_pdf.InvoiceDocument) -> bytes:
        raise WorkerKilled

    monkeypatch.setattr(invoice_pdf, "render_invoice", killed)
    with pytest.raises(WorkerKilled):
        issue_invoice(shop.transaction, order_id)
    (unprinted,) = shop.rows(Invoice, order_id=order_id)
    assert unprinted.pdf is None

    monkeypatch.setattr(invoice_pdf, "render_invoice", render)
    assert issue_invoice(shop.transaction, order_id) == Outcome(unprinted.full_number)
    (invoice,) = shop.rows(Invoice, order_id=order_id)
    assert invoice.id == unprinted.id
    assert invoice.pdf is not None and invoice.pdf.startswith(b"%PDF-")


def test_a_cancelled_order_that_was_never_invoiced_gets_no_credit_note(shop: Shop) -> None:
    order_id = shop.order(S.CANCELLED)

    assert credit_note(shop.transaction, order_id) == Outcome("nothing to credit")
    assert shop.rows(Invoice) == []


# --- recovery ---------------------------------------------------------------------------------


@pytest.mark.parametrize("step", sorted(RESUME_STATE))
def test_retry_resumes_an_order_from_the_step_that_failed(
    shop: Shop, later: FollowUps, step: str
) -> None:
    # given an order whose step failed for good
    order_id = shop.order(RESUME_STATE[step])
    with shop.transaction() as session:
        record_failure(session, order_id, step=step, error="ServerError: 503", attempts=5)
    failed = shop.get(order_id)
    assert (failed.state, failed.failed_step, failed.last_error, failed.attempts) == (
        S.NEEDS_ATTENTION, step, "ServerError: 503", 5
    )  # fmt: skip

    # when staff retry it
    with shop.transaction() as session:
        resumed = retry(session, order_id, actor="staff:ann", pipeline=later("pipeline"),
                        ship=later("ship"), refund=later("refund"), push=later("push"))  # fmt: skip

    # then it is back where that step starts, and that step runs again
    assert resumed == RESUME_STATE[step]
    order = shop.get(order_id)
    assert (order.state, order.failed_step, order.last_error, order.attempts) == (
        RESUME_STATE[step], None, None, 0
    )  # fmt: skip
    # (an order edited after it shipped goes back to shipped: nothing of the pipeline runs)
    follow_up = {"ship": "ship", "push_fulfilment": "push", "delivery": None,
                 "return": None, "edited_after_shipping": None}.get(step, "pipeline")  # fmt: skip
    assert later.scheduled == ({follow_up: [order_id]} if follow_up else {})
    back = shop.events(order_id, "transition")[-1]
    assert (back.actor, back.detail) == ("staff:ann", {"retry_of": step})


def test_a_failure_after_the_order_was_cancelled_leaves_it_cancelled(shop: Shop) -> None:
    order_id = shop.order(S.CANCELLED)

    with shop.transaction() as session:
        record_failure(session, order_id, step="buy_label", error="x", attempts=1)

    assert shop.get(order_id).state == S.CANCELLED and shop.get(order_id).failed_step is None


def test_retry_of_a_cancelled_order_with_money_not_refunded_refunds_it(
    shop: Shop, later: FollowUps
) -> None:
    order_id = shop.order(S.CANCELLED)
    shop.captured(order_id)

    with shop.transaction() as session:
        resumed = retry(session, order_id, actor="staff:ann", pipeline=later("pipeline"),
                        ship=later("ship"), refund=later("refund"), push=later("push"))  # fmt: skip

    assert resumed == S.CANCELLED
    assert later.scheduled == {"refund": [order_id]}
    (event,) = shop.events(order_id, "retry")
    assert event.detail == {"step": "refund_payment"}


def test_retry_of_an_order_that_needs_no_attention_is_refused(shop: Shop, later: FollowUps) -> None:
    order_id = shop.order(S.PAID)

    with pytest.raises(IllegalTransition, match="not needs_attention"), shop.transaction() as s:
        retry(s, order_id, actor="staff:ann", pipeline=later("pipeline"), ship=later("ship"),
              refund=later("refund"), push=later("push"))  # fmt: skip
    assert later.scheduled == {}
