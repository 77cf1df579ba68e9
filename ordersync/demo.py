"""``ordersync demo``: the whole system against the sandbox marketplaces, in one command.

Starts the embedded Redis (when no URL is set), migrates the database, starts the sandbox
(four marketplaces, a payment provider, a carrier), the web app, a worker and Beat; creates
run-scoped accounts; then the N orders arrive as they would in production:

- Shopify and WooCommerce send signed webhooks (some delivered twice with the same id, some
  followed by an update under a new id, a few reordered);
- Amazon and eBay send nothing: their orders are found by polling (``poll_account``).

Every order then runs the pipeline (stock, payment, invoice, label) until it is
``ready_to_ship`` or ``on_hold`` (the demo stock is set to run out); Shopify keeps two SKUs at
a second location, so some of its orders ship in two shipments. Every SKU is listed on all four
marketplaces (``listings sync`` of each account), so every reservation moves stock that is
pushed, coalesced and in bulk, to all four (Shopify's account keeps 10 % back). After the sale
some paid Shopify orders are edited (a line added) and some partly refunded. Then the nightly
full sync runs once, and its reconcile report is part of the summary (``ordersync sync status``
shows it too). Then "staff" cancel a tenth of the ready orders (their labels are voided, their
money refunded, the cancellation pushed) and ship the rest (the fulfilments go out through the
outbox), and the sandbox carrier delivers the parcels (Beat tracks them every
``TRACK_INTERVAL_S``, 2 s here) until all is quiet. The demo's staff user ``demo`` (an operator)
gets a new password each run, printed. The summary counts what happened from our side and from
the sandbox's ledgers (captures, labels, fulfilments, cancellations, voids, stock calls);
``channel_stock_mismatches`` is the number of listings whose quantity in the sandbox differs,
once quiet, from what the buffer rules give for our available stock (must be 0). ``--json`` adds
it as one JSON object on the last line of stdout; ``--keep`` leaves everything running.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select, update

from core.logging import configure_logging
from core.net import free_port
from core.runtime import embedded_redis, redis_url
from core.settings import get_settings
from db.migrate import upgrade
from db.models import (
    ChannelAccount,
    InboxEvent,
    Invoice,
    Label,
    Listing,
    Order,
    OrderEvent,
    OutboxMessage,
    Payment,
    Refund,
    Shipment,
    StockItem,
    StockReservation,
    SyncRun,
)
from db.session import session_scope
from domain.states import InboxStatus
from integrations import registry
from orders.stock import set_on_hand
from ordersync.supervisor import ProcessGroup, sigterm_interrupts, stopping, wait_ready
from sandbox import carrier as sandbox_carrier
from sandbox import payments as sandbox_payments
from sandbox.server import Sandbox

__all__ = ["run_demo"]

SEND_THREADS = 8
#: how long the demo waits for its full sync (Amazon's getOrderItems refills at 0.5/s)
RECONCILE_TIMEOUT_S = 120.0
DEMO_USER = "demo"
#: share of the N orders per marketplace (the rest goes to eBay)
SPLIT = {"shopify": 0.4, "woocommerce": 0.3, "amazon": 0.15}
#: units on hand per SKU per order of the run: low enough that popular SKUs run out
STOCK_PER_ORDER = 0.8
SETTLED = {"ready_to_ship", "on_hold", "needs_attention", "cancelled", "shipped", "delivered"}
#: Shopify keeps these at its second location: orders with them and others ship in two parcels
SECOND_LOCATION_SKUS = ("SKU-BLUE-S", "SKU-BLUE-M")
#: share of the ready orders staff cancel (Amazon's excepted: the seller cannot, by API)
CANCEL_SHARE = 0.1
CANCEL_REASON = "demo: the buyer changed their mind"
#: the demo's buffer rule on Shopify: keep 10 % back from that channel
SHOPIFY_KEEP_PERCENT = 10
#: how long the stock pushes may take to go quiet after the last order settled
STOCK_QUIET_TIMEOUT_S = 60
Delivery = tuple[str, dict[str, str], bytes]  # (path, headers, body)


@dataclass
class Plan:
    deliveries: list[Delivery] = field(default_factory=list)
    distinct: int = 0  # distinct deliveries = inbox rows expected
    per_channel: dict[str, int] = field(default_factory=dict)


def _demo_user() -> str:
    """The demo's operator, with a new random password each run (printed, never stored)."""
    from orders.users import Role, UserError, add_user, reset_password

    password = secrets.token_urlsafe(12)
    with session_scope() as session:
        try:
            reset_password(session, DEMO_USER, password, actor="demo")
        except UserError:  # the first demo on this database
            add_user(session, DEMO_USER, password, Role.OPERATOR, actor="demo")
    return password


