"""The order pipeline end to end: real web server, real Celery workers, real Redis, the sandbox
payment provider and carrier over real HTTP, on SQLite and on PostgreSQL.

Every test attacks one invariant of DESIGN.md and counts effects from the outside world's side
(the sandbox ledgers) as well as ours.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import func, select

from core.settings import Settings
from db.models import (
    ChannelAccount,
    IdempotencyKey,
    Invoice,
    Label,
    OrderEvent,
    Payment,
    Refund,
    Shipment,
    StockItem,
    StockReservation,
)
from domain.canonical import CanonicalOrder
from integrations.amazon.connector import AmazonConnector
from integrations.amazon.mapper import map_order as map_amazon_order
from integrations.base import AccountConfig
from orders.intake import apply_order
from orders.invoices import find_gaps
from orders.stock import set_on_hand
from tests.support.stack import wait_until
from tests.support.staff import bearer
from tests.support.world import (
    SECRET,
    World,
    charged_woo_order,
    fixture_order,
    stock_for,
    world_fixture,
)

pytestmark = pytest.mark.slow


world = world_fixture("pipeline")


def test_fifty_concurrent_triggers_make_one_reservation_capture_invoice_and_label(
    world: World, fixtures_dir: Path
) -> None:
    # given an order whose payment Shopify only authorised: we capture it on Shopify
    shop = world.account()
    payload = fixture_order(fixtures_dir, financial_status="authorized")
    wanted = stock_for(world, payload, per_unit=3)
    world.post(shop, payload, topic="orders/create")
    order = world.wait_state(shop, str(payload["id"]), "new", "reserved", "paid", "documented",
                             "ready_to_ship")  # fmt: skip

    # when staff (or a webhook storm) trigger its pipeline 50 more times at once
    barrier = threading.Barrier(50)

    def push(_: int) -> int:
        barrier.wait()
        return world.api("POST", f"/orders/{order.id}/push").status_code

    with ThreadPoolExecutor(50) as pool:
        assert set(pool.map(push, range(50))) == {200}
    world.wait_state(shop, str(payload["id"]), "ready_to_ship")
    world.wait_idle()

    # then there is one of everything, on our side and in the outside world's ledgers
    with world.maker() as session:
        reservations = session.scalars(
            select(StockReservation).where(StockReservation.order_id == order.id)
        ).all()
        assert {r.sku: r.quantity for r in reservations} == wanted
        for sku, qty in wanted.items():
            item = session.get(StockItem, sku)
            assert item is not None and item.reserved == qty
        payments = session.scalars(select(Payment).where(Payment.order_id == order.id)).all()
        assert len(payments) == 1 and not payments[0].collected_by_marketplace
        assert payments[0].provider == "shopify"
        invoices = session.scalars(select(Invoice).where(Invoice.order_id == order.id)).all()
        assert len(invoices) == 1
        labels = session.scalars(
            select(Label).join(Shipment).where(Shipment.order_id == order.id)
        ).all()
        assert len(labels) == 1
    # the simulator's transactions: one CAPTURE of the order's AUTHORIZATION, ours, nothing at
    # the payment provider
    captures = world.sandbox.shopify.captures_for(str(payload["id"]))
    assert len(captures) == 1 and captures[0]["transaction"]["id"] == payments[0].external_id
    kinds = [t["kind"] for t in world.sandbox.shopify.transactions[str(payload["id"])]]
    assert kinds == ["AUTHORIZATION", "CAPTURE"]
    assert world.sandbox.payments.captures_for(str(order.id)) == []
    assert len([k for k in world.sandbox.carrier.labels if k == f"label:{order.id}"]) == 1


def test_workers_run_at_a_lower_cpu_priority_than_the_web_process(world: World) -> None:
    # given the stack as ``ordersync web`` and ``ordersync worker`` start it (WORKER_NICE unset)
    own = os.getpriority(os.PRIO_PROCESS, 0)  # a test run under ``nice`` passes its own on
    default = Settings.model_fields["worker_nice"].default
    children = {c.name: c.process for c in world.stack.group.children if c.process}
    # then each worker and its prefork pool run at WORKER_NICE, and the web process as started:
    # on a machine they share, a burst of webhooks gets a core before the pipeline does
    for name, process in children.items():
        procs = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
        wanted = max(default, own) if name.startswith("worker") else own
        assert {p.nice() for p in procs} == {wanted}, name
    assert any(name.startswith("worker") for name in children) and "web" in children


def test_a_worker_killed_after_the_capture_but_before_recording_it_charges_once(
    world: World, fixtures_dir: Path
) -> None:
    # given a capture that Shopify applies and then answers slowly
    shop = world.account()
    payload = fixture_order(fixtures_dir, financial_status="authorized")
    stock_for(world, payload)
    world.sandbox.shopify.capture_reply_delay_s = 3.0
    external = str(payload["id"])
    try:
        world.post(shop, payload, topic="orders/create")
        world.wait_state(shop, external, "reserved", "paid", timeout=30)
        wait_until(lambda: world.sandbox.shopify.captures_for(external),
                   timeout=30, what="capture applied on Shopify")  # fmt: skip

        # when every worker pool process is SIGKILLed while the answer is on its way
        killed = 0
        for child in world.stack.group.children:
            if child.name.startswith("worker") and child.process is not None:
                for pool_process in psutil.Process(child.process.pid).children(recursive=True):
                    os.kill(pool_process.pid, signal.SIGKILL)
                    killed += 1
        assert killed > 0
    finally:
        world.sandbox.shopify.capture_reply_delay_s = 0.0

    # then the redelivered task resumes with the same key: one capture, and the order completes
    done = world.wait_state(shop, external, "ready_to_ship", timeout=90)
    captures = world.sandbox.shopify.captures_for(external)
    assert len(captures) == 1
    with world.maker() as session:
        payment = session.scalars(select(Payment).where(Payment.order_id == done.id)).one()
    assert payment.external_id == captures[0]["transaction"]["id"]
    kinds = [t["kind"] for t in world.sandbox.shopify.transactions[external]]
    assert kinds.count("CAPTURE") == 1


def test_a_capture_lost_by_a_killed_worker_then_paid_on_the_marketplace_is_recorded_once(
    world: World, fixtures_dir: Path
) -> None:
    # given our capture applied on Shopify, answered slowly
    shop = world.account()
    payload = fixture_order(fixtures_dir, financial_status="authorized")
    stock_for(world, payload)
    external = str(payload["id"])
    world.sandbox.shopify.capture_reply_delay_s = 3.0
    try:
        world.post(shop, payload, topic="orders/create")
        order = world.wait_state(shop, external, "reserved", "paid", timeout=30)
        wait_until(lambda: world.sandbox.shopify.captures_for(external),
                   timeout=30, what="capture applied on Shopify")  # fmt: skip
        # when Shopify's update says the order is paid (our capture did that)
        paid = dict(payload, financial_status="paid", updated_at="2099-01-01T00:00:00Z")
        world.post(shop, paid)
        wait_until(lambda: (o := world.order(shop, external)) is not None
                   and o.payment_collected_by_marketplace, timeout=30,
                   what="the paid update applied")  # fmt: skip
        # and every worker pool process is SIGKILLed while our capture's answer is on its way
        for child in world.stack.group.children:
            if child.name.startswith("worker") and child.process is not None:
                for pool_process in psutil.Process(child.process.pid).children(recursive=True):
                    os.kill(pool_process.pid, signal.SIGKILL)
    finally:
        world.sandbox.shopify.capture_reply_delay_s = 0.0

    # then our one capture is found and recorded as ours, nothing is refunded (one
    # authorization, captured once), and no capture key is left unfinished
    done = world.wait_state(shop, external, "ready_to_ship", timeout=90)
    world.wait_idle()
    captures = world.sandbox.shopify.captures_for(external)
    assert len(captures) == 1
    with world.maker() as session:
        payment = session.scalars(select(Payment).where(Payment.order_id == done.id)).one()
        assert payment.external_id == captures[0]["transaction"]["id"]
        assert not payment.collected_by_marketplace and payment.provider == "shopify"
        assert session.scalars(select(Refund).where(Refund.order_id == done.id)).all() == []
        open_keys = session.scalars(
            select(IdempotencyKey.key).where(
                IdempotencyKey.key.startswith(f"capture:{done.id}"),
                IdempotencyKey.recovery_point.not_in(["finished", "rejected"]),
            )
        ).all()
    assert open_keys == []
    assert order.id == done.id


def test_an_expired_authorization_sends_the_order_to_needs_attention_with_the_reason(
    world: World, fixtures_dir: Path
) -> None:
    # given an authorized order whose authorization expired on Shopify before we captured it
    shop = world.account()
    payload = fixture_order(fixtures_dir, financial_status="authorized")
    stock_for(world, payload)
    external = str(payload["id"])
    world.sandbox.shopify.put_order(payload)
    world.sandbox.shopify.expire_authorization(external)

    # when its webhook arrives and the pipeline runs
    world.post(shop, payload, topic="orders/create")

    # then it waits for staff, with the reason in words, and nothing was captured
    order = world.wait_state(shop, external, "needs_attention")
    assert order.failed_step == "capture_payment"
    assert order.last_error is not None and "authorization expired at" in order.last_error
    assert world.sandbox.shopify.captures_for(external) == []
    with world.maker() as session:
        assert session.scalars(select(Payment).where(Payment.order_id == order.id)).all() == []


def test_two_orders_for_the_last_unit_one_waits_on_hold_until_stock_arrives(
    world: World, fixtures_dir: Path
) -> None:
    shop = world.account()
    first = fixture_order(fixtures_dir)
    second = copy.deepcopy(first)
    second["id"] = first["id"] + 1
    wanted = stock_for(world, first)  # exactly one order's worth

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda o: world.post(shop, o, topic="orders/create"), [first, second]))

    outcomes = sorted(
        world.wait_state(shop, str(o["id"]), "ready_to_ship", "on_hold").state
        for o in (first, second)
    )
    assert outcomes == ["on_hold", "ready_to_ship"]
    with world.maker() as session:
        for sku, qty in wanted.items():
            item = session.get(StockItem, sku)
            assert item is not None and (item.on_hand, item.reserved) == (qty, qty)

    # when stock arrives, the waiting order goes on by itself
    for sku, qty in wanted.items():
        response = world.api("PUT", f"/stock/{sku}", params={"on_hand": qty * 2})
        assert response.status_code == 200
    for o in (first, second):
        world.wait_state(shop, str(o["id"]), "ready_to_ship")


def test_a_failed_step_goes_to_needs_attention_and_staff_retry_resumes_it(
    world: World, fixtures_dir: Path
) -> None:
    # given an address the carrier rejects
    shop = world.account()
    payload = fixture_order(fixtures_dir, updated_at="2026-06-01T10:00:00Z")
    payload["shipping_address"] = {**payload["shipping_address"], "zip": "00000"}
    stock_for(world, payload)
    world.post(shop, payload, topic="orders/create")

    stuck = world.wait_state(shop, str(payload["id"]), "needs_attention")
    assert stuck.failed_step == "buy_label"
    assert stuck.last_error and "AddressRejected" in stuck.last_error
    assert "00000" not in stuck.last_error  # no customer data in errors

    # when the customer's address is corrected and staff retry
    fixed = copy.deepcopy(payload)
    fixed["updated_at"] = "2026-06-01T11:00:00Z"
    fixed["shipping_address"]["zip"] = "40202"
    world.post(shop, fixed)
    wait_until(lambda: (o := world.order(shop, str(payload["id"]))) and
               (o.shipping_address or {}).get("postal_code") == "40202",
               what="corrected address stored")  # fmt: skip
    retry = world.api("POST", f"/orders/{stuck.id}/retry")
    assert retry.status_code == 200 and retry.json()["resumed_from"] == "paid"

    # then it completes, and a second retry click is refused instead of repeating work
    world.wait_state(shop, str(payload["id"]), "ready_to_ship")
    assert world.api("POST", f"/orders/{stuck.id}/retry").status_code == 409
    with world.maker() as session:
        events = session.scalars(
            select(OrderEvent).where(
                OrderEvent.order_id == stuck.id, OrderEvent.kind == "transition"
            )
        ).all()
        kinds = [(e.from_state, e.to_state) for e in events]
    assert ("paid", "needs_attention") in kinds and ("needs_attention", "paid") in kinds


def test_stale_and_reordered_events_never_move_an_order_back_and_a_cancel_credits_it(
    world: World, fixtures_dir: Path
) -> None:
    shop = world.account()
    payload = fixture_order(fixtures_dir, updated_at="2026-07-01T10:00:00Z")
    wanted = stock_for(world, payload)
    world.post(shop, payload, topic="orders/create")
    ready = world.wait_state(shop, str(payload["id"]), "ready_to_ship")

    # an older event arrives late, then a newer ordinary update
    older = copy.deepcopy(payload)
    older["updated_at"] = "2026-07-01T09:00:00Z"
    older["total_price"] = "1.00"
    newer = copy.deepcopy(payload)
    newer["updated_at"] = "2026-07-01T12:00:00Z"
    newer["note"] = "gift wrap"
    world.post(shop, older)
    world.post(shop, newer)
    wait_until(lambda: (o := world.order(shop, str(payload["id"]))) and
               o.external_updated_at == dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC),
               what="newer update applied")  # fmt: skip
    order = world.order(shop, str(payload["id"]))
    assert order is not None
    assert order.state == "ready_to_ship" and str(order.total) == "598.9400"

    # the marketplace cancels it: stock goes back and the invoice is credited, once
    cancelled = copy.deepcopy(newer)
    cancelled["updated_at"] = "2026-07-01T13:00:00Z"
    cancelled["cancelled_at"] = "2026-07-01T13:00:00Z"
    world.post(shop, cancelled, topic="orders/cancelled")
    world.wait_state(shop, str(payload["id"]), "cancelled")

    def credited() -> bool:
        with world.maker() as session:
            return session.scalar(
                select(func.count()).select_from(Invoice)
                .where(Invoice.order_id == ready.id, Invoice.kind == "credit_note")
            ) == 1  # fmt: skip

    wait_until(credited, what="credit note issued")
    with world.maker() as session:
        for sku in wanted:
            item = session.get(StockItem, sku)
            assert item is not None and item.reserved == 0
        assert find_gaps(session) == {}


def _cancel_woo(world: World, account: str, external_id: str) -> None:
    world.sandbox.woocommerce.cancel_order(external_id)
    world.post_woo(account, external_id)
    world.post_woo(account, external_id)  # the shop delivers it again


def test_a_cancelled_order_we_charged_is_refunded_once_however_often_it_is_triggered(
    world: World, fixtures_dir: Path
) -> None:
    # given a card order whose authorization we captured at the provider, then cancelled
    shop, external_id, order = charged_woo_order(world)
    _cancel_woo(world, shop, external_id)
    world.wait_state(shop, external_id, "cancelled")

    def refunded() -> Refund | None:
        with world.maker() as session:
            return session.scalar(select(Refund).where(Refund.order_id == order.id))

    first = wait_until(refunded, what="refund recorded")

    # when staff ask for the refund again, twenty times at once (and it was done already)
    barrier = threading.Barrier(20)

    def retry(_: int) -> int:
        barrier.wait()
        return world.api("POST", f"/orders/{order.id}/retry").status_code

    with ThreadPoolExecutor(20) as pool:
        assert set(pool.map(retry, range(20))) == {409}  # nothing left to resume
    world.wait_idle()

    # then the provider refunded the capture once, in full, and we recorded exactly that
    with world.maker() as session:
        payment = session.scalars(select(Payment).where(Payment.order_id == order.id)).one()
        refunds = session.scalars(select(Refund).where(Refund.order_id == order.id)).all()
        kinds = session.scalars(
            select(OrderEvent.kind).where(OrderEvent.order_id == order.id)
        ).all()
    ledger = world.sandbox.payments.refunds_for(f"woocommerce:{external_id}")
    assert len(ledger) == 1 and len(refunds) == 1 and refunds[0].id == first.id
    assert ledger[0]["id"] == refunds[0].external_id
    assert ledger[0]["payment_intent"] == payment.external_id
    assert refunds[0].amount == payment.amount and refunds[0].payment_id == payment.id
    assert kinds.count("refunded") == 1 and "refund_failed" not in kinds


def test_a_refused_refund_is_shown_to_staff_and_their_retry_refunds_it(
    world: World, fixtures_dir: Path
) -> None:
    shop, external_id, order = charged_woo_order(world)
    with world.maker() as session:
        payment = session.scalars(select(Payment).where(Payment.order_id == order.id)).one()
    # someone refunded part of it in the provider's dashboard: a full refund is now refused
    intent = payment.external_id
    assert intent is not None
    world.sandbox.payments.refund_outside(intent, 100)
    _cancel_woo(world, shop, external_id)

    def events() -> list[OrderEvent]:
        with world.maker() as session:
            return list(session.scalars(
                select(OrderEvent).where(OrderEvent.order_id == order.id).order_by(OrderEvent.id)
            ).all())  # fmt: skip

    failed = wait_until(lambda: [e for e in events() if e.kind == "refund_failed"],
                        what="refund failure on the timeline")  # fmt: skip
    assert "amount_too_large" in failed[0].detail["error"]

    # the provider's side is put right; staff retry from the API
    world.sandbox.payments.refund_outside(intent, -100)
    response = world.api("POST", f"/orders/{order.id}/retry")
    assert response.status_code == 200 and response.json()["resumed_from"] == "cancelled"
    wait_until(lambda: [e for e in events() if e.kind == "refunded"], what="refund after retry")
    ledger = world.sandbox.payments.refunds_for(f"woocommerce:{external_id}")
    captures = world.sandbox.payments.captures_for(f"woocommerce:{external_id}")
    assert len(ledger) == 1 and ledger[0]["amount"] == captures[0]["amount"]


# --- orders the marketplace fulfils (Amazon FBA) ----------------------------------------------


def _amazon_config(world: World) -> AccountConfig:
    """An Amazon account connected to the sandbox's SP-API simulator."""
    spec = world.sandbox.accounts(SECRET)["amazon"]
    return AccountConfig(
        name=f"amazon-{uuid.uuid4().hex[:8]}",
        channel="amazon",
        shop=spec.shop,
        api_base_url=spec.api_base_url,
        credentials=spec.credentials,
    )


