"""Edits, marketplace refunds and staff refunds on a real database (SQLite and PostgreSQL):
stock, documents and money move together, once."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from db.models import Invoice, Payment, Refund, StockItem, StockReservation
from domain.canonical import CanonicalLine, CanonicalOrder, CanonicalRefund, RefundLine
from domain.states import OrderState
from orders import documents, stock
from orders.intake import apply_order
from orders.invoices import issue_credit_note
from orders.refunds import RefundRefused, make_refund, request_refund
from orders.returns import record_marketplace_refunds
from orders.transitions import load_for_update, transition
from tests.support.shop import FakePayments, FollowUps, Shop

S = OrderState
T0 = dt.datetime(2026, 7, 1, 10, tzinfo=dt.UTC)


def _canonical(
    lines: dict[str, tuple[str, int]], *, minutes: int = 0, **fields: Any
) -> CanonicalOrder:
    """A Shopify order of ``lines`` (line id → (SKU, units)) at 10.00 a unit, no tax."""
    canonical = [
        CanonicalLine(
            external_id=line,
            sku=sku,
            title=f"Item {sku}",
            quantity=units,
            unit_price=Decimal(10),
            total=Decimal(10 * units),
        )
        for line, (sku, units) in lines.items()
    ]
    total = sum((x.total for x in canonical), Decimal(0))
    values: dict[str, Any] = {
        "channel": "shopify", "account": "shop", "external_id": "9001", "currency": "EUR",
        "subtotal": total, "total": total, "lines": canonical,
        "updated_at": T0 + dt.timedelta(minutes=minutes), "financial_status": "paid",
        "payment_collected_by_marketplace": True,
    }  # fmt: skip
    values.update(fields)
    return CanonicalOrder(**values)


def _stock(shop: Shop, **on_hand: int) -> None:
    with shop.transaction() as session:
        for sku, units in on_hand.items():
            stock.set_on_hand(session, sku, units)


def _documented(shop: Shop, order: CanonicalOrder) -> int:
    """The order taken in, reserved, paid (collected by the marketplace) and invoiced."""
    with shop.transaction() as session:
        order_id = apply_order(session, shop.account.id, order, actor="test").order_id
        row = load_for_update(session, order_id)
        assert stock.reserve(session, order_id).ok
        transition(session, row, S.RESERVED, actor="test")
        session.add(Payment(order_id=order_id, provider="shopify", amount=row.total,
                            currency=row.currency, status="collected",
                            idempotency_key=f"capture:{order_id}",
                            collected_by_marketplace=True))  # fmt: skip
        transition(session, row, S.PAID, actor="test")
    assert documents.issue_invoice(shop.transaction, order_id).result.startswith("INV-")
    with shop.transaction() as session:
        transition(session, load_for_update(session, order_id), S.DOCUMENTED, actor="test")
    return order_id


def _held(shop: Shop, order_id: int) -> dict[str, int]:
    rows = shop.rows(StockReservation, order_id=order_id)
    return {r.sku: r.quantity for r in rows if r.status == "held"}


def _reserved(shop: Shop, *skus: str) -> dict[str, int]:
    with shop.maker() as session:
        return {sku: session.get_one(StockItem, sku).reserved for sku in skus}


def test_an_edit_after_invoicing_moves_the_stock_credits_the_invoice_and_issues_the_next_one(
    shop: Shop,
) -> None:
    # given A x1 at 10.00, reserved and invoiced
    _stock(shop, A=5, B=5)
    order_id = _documented(shop, _canonical({"1": ("A", 1)}))
    (first,) = shop.rows(Invoice, order_id=order_id)
    assert first.total == Decimal(10)

    # when the marketplace edits it to B x3 at 30.00
    with shop.transaction() as session:
        apply_order(session, shop.account.id, _canonical({"2": ("B", 3)}, minutes=5), actor="t")

    # then A is released and B held, in the same transaction as the new lines
    assert _held(shop, order_id) == {"B": 3}
    assert _reserved(shop, "A", "B") == {"A": 0, "B": 3}
    # and the invoice is credited (-10.00) and a new one issued with the next number (30.00)
    first_again, note, second = shop.rows(Invoice, order_id=order_id)
    assert (first_again.total, first_again.pdf) == (first.total, first.pdf)  # never changed
    assert (note.kind, note.total, note.credits_invoice_id) == ("credit_note", Decimal(-10),
                                                                first.id)  # fmt: skip
    assert (second.kind, second.total, second.number) == ("invoice", Decimal(30), first.number + 1)
    (edited,) = shop.events(order_id, "edited")
    assert edited.detail["added"] == {"2": 3} and edited.detail["removed"] == {"1": 1}
    # and the money the marketplace collects follows the edit
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.amount == Decimal(30)

    # when it is then cancelled, the credit note is of the invoice in force: -30.00
    with shop.transaction() as session:
        cancelled = _canonical({"2": ("B", 3)}, minutes=9, status=S.CANCELLED)
        apply_order(session, shop.account.id, cancelled, actor="t")
    with shop.transaction() as session:
        last = issue_credit_note(session, order_id)
        assert last is not None and last.total == Decimal(-30)
        assert last.credits_invoice_id == second.id


def test_an_edit_the_shelf_cannot_cover_releases_everything_and_waits_on_hold(shop: Shop) -> None:
    _stock(shop, A=5, B=1)
    order_id = _documented(shop, _canonical({"1": ("A", 2)}))

    with shop.transaction() as session:
        edit = _canonical({"1": ("A", 2), "2": ("B", 3)}, minutes=5)
        apply_order(session, shop.account.id, edit, actor="t")

    assert shop.get(order_id).state == S.ON_HOLD
    assert _held(shop, order_id) == {} and _reserved(shop, "A", "B") == {"A": 0, "B": 0}
    (hold,) = [e for e in shop.events(order_id, "transition") if e.to_state == S.ON_HOLD]
    assert hold.detail["short"] == {"B": 2}
    # the order can be reserved afresh once the stock is there (no leftover reservation rows)
    _stock(shop, B=5)
    with shop.transaction() as session:
        assert stock.reserve(session, order_id).ok


def test_an_edit_after_shipping_needs_a_person(shop: Shop) -> None:
    _stock(shop, A=5)
    order_id = _documented(shop, _canonical({"1": ("A", 1)}))
    for state in (S.READY_TO_SHIP, S.SHIPPED):
        shop.move(order_id, state)

    with shop.transaction() as session:
        edit = _canonical({"1": ("A", 2)}, minutes=5)
        apply_order(session, shop.account.id, edit, actor="t")

    order = shop.get(order_id)
    assert (order.state, order.failed_step) == (S.NEEDS_ATTENTION, "edited_after_shipping")


def test_an_edit_of_a_delivered_order_is_on_its_timeline_and_fails_nothing(shop: Shop) -> None:
    _stock(shop, A=5)
    order_id = _documented(shop, _canonical({"1": ("A", 2)}))
    for state in (S.READY_TO_SHIP, S.SHIPPED, S.DELIVERED):
        shop.move(order_id, state)

    # the marketplace's body after a refund of one unit (its lines as they are now)
    with shop.transaction() as session:
        later = _canonical({"1": ("A", 1)}, minutes=5)
        apply_order(session, shop.account.id, later, actor="t")

    assert shop.get(order_id).state == S.DELIVERED  # done stays done
    (edited,) = shop.events(order_id, "edited")
    assert edited.detail["state"] == "delivered"


def test_one_edit_in_10_newer_versions_at_once_reserves_its_units_once(shop: Shop) -> None:
    # a fetch racing the webhooks of one edit and the updates after it (each version newer,
    # the same lines): each intake diffs against the lines the one before it wrote
    _stock(shop, A=5, B=5)
    order_id = _documented(shop, _canonical({"1": ("A", 1)}))
    barrier = threading.Barrier(10)

    def deliver(n: int) -> None:
        edit = _canonical({"1": ("A", 1), "2": ("B", 2)}, minutes=5 + n)
        barrier.wait()
        with shop.transaction() as session:
            apply_order(session, shop.account.id, edit, actor="t")

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(deliver, range(10)))

    assert _held(shop, order_id) == {"A": 1, "B": 2}
    assert _reserved(shop, "A", "B") == {"A": 1, "B": 2}
    assert len(shop.events(order_id, "edited")) == 1


def test_a_sku_given_back_then_wanted_again_is_held_again(shop: Shop) -> None:
    # B given back by an edit (a refund's restock does the same), then an edit wants B again:
    # one reservation row per order and SKU, held once more (it was a unique-key failure)
    _stock(shop, A=5, B=5)
    order_id = _documented(shop, _canonical({"1": ("A", 1), "2": ("B", 2)}))
    for minutes, lines in ((5, {"1": ("A", 1)}), (9, {"1": ("A", 1), "3": ("B", 1)})):
        with shop.transaction() as session:
            apply_order(session, shop.account.id, _canonical(lines, minutes=minutes), actor="t")

    assert _held(shop, order_id) == {"A": 1, "B": 1}
    assert _reserved(shop, "A", "B") == {"A": 1, "B": 1}


def _refund(units: int = 1, refund_id: str = "77") -> CanonicalRefund:
    line = RefundLine(line_external_id="2", quantity=units, subtotal=Decimal(10 * units),
                      restock=True)  # fmt: skip
    return CanonicalRefund(external_id=refund_id, order_external_id="9001",
                           amount=Decimal(10 * units), lines=[line])  # fmt: skip


def test_a_marketplace_refund_delivered_20_times_at_once_is_recorded_and_restocked_once(
    shop: Shop,
) -> None:
    # given three lines, invoiced
    _stock(shop, A=5, B=5, C=5)
    order_id = _documented(shop, _canonical({"1": ("A", 1), "2": ("B", 2), "3": ("C", 1)}))
    barrier = threading.Barrier(20)

    def deliver(_: int) -> list[int]:
        barrier.wait()
        with shop.transaction() as session:
            order = load_for_update(session, order_id)
            return record_marketplace_refunds(session, order, [_refund()], actor="t")

    with ThreadPoolExecutor(20) as pool:
        made = [ids for ids in pool.map(deliver, range(20)) if ids]

    # then one refund row, one unit of B released, and its credit note is exactly that line
    assert len(made) == 1
    (refund,) = shop.rows(Refund, order_id=order_id)
    assert (refund.source, refund.amount, refund.external_id) == (
        "marketplace", Decimal(10), "77")  # fmt: skip
    assert _held(shop, order_id) == {"A": 1, "B": 1, "C": 1}
    assert documents.credit_note(shop.transaction, order_id).result.startswith("CN-")
    assert documents.credit_note(shop.transaction, order_id).result == "nothing to credit"
    notes = [i for i in shop.rows(Invoice, order_id=order_id) if i.kind == "credit_note"]
    assert len(notes) == 1 and notes[0].total == Decimal(-10)
    assert [(x["ref"], x["quantity"], x["net"]) for x in notes[0].lines or []] == [
        ("2", 1, "-10.00")]  # fmt: skip


def test_staff_refunds_are_made_once_and_never_more_than_is_left(shop: Shop) -> None:
    _stock(shop, A=5)
    order_id = _documented(shop, _canonical({"1": ("A", 3)}, financial_status="authorized",
                                            payment_collected_by_marketplace=False))  # fmt: skip
    with shop.transaction() as session:  # the money is ours: a capture at the provider
        payment = session.scalars(select(Payment).where(Payment.order_id == order_id)).one()
        payment.provider, payment.collected_by_marketplace = "payments", False
        payment.external_id = "pi_auth"
    provider, later = FakePayments(), FollowUps()

    # a double click: the same request twice is one refund
    with shop.transaction() as session:
        first, new = request_refund(session, order_id, actor="jane", lines={"A": 1})
    with shop.transaction() as session:
        again, new_again = request_refund(session, order_id, actor="jane", lines={"A": 1})
    assert (new, new_again, again.id) == (True, False, first.id)
    for _ in range(2):
        make_refund(shop.transaction, order_id, first.id, lambda: provider, shop.keys(),
                    credit=later("credit"))  # fmt: skip
    assert list(provider.refunds) == [first.idempotency_key]
    assert later.scheduled == {"credit": [order_id]}

    # more than is left is refused, in words
    with shop.transaction() as session, pytest.raises(RefundRefused, match="left to refund"):
        request_refund(session, order_id, actor="jane", amount=Decimal("20.01"))
    with shop.transaction() as session, pytest.raises(RefundRefused, match="only 2 units left"):
        request_refund(session, order_id, actor="jane", lines={"A": 3})
    with shop.transaction() as session:
        rest, _ = request_refund(session, order_id, actor="jane", amount=Decimal("20.00"))
    assert rest.amount == Decimal("20.00")


def test_restocked_units_go_back_only_where_they_were(shop: Shop) -> None:
    # given a new order (nothing reserved yet) and a shipped one (its units consumed)
    _stock(shop, B=5)
    with shop.transaction() as session:
        new_id = apply_order(session, shop.account.id, _canonical({"2": ("B", 2)}),
                             actor="t").order_id  # fmt: skip
    shipped_id = _documented(shop, _canonical({"2": ("B", 2)}, external_id="9002"))
    with shop.transaction() as session:
        stock.consume(session, shipped_id)

    # when the marketplace refunds and restocks one unit of each
    for order_id in (new_id, shipped_id):
        with shop.transaction() as session:
            order = load_for_update(session, order_id)
            refund = _refund(refund_id=f"r-{order_id}").model_copy(
                update={"order_external_id": order.external_id}
            )
            record_marketplace_refunds(session, order, [refund], actor="t")

    # then the new order's unit never left the shelf; the shipped one's comes back on hand
    with shop.maker() as session:
        item = session.get_one(StockItem, "B")
        assert (item.on_hand, item.reserved) == (5 - 2 + 1, 0)


@pytest.mark.parametrize("paid_first", [False, True], ids=["before-the-pipeline", "after-paid"])
def test_a_paid_order_cancelled_with_its_refund_in_the_admin_adds_up(
    shop: Shop, paid_first: bool
) -> None:
    """Shopify's admin cancels a paid order and refunds the buyer (its default): whether the
    cancellation arrives before our pipeline recorded the payment or after, what was collected
    and what went back are both recorded, once, and the money check finds nothing."""
    from orders.money_check import check
    from orders.payments import record_collected

    _stock(shop, A=5)
    order = _canonical({"1": ("A", 2)})
    with shop.transaction() as session:
        order_id = apply_order(session, shop.account.id, order, actor="test").order_id
        if paid_first:
            assert record_collected(session, load_for_update(session, order_id)) is not None
    refund = CanonicalRefund(
        external_id="77", order_external_id="9001", amount=Decimal(20), currency="EUR",
        lines=[RefundLine(line_external_id="1", quantity=2, subtotal=Decimal(20),
                          tax=Decimal(0), restock=True)],
    )  # fmt: skip
    cancelled = _canonical(
        {"1": ("A", 2)}, minutes=3, status=S.CANCELLED, financial_status="refunded",
        refunds=[refund],
    )  # fmt: skip

    for _ in range(2):  # the webhook, and the poll that finds the same order again
        with shop.transaction() as session:
            apply_order(session, shop.account.id, cancelled, actor="test")

    (payment,) = shop.rows(Payment, order_id=order_id)
    assert (payment.amount, payment.status, payment.collected_by_marketplace) == (
        Decimal(20), "collected", True,
    )  # fmt: skip
    (back,) = shop.rows(Refund, order_id=order_id)
    assert (back.amount, back.payment_id, back.source) == (Decimal(20), payment.id, "marketplace")
    with shop.maker() as session:
        assert check(session) == []


def test_a_refund_then_an_edit_of_an_invoiced_order_credits_the_refund_on_the_new_invoice(
    shop: Shop,
) -> None:
    """Found by the chaos suite (postgres_restart): a Shopify order refunded one unit, then
    edited. The edit's new invoice is of the order's lines, which keep the refunded unit (the
    marketplace keeps a line's quantity when it refunds it): the refund is credited against it
    again, so invoiced - credited is what the buyer paid, and the money check finds nothing."""
    from orders.money_check import check

    # given A x1 and B x2 (30.00), invoiced, and one B refunded on the marketplace (-10.00)
    _stock(shop, A=5, B=5)
    order_id = _documented(shop, _canonical({"1": ("A", 1), "2": ("B", 2)}))
    with shop.transaction() as session:
        record_marketplace_refunds(session, load_for_update(session, order_id), [_refund()],
                                   actor="t")  # fmt: skip
    assert documents.credit_note(shop.transaction, order_id).result.startswith("CN-")

    # when the buyer adds C x1 (the order's total: 40.00, refunds not taken off)
    with shop.transaction() as session:
        apply_order(session, shop.account.id,
                    _canonical({"1": ("A", 1), "2": ("B", 2), "3": ("C", 1)}, minutes=5),
                    actor="t")  # fmt: skip
    # (delivered again, and the credit-note step run again: nothing more)
    with shop.transaction() as session:
        apply_order(session, shop.account.id,
                    _canonical({"1": ("A", 1), "2": ("B", 2), "3": ("C", 1)}, minutes=5),
                    actor="t")  # fmt: skip
    assert documents.credit_note(shop.transaction, order_id).result == "nothing to credit"

    # then: the first invoice credited in full (the refund's -10, the edit's -20), the new
    # invoice of 40.00 and the refund credited against it (-10): 30.00 is what the buyer paid
    first, refund_note, rest, second, again = shop.rows(Invoice, order_id=order_id)
    assert [(d.kind, d.total) for d in (first, refund_note, rest, second, again)] == [
        ("invoice", Decimal(30)), ("credit_note", Decimal(-10)), ("credit_note", Decimal(-20)),
        ("invoice", Decimal(40)), ("credit_note", Decimal(-10)),
    ]  # fmt: skip
    assert (refund_note.credits_invoice_id, rest.credits_invoice_id) == (first.id, first.id)
    assert again.credits_invoice_id == second.id
    assert [(x["ref"], x["quantity"]) for x in again.lines or []] == [("2", 1)]
    assert sum(d.total for d in shop.rows(Invoice, order_id=order_id)) == Decimal(30)
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.amount == Decimal(40)  # collected, less the refund of 10: 30
    with shop.maker() as session:
        assert check(session) == []