def _reconcile(err: Console, *, timeout_s: float) -> dict[str, int] | None:
    """The nightly full sync, run now: every account re-read, what polls and webhooks missed
    repaired, and the night's report stored (``ordersync sync status`` shows it). Its totals,
    or None if it is not done within ``timeout_s`` (it goes on in the background)."""
    from db.models import ReconcileReport
    from workflows.sync import full_sync_all

    with session_scope() as session:
        before = session.scalar(select(func.max(ReconcileReport.id))) or 0
    full_sync_all.delay()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope() as session:
            report = session.scalar(
                select(ReconcileReport).where(
                    ReconcileReport.id > before, ReconcileReport.finished_at.is_not(None)
                )
            )
            if report is not None:
                names = ("accounts", "seen", "created", "updated", "states_repaired", "flagged",
                         "errors")  # fmt: skip
                return {name: int(getattr(report, name)) for name in names}
        time.sleep(0.5)
    err.print("[yellow]the nightly full sync is still running: see `ordersync sync status`")
    return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _sends_webhooks(channel: str) -> bool:
    return registry.get(channel).webhooks is not None


def _split(n: int) -> dict[str, int]:
    counts = {ch: int(n * share) for ch, share in SPLIT.items()}
    counts["ebay"] = n - sum(counts.values())
    return counts


def _webhooks(
    sandbox: Sandbox, counts: dict[str, int], accounts: dict[str, str], secret: str,
    duplicate_rate: float, rng: random.Random,
) -> Plan:  # fmt: skip
    """Orders created in the Shopify and WooCommerce simulators and the deliveries they make."""
    plan = Plan()
    shop, woo = sandbox.shopify, sandbox.woocommerce
    for external_id in shop.add_orders(counts["shopify"]):
        path = f"/webhooks/shopify/{accounts['shopify']}"
        headers, body = shop.webhook_delivery(external_id, "orders/create", secret)
        plan.deliveries.append((path, headers, body))
        plan.distinct += 1
        roll = rng.random()
        if roll < duplicate_rate:  # Shopify retried: the same delivery again
            plan.deliveries.append((path, headers, body))
        elif roll < duplicate_rate * 1.5:  # edited in the admin: a new delivery, same order
            shop.touch_order(external_id)
            headers2, body2 = shop.webhook_delivery(external_id, "orders/updated", secret)
            plan.deliveries.append((path, headers2, body2))
            plan.distinct += 1
    for external_id in woo.add_orders(counts["woocommerce"]):
        path = f"/webhooks/woocommerce/{accounts['woocommerce']}"
        headers, body = woo.webhook_delivery(external_id, "order.created", secret)
        plan.deliveries.append((path, headers, body))
        plan.distinct += 1
        if rng.random() < duplicate_rate:  # a resend of the same delivery
            plan.deliveries.append((path, headers, body))
    # webhooks are not ordered: shuffle within small windows (a retry may overtake its original)
    window = 8
    for start in range(0, len(plan.deliveries), window):
        chunk = plan.deliveries[start : start + window]
        rng.shuffle(chunk)
        plan.deliveries[start : start + window] = chunk
    return plan


def _pay_pending(sandbox: Sandbox, accounts: dict[str, str], secret: str) -> Plan:
    """The buyers who had not paid at checkout pay (a Shopify manual payment, a WooCommerce bank
    transfer arrives): the shops say so by webhook and those orders go on. Authorised card
    orders are left to us to capture."""
    plan = Plan()
    shop, woo = sandbox.shopify, sandbox.woocommerce
    for external_id, order in list(shop.orders.items()):
        if order["financial_status"] == "pending":
            shop.touch_order(external_id)
            headers, body = shop.webhook_delivery(external_id, "orders/updated", secret)
            plan.deliveries.append((f"/webhooks/shopify/{accounts['shopify']}", headers, body))
    for external_id, order in list(woo.orders.items()):
        if order["status"] == "pending":
            woo.touch_order(external_id)
            headers, body = woo.webhook_delivery(
                external_id, "order.updated", secret, delivery_id=secrets.token_hex(16)
            )
            plan.deliveries.append(
                (f"/webhooks/woocommerce/{accounts['woocommerce']}", headers, body)
            )
    plan.distinct = len(plan.deliveries)
    return plan


