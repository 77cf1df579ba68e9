"""A refund made in Shopify's admin whose webhook never came (SQLite and PostgreSQL): the next
poll reads it (``OrderRefunds``) and it is recorded once, credited for exactly its line and
its unit restocked, however many polls see it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
from fastapi import FastAPI

from db.models import Invoice, Order, Payment, Refund, StockItem, StockReservation
from domain.states import OrderState
from integrations.base import AccountConfig
from integrations.shopify.connector import ShopifyConnector
from integrations.shopify.throttle import CostBucket
from orders import documents, stock
from orders.intake import apply_order
from orders.transitions import load_for_update, transition
from sandbox.shopify import SANDBOX_ACCESS_TOKEN, SANDBOX_SHOP, ShopifySimulator
from tests.support.servers import serve_app
from tests.support.shop import Shop

S = OrderState
SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def sim() -> ShopifySimulator:
    return ShopifySimulator(seed=5, restore_rate=5000.0)


@pytest.fixture
def shopify(sim: ShopifySimulator) -> Iterator[ShopifyConnector]:
    app = FastAPI()
    app.include_router(sim.build_router(), prefix="/shopify")
    with serve_app(app) as base_url:
        account = AccountConfig(name="shop", channel="shopify", shop=SANDBOX_SHOP,
                                api_base_url=f"{base_url}/shopify",
                                credentials={"access_token": SANDBOX_ACCESS_TOKEN})  # fmt: skip
        connector = ShopifyConnector(account, cost_bucket=CostBucket())
        yield connector
        connector.close()


def _poll(shop: Shop, shopify: ShopifyConnector) -> list[int]:
    """One poll, each order taken in as the sync does; the ids of the refunds it recorded."""
    recorded: list[int] = []
    for order in shopify.fetch_updated_orders(SINCE):
        with shop.transaction() as session:
            recorded += apply_order(session, shop.account.id, order, actor="poll:shopify").refunded
    return recorded


def test_a_refund_made_in_the_admin_is_read_by_the_next_poll_credited_and_restocked_once(
    shop: Shop, sim: ShopifySimulator, shopify: ShopifyConnector
) -> None:
    # given a paid order taken in by a poll, reserved and invoiced
    [external_id] = sim.add_orders(1)
    sim.orders[external_id]["financial_status"] = "paid"
    assert _poll(shop, shopify) == []
    (order,) = shop.rows(Order)
    line = sim.orders[external_id]["line_items"][0]
    with shop.transaction() as session:
        for item in sim.orders[external_id]["line_items"]:
            stock.set_on_hand(session, item["sku"], 10)
        row = load_for_update(session, order.id)
        assert stock.reserve(session, order.id).ok
        transition(session, row, S.RESERVED, actor="test")
        session.add(Payment(order_id=order.id, provider="shopify", amount=row.total,
                            currency=row.currency, status="collected",
                            idempotency_key=f"capture:{order.id}",
                            collected_by_marketplace=True))  # fmt: skip
        transition(session, row, S.PAID, actor="test")
    assert documents.issue_invoice(shop.transaction, order.id).result.startswith("INV-")
    held = {r.sku: r.quantity for r in shop.rows(StockReservation, order_id=order.id)}

    # when one unit of its first line is refunded (and restocked) in Shopify's admin, with no
    # webhook, and the poll runs twice
    refund = sim.refund_line(external_id, 0, 1, restock=True)
    first, second = _poll(shop, shopify), _poll(shop, shopify)

    # then the refund is recorded once, by its Shopify id
    assert len(first) == 1 and second == []
    (recorded,) = shop.rows(Refund, order_id=order.id)
    paid_back = Decimal(refund["transactions"][0]["amount"])
    assert (recorded.source, recorded.external_id, recorded.amount) == ("marketplace",
        str(refund["id"]), paid_back)  # fmt: skip
    # and its unit goes back: the order holds one unit fewer of that SKU
    after = {r.sku: r.quantity for r in shop.rows(StockReservation, order_id=order.id)
             if r.status == "held"}  # fmt: skip
    assert after.get(line["sku"], 0) == held[line["sku"]] - 1
    with shop.maker() as session:
        assert session.get_one(StockItem, line["sku"]).reserved == held[line["sku"]] - 1
    # and while its credit note is not issued (its publish lost to a killed worker: the second
    # poll had nothing new to publish) the sweeper finds the order, once the refund is older
    # than its cut-off
    later = recorded.created_at + dt.timedelta(seconds=1)
    with shop.maker() as session:
        assert documents.uncredited_refunds(session, before=later, limit=10) == [order.id]
        assert documents.uncredited_refunds(session, before=recorded.created_at, limit=10) == []
    # and one credit note of exactly that line
    assert documents.credit_note(shop.transaction, order.id).result.startswith("CN-")
    assert documents.credit_note(shop.transaction, order.id).result == "nothing to credit"
    with shop.maker() as session:
        assert documents.uncredited_refunds(session, before=later, limit=10) == []
    (note,) = [i for i in shop.rows(Invoice, order_id=order.id) if i.kind == "credit_note"]
    assert note.total == -paid_back
    assert [(x["ref"], x["quantity"]) for x in note.lines or []] == [(str(line["id"]), 1)]
    # (an order is asked for its refunds only once it has some)
    assert sum(1 for op, _ in sim.request_log if op == "OrderRefunds") == 2
