"""Money that matches the marketplace, end to end: real web server, real Celery workers, real
Redis, the sandbox Shopify, WooCommerce and payment provider over real HTTP, on SQLite and on
PostgreSQL. Effects are counted on our side and in the outside world's ledgers."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from db.models import InboxEvent, Invoice, Refund, StockItem, StockReservation
from orders.money_check import check
from tests.support.stack import wait_until
from tests.support.world import (
    World,
    charged_woo_order,
    fixture_order,
    stock_for,
    world_fixture,
)

pytestmark = pytest.mark.slow


world = world_fixture("money")


def _documents(world: World, order_id: int) -> list[Invoice]:
    with world.maker() as session:
        return list(session.scalars(
            select(Invoice).where(Invoice.order_id == order_id).order_by(Invoice.id)
        ))  # fmt: skip


def _held(world: World, order_id: int) -> dict[str, int]:
    with world.maker() as session:
        rows = session.scalars(
            select(StockReservation).where(StockReservation.order_id == order_id)
        ).all()
    return {r.sku: r.quantity for r in rows if r.status == "held"}


def _single_line(payload: dict[str, Any], line_id: int, sku: str, units: int) -> dict[str, Any]:
    """``payload`` with one line of ``units`` x 10.00 (no tax, no discount) and totals to match."""
    item = copy.deepcopy(payload["line_items"][0])
    total = f"{10 * units}.00"
    item.update(id=line_id, sku=sku, quantity=units, price="10.00", tax_lines=[],
                discount_allocations=[], total_discount="0.00")  # fmt: skip
    money = {"shop_money": {"amount": total, "currency_code": "USD"}}
    return dict(payload, line_items=[item], refunds=[], total_price=total, subtotal_price=total,
                total_tax="0.00", total_discounts="0.00", total_outstanding="0.00",
                total_price_set=money,
                total_shipping_price_set={"shop_money": {"amount": "0.00"}})  # fmt: skip


def test_an_order_edited_after_invoicing_moves_its_stock_and_gets_a_credit_note_and_a_new_invoice(
    world: World, fixtures_dir: Path
) -> None:
    # given A x1 at 10.00, authorised on Shopify, captured, reserved and invoiced
    shop = world.account()
    base = fixture_order(fixtures_dir, financial_status="authorized",
                         updated_at="2026-07-01T10:00:00Z")  # fmt: skip
    a_sku, b_sku = f"A-{base['id']}", f"B-{base['id']}"
    first = _single_line(base, 1, a_sku, 1)
    stock_for(world, first, per_unit=5)
    stock_for(world, _single_line(base, 2, b_sku, 1), per_unit=5)
    world.post(shop, first, topic="orders/create")
    order = world.wait_state(shop, str(base["id"]), "ready_to_ship")
    (invoice,) = _documents(world, order.id)
    assert invoice.total == Decimal("10.00")

    # when the marketplace edits it to B x3 at 30.00 (orders/edited, then orders/updated)
    edited = dict(_single_line(base, 2, b_sku, 3), financial_status="paid",
                  updated_at="2099-01-01T11:00:00Z")  # fmt: skip
    # the shop has it so too (orders/edited makes us fetch it: the fetch and the webhook agree)
    world.sandbox.shopify.orders[str(base["id"])] = copy.deepcopy(edited)
    world.deliver(shop, "orders/edited", {"order_edit": {
        "id": 1, "order_id": base["id"],
        "line_items": {"additions": [{"id": 2, "delta": 3}], "removals": [{"id": 1, "delta": 1}]},
    }})  # fmt: skip
    world.post(shop, edited)

    # then A is released, B reserved, the invoice credited (-10.00) and a new one issued (30.00)
    wait_until(lambda: len(_documents(world, order.id)) == 3, what="credit note and new invoice")
    world.wait_idle()
    assert _held(world, order.id) == {b_sku: 3}
    with world.maker() as session:
        assert session.get_one(StockItem, a_sku).reserved == 0
        assert session.get_one(StockItem, b_sku).reserved == 3
    old, note, new = _documents(world, order.id)
    assert (old.id, old.total) == (invoice.id, Decimal("10.00"))
    assert (note.kind, note.total, note.credits_invoice_id) == ("credit_note", Decimal("-10.00"),
                                                                invoice.id)  # fmt: skip
    assert (new.kind, new.total, new.number) == ("invoice", Decimal("30.00"), invoice.number + 1)

    # and a later cancellation credits the invoice in force: -30.00
    cancelled = dict(edited, cancelled_at="2099-01-01T12:00:00Z",
                     updated_at="2099-01-01T12:00:00Z")  # fmt: skip
    world.post(shop, cancelled, topic="orders/cancelled")
    wait_until(lambda: len(_documents(world, order.id)) == 4, what="cancellation's credit note")
    last = _documents(world, order.id)[-1]
    assert (last.total, last.credits_invoice_id) == (Decimal("-30.00"), new.id)


def test_a_partial_refund_of_one_of_three_lines_delivered_20_times_is_credited_and_restocked_once(
    world: World, fixtures_dir: Path
) -> None:
    # given three lines (one unit each), paid on Shopify, ready to ship
    shop = world.account()
    payload = fixture_order(fixtures_dir, financial_status="paid", refunds=[])
    wanted = stock_for(world, payload, per_unit=2)
    world.post(shop, payload, topic="orders/create")
    order = world.wait_state(shop, str(payload["id"]), "ready_to_ship")
    refunded_line = payload["line_items"][2]
    sku = refunded_line["sku"]

    # when Shopify refunds (and restocks) that one line, and 20 deliveries of it arrive at once:
    # refunds/create retried, and orders/updated carrying the refund in the order's body
    refund = {
        "id": 509562969, "order_id": payload["id"], "created_at": "2026-07-02T10:00:00-04:00",
        "refund_line_items": [{"id": 1, "line_item_id": refunded_line["id"], "quantity": 1,
                               "restock_type": "return", "subtotal": 195.67,
                               "total_tax": 3.98}],
        "transactions": [{"kind": "refund", "status": "success", "amount": "199.65",
                          "currency": "USD"}],
        "order_adjustments": [], "refund_shipping_lines": [],
    }  # fmt: skip
    updated = dict(payload, refunds=[refund], financial_status="partially_refunded",
                   updated_at="2099-01-01T00:00:00Z")  # fmt: skip
    barrier = threading.Barrier(20)

    def deliver(i: int) -> None:
        barrier.wait()
        if i % 2:
            world.deliver(shop, "refunds/create", refund, webhook_id=f"refund-{i % 4}")
        else:
            world.deliver(shop, "orders/updated", updated)

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(deliver, range(20)))

    # then one refund, one credit note of exactly that line, and one unit back on the shelf
    def credited() -> list[Invoice]:
        return [i for i in _documents(world, order.id) if i.kind == "credit_note"]

    wait_until(credited, what="the refund's credit note")
    world.wait_idle()
    with world.maker() as session:
        refunds = session.scalars(select(Refund).where(Refund.order_id == order.id)).all()
        item = session.get_one(StockItem, sku)
    assert [(r.source, r.amount, r.external_id) for r in refunds] == [
        ("marketplace", Decimal("199.65"), "509562969")]  # fmt: skip
    (note,) = credited()
    assert note.total == Decimal("-199.65")
    assert [(x["ref"], x["quantity"], x["net"], x["tax"]) for x in note.lines or []] == [
        (str(refunded_line["id"]), 1, "-195.67", "-3.98")]  # fmt: skip
    assert _held(world, order.id).get(sku, 0) == wanted[sku] - 1  # the returned unit is released
    assert item.reserved == wanted[sku] - 1
    with world.maker() as session:
        assert [m for m in check(session) if m.order_id == order.id] == []


def test_a_refund_that_overtakes_its_orders_create_fetches_the_order_with_its_refund(
    world: World, fixtures_dir: Path
) -> None:
    # given an order paid on Shopify and one of its lines refunded there, whose refunds/create
    # reaches us before its orders/create (webhooks come in any order)
    shop = world.account()
    payload = fixture_order(fixtures_dir, financial_status="paid", refunds=[])
    stock_for(world, payload, per_unit=2)
    world.sandbox.shopify.put_order(payload)
    refund = world.sandbox.shopify.refund_line(str(payload["id"]), 2, 1)

    # when the refund arrives first, then the order's create (older than what we fetched)
    world.deliver(shop, "refunds/create", refund)
    order = world.wait_state(shop, str(payload["id"]), "ready_to_ship")
    world.deliver(shop, "orders/create", payload)
    world.wait_idle()

    # then the order was fetched with the refund: one order, the refund once, credited once,
    # and both deliveries done (the refund's says the order was fetched)
    with world.maker() as session:
        refunds = session.scalars(select(Refund).where(Refund.order_id == order.id)).all()
        events = session.scalars(  # the account is this test's own
            select(InboxEvent).where(InboxEvent.channel_account_id == order.channel_account_id)
        ).all()
        money = [m for m in check(session) if m.order_id == order.id]
    amount = sum(Decimal(t["amount"]) for t in refund["transactions"])
    assert [(r.source, r.amount, r.external_id) for r in refunds] == [
        ("marketplace", amount, str(refund["id"]))]  # fmt: skip
    assert sorted(e.topic for e in events) == ["orders/create", "refunds/create"]
    assert {e.status for e in events} == {"processed"}
    (first,) = [e for e in events if e.topic == "refunds/create"]
    assert first.error is not None and "fetched from the marketplace" in first.error
    assert [i.total for i in _documents(world, order.id) if i.kind == "credit_note"] == [-amount]
    assert money == []


def test_a_staff_refund_double_clicked_makes_one_refund_at_the_provider(world: World) -> None:
    # given a card order whose authorization we captured at the provider
    account, external_id, order = charged_woo_order(world)
    ref = f"woocommerce:{external_id}"

    # when staff click "refund 5.00" twice (two requests at once)
    barrier = threading.Barrier(2)

    def click(_: int) -> httpx.Response:
        barrier.wait()
        return world.api("POST", f"/orders/{order.id}/refunds", json={"amount": "5.00"})

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(click, range(2)))

    # then both are told of the same refund, the provider refunds once, and it is credited
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["refund_id"] for a in answers}) == 1
    assert sorted(a.json()["new"] for a in answers) == [False, True]
    wait_until(lambda: world.sandbox.payments.refunds_for(ref), what="the refund at the provider")
    wait_until(lambda: [i for i in _documents(world, order.id) if i.kind == "credit_note"],
               what="its credit note")  # fmt: skip
    world.wait_idle()
    (made,) = world.sandbox.payments.refunds_for(ref)
    assert made["amount"] == 500
    # and more than is left is refused in words
    too_much = world.api("POST", f"/orders/{order.id}/refunds", json={"amount": "100000.00"})
    assert too_much.status_code == 409 and "left to refund" in too_much.json()["detail"]
    with world.maker() as session:
        assert [m for m in check(session) if m.order_id == order.id] == []
        (refund,) = session.scalars(select(Refund).where(Refund.order_id == order.id)).all()
    assert (refund.requested_by or "").startswith(world.staff_name)  # the user who asked
    assert account