AFTER_SALES_SHARE = 0.15  # of the ready Shopify orders: edited, and as many partly refunded


def _after_sales(
    sandbox: Sandbox, accounts: dict[str, str], secret: str, account_id: int, rng: random.Random
) -> Plan:
    """Edits and partial refunds in the Shopify admin of paid orders that are ready to ship,
    and the webhooks that tell us (``orders/edited`` + ``orders/updated`` for an edit,
    ``refunds/create`` + ``orders/updated`` for a refund; a refund's sometimes twice)."""
    shop, path = sandbox.shopify, f"/webhooks/shopify/{accounts['shopify']}"
    with session_scope() as session:
        ready = set(
            session.scalars(
                select(Order.external_id).where(
                    Order.channel_account_id == account_id, Order.state == "ready_to_ship"
                )
            )
        )
    paid = sorted(
        i for i, o in shop.orders.items() if i in ready and o["financial_status"] == "paid"
    )
    rng.shuffle(paid)
    count = max(1, int(len(paid) * AFTER_SALES_SHARE)) if paid else 0
    plan = Plan()
    for external_id in paid[:count]:
        edit = shop.edit_add_line(external_id, rng.choice(shop.skus), 1)
        plan.deliveries.append((path, *shop.edit_delivery(edit, secret)))
        plan.deliveries.append(
            (path, *shop.webhook_delivery(external_id, "orders/updated", secret))
        )
    for external_id in paid[count : 2 * count]:
        refund = shop.refund_line(external_id, 0, 1, restock=True)
        delivery = (path, *shop.refund_delivery(refund, secret))
        plan.deliveries.append(delivery)
        if rng.random() < 0.5:
            plan.deliveries.append(delivery)  # Shopify retried it
        plan.deliveries.append(
            (path, *shop.webhook_delivery(external_id, "orders/updated", secret))
        )
    return plan


def _wait_for_credit_notes(account_ids: list[int], deadline: float, group: ProcessGroup) -> None:
    """Until every refund of lines has its credit note and every webhook is processed."""
    while time.monotonic() < deadline and not group.dead():
        with session_scope() as session:
            run_orders = select(Order.id).where(Order.channel_account_id.in_(account_ids))
            refunds = session.scalar(
                select(func.count()).select_from(Refund)
                .where(Refund.order_id.in_(run_orders), Refund.source != "provider")
            )  # fmt: skip
            notes = session.scalar(
                select(func.count()).select_from(Invoice)
                .where(Invoice.order_id.in_(run_orders), Invoice.source_key.like("credit:refund:%"))
            )  # fmt: skip
        _, _, waiting = _progress(account_ids)
        if notes == refunds and not waiting:
            return
        time.sleep(0.25)


def _past_the_last_update(sandbox: Sandbox, limit_s: float = 10.0) -> None:
    """The simulated Shopify stamps whole seconds and makes each update of an order a second
    newer than its last, so an order edited and refunded within a second is stamped ahead of
    the clock; the nightly full sync reads up to now (an order stamped later is the next
    poll's): wait, a few seconds at most, until the clock has passed every stamp."""
    orders = list(sandbox.shopify.orders.values())
    stamps = [dt.datetime.fromisoformat(o["updated_at"]) for o in orders]
    if not stamps:
        return
    ready_at = max(stamps) + dt.timedelta(seconds=1)
    deadline = time.monotonic() + limit_s
    while dt.datetime.now(dt.UTC) < ready_at and time.monotonic() < deadline:
        time.sleep(0.1)


def _demo_skus(sandbox: Sandbox) -> set[str]:
    from sandbox import woocommerce

    skus = set(woocommerce.DEFAULT_SKUS)
    for sim in (sandbox.shopify, sandbox.amazon, sandbox.ebay):
        skus.update(sim.skus)
    return skus