def _amazon_account(world: World, config: AccountConfig) -> int:
    with world.maker() as session, session.begin():
        account = ChannelAccount(
            name=config.name,
            channel=config.channel,
            shop=config.shop,
            api_base_url=config.api_base_url,
            credentials=config.credentials,
        )
        session.add(account)
        session.flush()
        return account.id


def _take_in(world: World, account_id: int, order: CanonicalOrder) -> int:
    """The order through the real intake upsert, then its pipeline on the real workers (staff's
    push: the same canvas that intake publishes)."""
    with world.maker() as session, session.begin():
        order_id = apply_order(session, account_id, order, actor="test:amazon").order_id
    response = world.api("POST", f"/orders/{order_id}/push")
    assert response.status_code == 200, response.text
    return order_id


def _events(world: World, order_id: int) -> list[OrderEvent]:
    with world.maker() as session:
        return list(session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        ).all())  # fmt: skip


def test_an_order_fulfilled_by_amazon_is_paid_and_invoiced_but_holds_no_stock_and_buys_no_label(
    world: World, fixtures_dir: Path
) -> None:
    # given the official 2026-01-01 searchOrders sample of an FBA order (fulfilledBy AMAZON),
    # with ids and SKUs of its own, and plenty of those SKUs on our own shelf
    (payload,) = json.loads(
        (fixtures_dir / "amazon" / "2026-01-01.searchOrders.200.sandbox-1.json").read_text()
    )["orders"]
    assert payload["fulfillment"]["fulfilledBy"] == "AMAZON"
    suffix = uuid.uuid4().hex[:8]
    payload["orderId"] = f"250-{suffix}"
    for item in payload["orderItems"]:
        item["product"]["sellerSku"] = f"{item['product']['sellerSku']}-{suffix}"
    config = _amazon_config(world)
    name, account_id = config.name, _amazon_account(world, config)
    afn = map_amazon_order(payload, name)
    assert afn.fulfilled_by_marketplace
    skus = {line.sku for line in afn.lines if line.sku}
    with world.maker() as session, session.begin():
        for sku in skus:
            set_on_hand(session, sku, 10)

    # when it goes through intake and the pipeline (the sample says Amazon already shipped it)
    assert afn.fulfillment_status == "fulfilled"
    order_id = _take_in(world, account_id, afn)
    world.wait_state(name, afn.external_id, "shipped")
    world.wait_idle()

    # then it is paid (by Amazon) and invoiced once, and nothing of ours was held or bought
    with world.maker() as session:
        held = session.scalars(
            select(StockReservation).where(StockReservation.order_id == order_id)
        ).all()
        assert held == []
        for sku in skus:
            item = session.get(StockItem, sku)
            assert item is not None and (item.on_hand, item.reserved) == (10, 0)
        payment = session.scalars(select(Payment).where(Payment.order_id == order_id)).one()
        assert payment.collected_by_marketplace and payment.provider == "amazon"
        assert payment.amount == afn.total
        invoices = session.scalars(select(Invoice).where(Invoice.order_id == order_id)).all()
        assert [i.kind for i in invoices] == ["invoice"]
        assert session.scalars(select(Shipment).where(Shipment.order_id == order_id)).all() == []
    assert f"label:{order_id}" not in world.sandbox.carrier.labels
    assert world.sandbox.payments.captures_for(str(order_id)) == []
    events = _events(world, order_id)
    reserved = next(e for e in events if e.to_state == "reserved")
    assert reserved.detail == {"reserved": {}, "fulfilled_by": "amazon"}
    assert [e.kind for e in events].count("label_not_needed") == 1
    assert "label" not in [e.kind for e in events]
    page = httpx.get(f"{world.stack.base_url}/orders/{order_id}", headers=bearer(world.staff))
    assert page.status_code == 200 and "fulfilled by the marketplace" in page.text

    # and, since Amazon shipped it, it went on to shipped by itself, once; staff's Ship has
    # nothing left to do; nothing was pushed to Amazon (a push of an order the simulator does
    # not hold would have failed the step) and no stock left our shelf
    assert not [key for key in world.sandbox.amazon.shipments if key[0] == afn.external_id]
    response = world.api("POST", f"/orders/{order_id}/ship")
    assert response.status_code == 409, response.text
    shipped = [e for e in _events(world, order_id) if e.to_state == "shipped"]
    assert len(shipped) == 1 and shipped[0].detail == {"fulfilled_by": "amazon"}
    with world.maker() as session:
        for sku in skus:
            item = session.get(StockItem, sku)
            assert item is not None and (item.on_hand, item.reserved) == (10, 0)


