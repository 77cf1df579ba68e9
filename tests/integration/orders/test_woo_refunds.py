"""WooCommerce refunds with their line items (SQLite and PostgreSQL): the order's body lists
only summaries, so a refund it lists that we have not recorded makes intake fetch the order
whole (its refunds at ``/orders/{id}/refunds``), and the refund is recorded once, credited
per line and restocked as Woo restocked it. The simulator over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from fastapi import FastAPI

from db.models import ChannelAccount, Invoice, Order, Payment, Refund, StockItem, StockReservation
from domain.states import OrderState
from integrations.base import AccountConfig
from integrations.woocommerce.connector import WooCommerceConnector
from integrations.woocommerce.mapper import map_order
from orders import documents, stock
from orders.intake import apply_order
from orders.transitions import load_for_update, transition
from sandbox.woocommerce import (
    SANDBOX_CONSUMER_KEY,
    SANDBOX_CONSUMER_SECRET,
    WooCommerceSimulator,
)
from tests.support.servers import serve_app
from tests.support.shop import Shop

S = OrderState
CREDENTIALS = {"consumer_key": SANDBOX_CONSUMER_KEY, "consumer_secret": SANDBOX_CONSUMER_SECRET}


@pytest.fixture
def sim() -> WooCommerceSimulator:
    return WooCommerceSimulator(seed=4)


@pytest.fixture
def woo(sim: WooCommerceSimulator) -> Iterator[WooCommerceConnector]:
    app = FastAPI()
    app.include_router(sim.build_router(), prefix="/woocommerce")
    with serve_app(app) as base_url:
        account = AccountConfig(name="woo", channel="woocommerce",
                                api_base_url=f"{base_url}/woocommerce",
                                credentials=CREDENTIALS)  # fmt: skip
        connector = WooCommerceConnector(account)
        yield connector
        connector.client.close()


def _account(shop: Shop, credentials: dict[str, str]) -> int:
    with shop.transaction() as session:
        account = ChannelAccount(
            name=f"woo-{len(credentials)}", channel="woocommerce",
            api_base_url="http://woo.test", credentials=credentials,
        )  # fmt: skip
        session.add(account)
        session.flush()
        return account.id


def _paid_and_invoiced(shop: Shop, order_id: int, skus: list[str]) -> dict[str, int]:
    """The order reserved, paid (collected by the shop's gateway) and invoiced; what it holds."""
    with shop.transaction() as session:
        for sku in skus:
            stock.set_on_hand(session, sku, 10)
        row = load_for_update(session, order_id)
        assert stock.reserve(session, order_id).ok
        transition(session, row, S.RESERVED, actor="test")
        session.add(Payment(order_id=order_id, provider="woocommerce", amount=row.total,
                            currency=row.currency, status="collected",
                            idempotency_key=f"capture:{order_id}",
                            collected_by_marketplace=True))  # fmt: skip
        transition(session, row, S.PAID, actor="test")
    assert documents.issue_invoice(shop.transaction, order_id).result.startswith("INV-")
    return {r.sku: r.quantity for r in shop.rows(StockReservation, order_id=order_id)}


def test_a_woo_refund_of_a_line_is_fetched_whole_recorded_once_credited_and_restocked(
    shop: Shop, sim: WooCommerceSimulator, woo: WooCommerceConnector
) -> None:
    # given a paid order, taken in, reserved and invoiced
    account_id = _account(shop, CREDENTIALS)
    [external_id] = sim.add_orders(1, status="processing")
    with shop.transaction() as session:
        order_id = apply_order(session, account_id, woo.get_order(external_id), actor="t").order_id
    line = sim.orders[external_id]["line_items"][0]
    skus = [item["sku"] for item in sim.orders[external_id]["line_items"]]
    held = _paid_and_invoiced(shop, order_id, skus)

    # when the shop refunds one unit of that line, restocked (Woo's api_restock)
    net, tax = Decimal(str(line["price"])), Decimal(line["total_tax"]) / line["quantity"]
    woo.client.create_refund(external_id, {"api_refund": False, "line_items": [
        {"id": line["id"], "quantity": 1, "refund_total": str(net),
         "refund_tax": [{"id": 75, "refund_total": str(tax.quantize(Decimal("0.01")))}]},
    ]})  # fmt: skip

    # and its order.updated webhook arrives (the body lists the refund's summary only)
    with shop.transaction() as session:
        hooked = apply_order(session, account_id, map_order(sim.orders[external_id], "woo"),
                             actor="webhook:woocommerce")  # fmt: skip
    # then nothing is recorded from the summary: the order is fetched whole
    assert (hooked.refunded, hooked.refetch) == ((), external_id)
    assert shop.rows(Refund, order_id=order_id) == []

    # when it is fetched (refresh_order), twice
    fetched = []
    for _ in range(2):
        with shop.transaction() as session:
            fetched.append(apply_order(session, account_id, woo.get_order(external_id),
                                       actor="refresh:woocommerce"))  # fmt: skip

    # then the refund is recorded once, with its line
    assert len(fetched[0].refunded) == 1 and fetched[1].refunded == ()
    assert fetched[1].refetch is None  # recorded: no more fetching
    (refund,) = shop.rows(Refund, order_id=order_id)
    amount = net + tax.quantize(Decimal("0.01"))
    assert (refund.external_id, refund.amount) == (str(sim.refunds[external_id][0]["id"]), amount)
    assert [(x["line"], x["quantity"], x["restock"]) for x in refund.lines or []] == [
        (str(line["id"]), 1, True)]  # fmt: skip
    # and the unit is restocked (the order holds one fewer)
    after = {r.sku: r.quantity for r in shop.rows(StockReservation, order_id=order_id)
             if r.status == "held"}  # fmt: skip
    assert after.get(line["sku"], 0) == held[line["sku"]] - 1
    with shop.maker() as session:
        assert session.get_one(StockItem, line["sku"]).reserved == held[line["sku"]] - 1
    # and one credit note of that line
    assert documents.credit_note(shop.transaction, order_id).result.startswith("CN-")
    (note,) = [i for i in shop.rows(Invoice, order_id=order_id) if i.kind == "credit_note"]
    assert note.total == -amount
    assert [(x["ref"], x["quantity"]) for x in note.lines or []] == [(str(line["id"]), 1)]


def test_a_woo_refund_of_an_account_we_cannot_ask_is_recorded_as_its_amount(
    shop: Shop, sim: WooCommerceSimulator
) -> None:
    # given a webhook-only account (no credentials) and an order whose body lists a refund
    account_id = _account(shop, {})
    [external_id] = sim.add_orders(1, status="processing")
    body = dict(sim.orders[external_id], refunds=[{"id": 99, "reason": "", "total": "-5.00"}])

    with shop.transaction() as session:
        result = apply_order(session, account_id, map_order(body, "woo"), actor="webhook:woo")

    # then it is recorded from the body, as an amount (there is no one to ask for its lines)
    assert result.refetch is None and len(result.refunded) == 1
    (refund,) = shop.rows(Refund, order_id=result.order_id)
    assert (refund.external_id, refund.amount, refund.lines) == ("99", Decimal("5.00"), [])
    assert shop.rows(Order)[0].id == result.order_id