def _progress(account_ids: list[int]) -> tuple[int, int, int]:
    """(orders received, orders settled, inbox rows still waiting) for the run's accounts."""
    with session_scope() as session:
        states = dict(
            session.execute(
                select(Order.state, func.count())
                .where(Order.channel_account_id.in_(account_ids))
                .group_by(Order.state)
            ).all()
        )
        waiting = session.scalar(
            select(func.count())
            .select_from(InboxEvent)
            .where(
                InboxEvent.channel_account_id.in_(account_ids),
                InboxEvent.status == InboxStatus.RECEIVED,
            )
        )
    settled = sum(n for state, n in states.items() if state in SETTLED)
    return sum(states.values()), settled, int(waiting or 0)


def _polled(account_id: int) -> bool:
    with session_scope() as session:
        return bool(
            session.scalar(
                select(func.count())
                .select_from(SyncRun)
                .where(SyncRun.channel_account_id == account_id, SyncRun.status == "ok")
            )
        )


def _stock_pending(account_ids: list[int]) -> int:
    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Listing).where(
                    Listing.channel_account_id.in_(account_ids),
                    Listing.want_version > Listing.pushed_version,
                    Listing.fulfilled_by_marketplace.is_(False),
                )
            ) or 0
        )  # fmt: skip


def _stock_mismatches(account_ids: list[int], sandbox: Sandbox) -> int:
    """Listings whose quantity in the sandbox is not the buffered available quantity."""
    from orders.stock_push import quantity_for

    shown = sandbox.channel_stock()
    wrong = 0
    with session_scope() as session:
        rows = session.execute(
            select(Listing, ChannelAccount)
            .join(ChannelAccount, ChannelAccount.id == Listing.channel_account_id)
            .where(Listing.channel_account_id.in_(account_ids),
                   Listing.fulfilled_by_marketplace.is_(False))
        ).all()  # fmt: skip
        for listing, account in rows:
            want = quantity_for(session, listing, account)
            if want is not None and shown[account.channel].get(listing.sku) != want:
                wrong += 1
    return wrong


def _sync_listings(account_ids: list[int]) -> None:
    """``ordersync listings sync`` for each account: the new listings are pushed our stock."""
    from orders.stock_push import sync_listings
    from workflows.providers import connector_for

    for account_id in account_ids:
        with session_scope() as session:
            account = session.get(ChannelAccount, account_id)
            assert account is not None
            session.expunge(account)
        connector = connector_for(account)
        try:
            sync_listings(session_scope, account_id, connector)
        finally:
            connector.close()