def test_an_amazon_order_the_merchant_fulfils_still_reserves_stock_gets_a_label_and_is_pushed(
    world: World,
) -> None:
    # given an MFN order in the Amazon simulator, read through the real connector (v0 with items
    # and the restricted address), its SKUs in stock
    (external_id,) = world.sandbox.add_amazon_orders(1)
    world.sandbox.pay_pending_amazon_orders()  # Amazon authorises the payment (not Pending)
    config = _amazon_config(world)
    name, account_id = config.name, _amazon_account(world, config)
    connector = AmazonConnector(config)
    try:
        mfn = connector.get_order(external_id)
    finally:
        connector.close()
    assert not mfn.fulfilled_by_marketplace
    wanted: dict[str, int] = {}
    for line in mfn.lines:
        assert line.sku
        wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
    with world.maker() as session, session.begin():
        for sku, qty in wanted.items():
            item = session.get(StockItem, sku)
            set_on_hand(session, sku, (item.on_hand if item else 0) + qty)

    # when it goes through intake and the pipeline
    order_id = _take_in(world, account_id, mfn)
    world.wait_state(name, external_id, "ready_to_ship")

    # then its stock is held and one label was bought
    with world.maker() as session:
        reservations = session.scalars(
            select(StockReservation).where(StockReservation.order_id == order_id)
        ).all()
        assert {r.sku: r.quantity for r in reservations} == wanted
        labels = session.scalars(
            select(Label).join(Shipment).where(Shipment.order_id == order_id)
        ).all()
        assert len(labels) == 1
    assert f"label:{order_id}" in world.sandbox.carrier.labels

    # and shipping it confirms the shipment to Amazon with the label's tracking number
    response = world.api("POST", f"/orders/{order_id}/ship")
    assert response.status_code == 200, response.text
    world.wait_state(name, external_id, "shipped")

    # (shipped is the state change; its push goes out through the outbox right after)
    def pushed() -> list[dict[str, Any]]:
        return [p for key, p in world.sandbox.amazon.shipments.items() if key[0] == external_id]

    wait_until(pushed, timeout=60, what="the shipment confirmed to Amazon")
    assert [p["trackingNumber"] for p in pushed()] == [labels[0].tracking_number]


def test_half_a_surrogate_pair_in_the_address_becomes_u_fffd_and_the_order_ships(
    world: World, fixtures_dir: Path
) -> None:
    # given an order whose street and name end in half a UTF-16 pair (a JSON \ud83d escape: an
    # emoji cut in half), which UTF-8 cannot encode: its label request used to fail
    shop = world.account()
    payload = fixture_order(fixtures_dir)
    payload["shipping_address"] = {
        **payload["shipping_address"],
        "address1": "Chestnut Street 92 \ud83d",
        "name": "Bob Norman \udc00",
    }
    stock_for(world, payload)

    # when it comes in by webhook (world.post sends the halves as JSON escapes)
    world.post(shop, payload, topic="orders/create")

    # then it goes all the way, each half stored and sent to the carrier as U+FFFD
    order = world.wait_state(shop, str(payload["id"]), "ready_to_ship")
    assert order.shipping_address is not None
    assert order.shipping_address["line1"] == "Chestnut Street 92 \ufffd"
    ship_to = world.sandbox.carrier.labels[f"label:{order.id}"].request["shipment"]["ship_to"]
    assert (ship_to["name"], ship_to["address_line1"]) == (
        "Bob Norman \ufffd",
        "Chestnut Street 92 \ufffd",
    )