def _summary(
    account_ids: list[int], sandbox: Sandbox, orders_sent: int, deliveries: int, seconds: float
) -> dict[str, Any]:
    from orders.invoices import find_gaps
    from orders.money_check import check

    with session_scope() as session:
        in_run = Order.channel_account_id.in_(account_ids)
        by_state = dict(
            session.execute(
                select(Order.state, func.count()).where(in_run).group_by(Order.state)
            ).all()
        )
        by_channel = dict(
            session.execute(
                select(Order.channel, func.count()).where(in_run).group_by(Order.channel)
            ).all()
        )
        failed = session.scalar(
            select(func.count()).select_from(InboxEvent).where(
                InboxEvent.channel_account_id.in_(account_ids),
                InboxEvent.status == InboxStatus.FAILED,
            )
        )  # fmt: skip
        run_orders = select(Order.id).where(in_run)
        paid = session.scalar(
            select(func.count()).select_from(Payment).where(
                Payment.order_id.in_(run_orders), Payment.collected_by_marketplace.is_(False)
            )
        )  # fmt: skip
        collected = session.scalar(
            select(func.count()).select_from(Payment).where(
                Payment.order_id.in_(run_orders), Payment.collected_by_marketplace.is_(True)
            )
        )  # fmt: skip
        documented = session.scalar(
            select(func.count()).select_from(Label).join(Shipment)
            .where(Shipment.order_id.in_(run_orders))
        )  # fmt: skip
        invoices = session.scalar(
            select(func.count()).select_from(Invoice)
            .where(Invoice.order_id.in_(run_orders), Invoice.kind == "invoice")
        )  # fmt: skip
        gaps = find_gaps(session)
        left = Shipment.status.in_(["shipped", "delivered", "exception"])
        shipments = session.scalar(
            select(func.count()).select_from(Shipment)
            .where(Shipment.order_id.in_(run_orders), left)
        )  # fmt: skip
        split_orders = session.scalar(
            select(func.count()).select_from(
                select(Shipment.order_id)
                .where(Shipment.order_id.in_(run_orders), left)
                .group_by(Shipment.order_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
        effects = dict(
            session.execute(
                select(OutboxMessage.kind, func.count())
                .where(OutboxMessage.order_id.in_(run_orders),
                       OutboxMessage.status == "delivered")
                .group_by(OutboxMessage.kind)
            ).all()
        )  # fmt: skip
        undelivered = session.scalar(
            select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.order_id.in_(run_orders), OutboxMessage.kind.is_not(None),
                OutboxMessage.status != "delivered",
            )
        )  # fmt: skip
        voided = session.scalar(
            select(func.count()).select_from(Label).join(Shipment)
            .where(Shipment.order_id.in_(run_orders), Label.voided_at.is_not(None))
        )  # fmt: skip
        mismatches = check(session, account_ids)
        credit_notes = session.scalar(
            select(func.count()).select_from(Invoice)
            .where(Invoice.order_id.in_(run_orders), Invoice.kind == "credit_note")
        )  # fmt: skip
        refunds = {
            str(source): int(n)
            for source, n in session.execute(
                select(Refund.source, func.count())
                .where(Refund.order_id.in_(run_orders)).group_by(Refund.source)
            ).all()
        }  # fmt: skip
        edited = session.scalar(
            select(func.count(func.distinct(OrderEvent.order_id)))
            .where(OrderEvent.order_id.in_(run_orders), OrderEvent.kind == "edited")
        )  # fmt: skip
        # each reservation took stock, each release gave it back, each count set it
        reservations = session.scalar(
            select(func.count()).select_from(StockReservation)
            .where(StockReservation.order_id.in_(run_orders))
        )  # fmt: skip
        released = session.scalar(
            select(func.count()).select_from(StockReservation).where(
                StockReservation.order_id.in_(run_orders), StockReservation.status == "released"
            )
        )  # fmt: skip
        counted = session.scalar(
            select(func.count()).select_from(StockItem).where(StockItem.counted_by == "demo")
        )
    created = sum(by_state.values())
    failed = int(failed or 0)
    ledger = sandbox.ledger()
    return {
        "orders_sent": orders_sent,
        "deliveries_sent": deliveries,
        "orders_created": created,
        # webhook deliveries that did not make a new order: the same id again, or another event
        # of an order we already had
        "duplicates_absorbed": deliveries
        - sum(n for channel, n in by_channel.items() if _sends_webhooks(channel))
        - failed,
        "failed": failed,
        "by_state": by_state,
        "by_channel": by_channel,
        "paid_orders": int(paid or 0),
        "payments_collected_by_marketplace": int(collected or 0),
        # captures as the outside world counts them: on Shopify (orderCapture) and at the
        # payment provider (PaymentIntent captures)
        "captures_in_ledger": ledger["payments"]["captures"] + ledger["shopify"]["captures"],
        "documented_orders": int(documented or 0),
        "labels_in_ledger": ledger["carrier"]["labels"],
        "invoices": int(invoices or 0),
        "invoice_gaps": sum(len(missing) for missing in gaps.values()),
        "shipments": int(shipments or 0),
        "split_orders": int(split_orders or 0),
        "fulfilments_pushed": effects.get("fulfilment", 0),
        # counted by the marketplaces: Shopify fulfillments, WooCommerce tracking notes, Amazon
        # packages, eBay shipping fulfillments
        "fulfilments_in_ledger": ledger["shopify"]["fulfillments"]
        + ledger["woocommerce"]["tracking_notes"]
        + ledger["amazon"]["shipments"]
        + ledger["ebay"]["fulfillments"],
        "cancellations_pushed": effects.get("cancellation", 0),
        "cancellations_in_ledger": ledger["shopify"]["cancels"]
        + ledger["woocommerce"]["cancellations"]
        + ledger["ebay"]["cancellations"],
        "voided_labels": int(voided or 0),
        "voided_in_ledger": ledger["carrier"]["voided"],
        "delivered": by_state.get("delivered", 0),
        # marketplaces told of deliveries (Shopify: a DELIVERED fulfillment event)
        "deliveries_pushed": effects.get("delivery", 0),
        "delivery_events_in_ledger": ledger["shopify"]["fulfillment_events"],
        "outbox_undelivered": int(undelivered or 0),
        "credit_notes": int(credit_notes or 0),
        "edited_orders": int(edited or 0),
        "refunds_by_source": refunds,
        "money_mismatches": len(mismatches),
        "stock_changes": int(reservations or 0) + int(released or 0) + int(counted or 0),
        "stock_push_calls": sum(ledger["stock_calls"].values()),
        "stock_push_calls_by_channel": ledger["stock_calls"],
        "channel_stock_mismatches": _stock_mismatches(account_ids, sandbox),
        "seconds": round(seconds, 2),
        "orders_per_s": round(created / seconds, 1) if seconds else None,
    }


def _ship_and_cancel(base_url: str, account_ids: list[int], rng: random.Random, run: str) -> int:
    """Staff at work (the demo's operator, with a token for this run, revoked after): cancel a
    share of the ready orders (not Amazon's: the seller cannot by API), ship the rest through
    the API. Returns the number of orders acted on."""
    from orders.users import create_token, revoke_token

    with session_scope() as session:
        row, token = create_token(session, DEMO_USER, f"demo-staff-{run}", None, actor="demo")
        token_id = row.id
    try:
        return _act(base_url, account_ids, rng, {"Authorization": f"Bearer {token}"})
    finally:
        with session_scope() as session:
            revoke_token(session, token_id, actor="demo")


def _act(
    base_url: str, account_ids: list[int], rng: random.Random, headers: dict[str, str]
) -> int:
    with session_scope() as session:
        ready = session.execute(
            select(Order.id, Order.channel).where(
                Order.channel_account_id.in_(account_ids), Order.state == "ready_to_ship"
            ).order_by(Order.id)
        ).all()  # fmt: skip
    cancellable = [oid for oid, channel in ready if registry.get(channel).seller_cancels]
    cancel = set(rng.sample(cancellable, int(len(cancellable) * CANCEL_SHARE)))
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as client:

        def act(order_id: int) -> int:
            if order_id in cancel:
                response = client.post(f"/api/orders/{order_id}/cancel",
                                       json={"reason": CANCEL_REASON})  # fmt: skip
            else:
                response = client.post(f"/api/orders/{order_id}/ship")
            return response.status_code

        with ThreadPoolExecutor(SEND_THREADS) as pool:
            codes = list(pool.map(act, [oid for oid, _ in ready]))
    refused = [c for c in codes if c != 200]
    if refused:
        raise RuntimeError(f"staff actions refused: {sorted(set(refused))}")
    return len(ready)


def _quiet(account_ids: list[int]) -> bool:
    """Every effect delivered to its marketplace and every parcel at its end (delivered or
    lost), nothing half shipped."""
    with session_scope() as session:
        run_orders = select(Order.id).where(Order.channel_account_id.in_(account_ids))
        pending = session.scalar(
            select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.order_id.in_(run_orders), OutboxMessage.status == "pending"
            )
        )  # fmt: skip
        travelling = session.scalar(
            select(func.count()).select_from(Shipment).where(
                Shipment.order_id.in_(run_orders), Shipment.status == "shipped"
            )
        )  # fmt: skip
        half = session.scalar(
            select(func.count()).select_from(Order).where(
                Order.channel_account_id.in_(account_ids), Order.state == "partially_shipped"
            )
        )  # fmt: skip
    return not pending and not travelling and not half


def _print_table(summary: dict[str, Any], console: Console) -> None:
    table = Table("", "", title="ordersync demo", show_header=False)
    for key, value in summary.items():
        if isinstance(value, dict):
            for sub, count in sorted(value.items()):
                table.add_row(f"{key.removeprefix('by_')}: {sub}", str(count))
        else:
            table.add_row(key.replace("_", " "), str(value))
    console.print(table)


def _send_all(base_url: str, plan: Plan, on_sent: Any) -> list[int]:
    with httpx.Client(base_url=base_url, timeout=30) as client:

        def send(delivery: Delivery) -> int:
            path, headers, body = delivery
            for attempt in range(5):  # like the marketplaces: retry what was not acknowledged
                try:
                    response = client.post(path, content=body, headers=headers)
                    if response.status_code < 500:
                        return response.status_code
                except httpx.TransportError:
                    pass
                time.sleep(0.2 * 2**attempt)
            return 599

        statuses = []
        with ThreadPoolExecutor(SEND_THREADS) as pool:
            for status in pool.map(send, plan.deliveries):
                statuses.append(status)
                on_sent()
        return statuses


def run_demo(
    *, orders: int, as_json: bool, keep: bool, duplicate_rate: float, timeout_s: float
) -> int:
    from workflows.pipeline import release_waiting  # noqa: F401  (loads the task modules)
    from workflows.sync import poll_account

    settings = get_settings()
    configure_logging("WARNING", settings.log_json)
    out = Console()
    err = Console(stderr=True)
    run = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(2)
    rng = random.Random(run)

    broker = redis_url()
    upgrade()
    password = _demo_user()
    host = settings.web_host
    port = settings.web_port
    if not port or not _port_free(host, port):  # 0 = any free port
        port = free_port(host)
    base_url = f"http://{host}:{port}"
    secret = secrets.token_urlsafe(24)

    sandbox = Sandbox(seed=rng.randrange(2**31))
    sandbox.shopify.second_location_skus = frozenset(SECOND_LOCATION_SKUS)
    sandbox.start()
    accounts: dict[str, str] = {}
    account_ids: list[int] = []
    with session_scope() as session:
        # an earlier demo's accounts point at its sandbox, gone now: they are not polled again
        session.execute(
            update(ChannelAccount).where(ChannelAccount.name.like("demo-%")).values(active=False)
        )
        for channel, spec in sandbox.accounts(secret).items():
            account = ChannelAccount(
                name=f"demo-{channel}-{run}",
                channel=channel,
                shop=spec.shop,
                api_base_url=spec.api_base_url,
                credentials=spec.credentials,
                webhook_secret=spec.webhook_secret,
                # polled right away by the demo; Beat then polls on its own interval
                poll_cursor=None,
                stock_keep_percent=SHOPIFY_KEEP_PERCENT if channel == "shopify" else 0,
            )
            session.add(account)
            session.flush()
            accounts[channel] = account.name
            account_ids.append(account.id)
        by_name = {name: i for name, i in zip(accounts.values(), account_ids, strict=True)}
        skus = sorted(_demo_skus(sandbox))
        for sku in skus:
            set_on_hand(session, sku, max(3, int(orders * STOCK_PER_ORDER)), actor="demo")
    # every SKU on every marketplace, so every order's stock goes out to all four
    sandbox.add_listings(skus)

    env = {
        **os.environ,
        "ORDERSYNC_WEB_PORT": str(port),
        "ORDERSYNC_REDIS_URL": broker,
        "ORDERSYNC_PAYMENTS_URL": f"{sandbox.url}/payments",
        "ORDERSYNC_PAYMENTS_API_KEY": sandbox_payments.SANDBOX_API_KEY,
        "ORDERSYNC_CARRIER_URL": f"{sandbox.url}/carrier",
        "ORDERSYNC_CARRIER_API_KEY": sandbox_carrier.SANDBOX_API_KEY,
        # the sandbox carrier delivers at once: track often, so the demo sees deliveries
        "ORDERSYNC_TRACK_INTERVAL_S": os.environ.get("ORDERSYNC_TRACK_INTERVAL_S", "2"),
    }
    group = ProcessGroup(env=env, log_dir=settings.var_dir / "logs" / f"demo-{run}")
    sigterm_interrupts()
    started = time.monotonic()
    try:
        group.start("web", ["web"])
        group.start("worker", ["worker"])
        group.start("beat", ["beat"])
        err.print(f"starting web ({base_url}), worker and Beat; logs in {group.log_dir}")
        err.print(f"dashboard login: [bold]{DEMO_USER}[/bold] / [bold]{password}[/bold] "
                  f"(operator) at {base_url}/login", soft_wrap=True)  # fmt: skip
        wait_ready(base_url, broker, group, timeout_s=60)
        _sync_listings(account_ids)

        counts = _split(orders)
        plan = _webhooks(sandbox, counts, accounts, secret, duplicate_rate, rng)
        sandbox.add_amazon_orders(counts["amazon"])
        sandbox.ebay.add_orders(counts["ebay"])
        started = time.monotonic()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=as_json,
        ) as progress:
            sent_bar = progress.add_task("webhooks sent", total=len(plan.deliveries))
            got_bar = progress.add_task("orders received", total=orders)
            done_bar = progress.add_task("orders through the pipeline", total=orders)
            # marketplaces without webhooks (Amazon, eBay): their orders are found by polling
            for channel, name in accounts.items():
                if not _sends_webhooks(channel):
                    poll_account.delay(by_name[name])
            statuses = _send_all(base_url, plan, lambda: progress.advance(sent_bar))
            # later, the buyers who chose to pay after checkout pay
            payments_plan = _pay_pending(sandbox, accounts, secret)
            progress.update(sent_bar, total=len(plan.deliveries) + len(payments_plan.deliveries))
            statuses += _send_all(base_url, payments_plan, lambda: progress.advance(sent_bar))
            plan.deliveries += payments_plan.deliveries
            deadline = time.monotonic() + timeout_s
            amazon_paid = False
            while True:
                if not amazon_paid and _polled(by_name[accounts["amazon"]]):
                    # minutes later Amazon authorises the Pending orders' payments; the next
                    # poll brings the change and those orders go on through the pipeline
                    if sandbox.pay_pending_amazon_orders():
                        poll_account.delay(by_name[accounts["amazon"]])
                    amazon_paid = True
                received, settled, waiting = _progress(account_ids)
                progress.update(got_bar, completed=received)
                progress.update(done_bar, completed=settled)
                if received >= orders and settled >= received and not waiting:
                    break
                if group.dead():
                    raise RuntimeError("a process died during the demo; see the logs")
                if time.monotonic() > deadline:
                    err.print("[red]timed out waiting for the workers")
                    break
                time.sleep(0.25)
            # after the sale: some paid Shopify orders are edited (a line added) and some get a
            # partial refund (a unit returned and restocked), each told by webhook (some twice)
            after = _after_sales(sandbox, accounts, secret, by_name[accounts["shopify"]], rng)
            statuses += _send_all(base_url, after, lambda: None)
            plan.deliveries += after.deliveries
            _wait_for_credit_notes(account_ids, deadline, group)
            _past_the_last_update(sandbox)
            # the nightly full sync, on what the webhooks and polls brought in
            reconciled = _reconcile(err, timeout_s=RECONCILE_TIMEOUT_S)
            acted = _ship_and_cancel(base_url, account_ids, rng, run)
            ship_bar = progress.add_task("shipped, cancelled, delivered", total=None)
            while not _quiet(account_ids):
                if group.dead():
                    raise RuntimeError("a process died during the demo; see the logs")
                if time.monotonic() > deadline:
                    err.print("[red]timed out waiting for shipments and deliveries")
                    break
                time.sleep(0.25)
            progress.update(ship_bar, total=acted, completed=acted)
            # then the last stock changes (shipments, cancellations) reach the channels
            quiet_by = time.monotonic() + STOCK_QUIET_TIMEOUT_S
            while time.monotonic() < quiet_by and (
                _stock_pending(account_ids) or _stock_mismatches(account_ids, sandbox)
            ):
                time.sleep(0.25)
        rejected = [s for s in statuses if s != 200]
        if rejected:
            err.print(f"[red]{len(rejected)} deliveries were not accepted: {sorted(set(rejected))}")
        summary = _summary(
            account_ids, sandbox, orders, len(plan.deliveries), time.monotonic() - started
        )
        summary["reconcile_report"] = reconciled
        _print_table(summary, err if as_json else out)
        if as_json:
            print(json.dumps(summary, sort_keys=True), flush=True)
        if keep:
            err.print(
                f"still running: dashboard {base_url}/ (log in as {DEMO_USER} / {password})  "
                f"sandbox {sandbox.url}  (Ctrl-C stops)"
            )
            dead = group.wait()
            err.print(f"[red]{dead.name} exited")
        ok = (
            not rejected
            and summary["failed"] == 0
            and summary["orders_created"] == orders
            and summary["invoice_gaps"] == 0
            and summary["money_mismatches"] == 0
            and summary["captures_in_ledger"] == summary["paid_orders"]
            and summary["labels_in_ledger"] == summary["documented_orders"]
            and summary["outbox_undelivered"] == 0
            and summary["fulfilments_in_ledger"] == summary["fulfilments_pushed"]
            and summary["cancellations_in_ledger"] == summary["cancellations_pushed"]
            and summary["voided_in_ledger"] == summary["voided_labels"]
            and summary["delivery_events_in_ledger"] == summary["deliveries_pushed"]
            and summary["channel_stock_mismatches"] == 0
            and all(n > 0 for n in summary["stock_push_calls_by_channel"].values())
        )
        return 0 if ok else 1
    except KeyboardInterrupt:
        err.print("stopping…")
        return 130
    finally:
        with stopping():
            group.stop()
            sandbox.stop()
            embedded_redis().stop()
