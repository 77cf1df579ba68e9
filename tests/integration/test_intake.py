"""Intake upsert under real concurrency, on SQLite and PostgreSQL (invariants 1 and 2)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import sessionmaker

from db.models import ChannelAccount, Order, OrderEvent, OrderLine
from db.session import make_engine
from domain.states import OrderState
from integrations.shopify.mapper import map_order
from orders.intake import IntakeOutcome, IntakeResult, apply_order, apply_page


def _payload(fixtures_dir: Path, *, updated_at: str, total: str) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(
        (fixtures_dir / "shopify" / "rest-2026-07" / "order.get.json").read_text()
    )["order"]
    order["updated_at"] = updated_at
    order["total_price"] = total
    return order


def _setup(url: str) -> tuple[sessionmaker[Any], int]:
    engine = make_engine(url)
    maker = sessionmaker(bind=engine, expire_on_commit=False)
    with maker() as session, session.begin():
        account = ChannelAccount(name="shop", channel="shopify", webhook_secret="s")
        session.add(account)
        session.flush()
        return maker, account.id


def test_concurrent_intakes_of_one_order_make_one_row_holding_the_newest_data(
    migrated_url: str, fixtures_dir: Path
) -> None:
    # given 16 versions of the same order, applied at the same moment from 16 threads
    maker, account_id = _setup(migrated_url)
    base = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    versions = [
        map_order(
            _payload(
                fixtures_dir,
                updated_at=(base + dt.timedelta(minutes=i)).isoformat(),
                total=f"{100 + i}.00",
            ),
            "shop",
        )
        for i in range(16)
    ]
    barrier = threading.Barrier(len(versions))

    def apply(order: Any) -> IntakeOutcome:
        barrier.wait()
        with maker() as session, session.begin():
            return apply_order(session, account_id, order, actor="test").outcome

    # when
    with ThreadPoolExecutor(len(versions)) as pool:
        outcomes = list(pool.map(apply, reversed(versions)))

    # then one order exists, created exactly once, with the newest version's data
    assert outcomes.count(IntakeOutcome.CREATED) == 1
    with maker() as session:
        orders = session.scalars(select(Order)).all()
        assert len(orders) == 1
        assert orders[0].total == Decimal("115.00")
        assert orders[0].external_updated_at == base + dt.timedelta(minutes=15)
        assert orders[0].external_id == "450789469"
        lines = session.scalar(select(func.count()).select_from(OrderLine))
        assert lines == len(versions[-1].lines)
        received = session.scalar(
            select(func.count()).select_from(OrderEvent).where(OrderEvent.kind == "received")
        )
        assert received == 1


def test_an_older_version_after_a_newer_one_changes_nothing(
    migrated_url: str, fixtures_dir: Path
) -> None:
    maker, account_id = _setup(migrated_url)
    newer = map_order(_payload(fixtures_dir, updated_at="2026-03-02T10:00:00Z", total="50.00"), "s")
    older = map_order(_payload(fixtures_dir, updated_at="2026-03-01T10:00:00Z", total="99.00"), "s")
    with maker() as session, session.begin():
        assert apply_order(session, account_id, newer, actor="t").outcome == IntakeOutcome.CREATED
    with maker() as session, session.begin():
        result = apply_order(session, account_id, older, actor="t")
    assert result.outcome == IntakeOutcome.STALE
    with maker() as session:
        order = session.scalars(select(Order)).one()
        assert order.total == Decimal("50.00")
        assert order.version == 1


def test_a_cancellation_moves_an_open_order_to_cancelled_with_a_timeline_entry(
    migrated_url: str, fixtures_dir: Path
) -> None:
    maker, account_id = _setup(migrated_url)
    open_payload = _payload(fixtures_dir, updated_at="2026-03-01T10:00:00Z", total="9")
    open_order = map_order(open_payload, "s")
    cancelled_payload = _payload(fixtures_dir, updated_at="2026-03-01T11:00:00Z", total="9")
    cancelled_payload["cancelled_at"] = "2026-03-01T11:00:00Z"
    cancelled = map_order(cancelled_payload, "s")
    with maker() as session, session.begin():
        apply_order(session, account_id, open_order, actor="t")
    with maker() as session, session.begin():
        result = apply_order(session, account_id, cancelled, actor="t")
    assert result.state == OrderState.CANCELLED
    with maker() as session:
        order = session.scalars(select(Order)).one()
        assert order.state == OrderState.CANCELLED
        kinds = [(e.kind, e.from_state, e.to_state) for e in order.events]
        assert ("transition", "new", "cancelled") in kinds


def test_an_amazon_fba_order_is_stored_as_fulfilled_by_the_marketplace(
    migrated_url: str, fixtures_dir: Path
) -> None:
    # given the official AFN order (Orders v0) and an MFN one, mapped as the connector does
    from integrations.amazon.mapper import map_order as map_amazon

    amazon = fixtures_dir / "amazon"
    afn = json.loads((amazon / "getOrder.200.sandbox-2.json").read_text())["payload"]
    mfn = json.loads((amazon / "getOrder.200.sandbox-1.json").read_text())["payload"]
    maker, account_id = _setup(migrated_url)

    # when both go through intake
    with maker() as session, session.begin():
        ids = [
            apply_order(session, account_id, map_amazon(p, "shop"), actor="test").order_id
            for p in (afn, mfn)
        ]

    # then the flag is stored as mapped
    with maker() as session:
        stored = dict(
            session.execute(
                select(Order.external_id, Order.fulfilled_by_marketplace).where(Order.id.in_(ids))
            ).all()
        )
    assert stored == {afn["AmazonOrderId"]: True, mfn["AmazonOrderId"]: False}


def test_intake_ships_a_ready_order_the_marketplace_says_it_shipped_itself(
    migrated_url: str, fixtures_dir: Path
) -> None:
    from workflows.tasks import after_intake

    maker, account_id = _setup(migrated_url)
    base = map_order(
        _payload(fixtures_dir, updated_at="2026-03-01T12:00:00Z", total="10.00"), "shop"
    )
    published: dict[str, list[Any]] = {}
    for name, by_marketplace, fulfillment in (
        ("fba shipped", True, "fulfilled"),
        ("fba not yet", True, "unfulfilled"),
        ("ours shipped", False, "fulfilled"),  # we push our own shipments; intake leaves it
    ):
        order = base.model_copy(update={"external_id": name})
        with maker() as session, session.begin():
            result = apply_order(session, account_id, order, actor="test")
            session.execute(
                update(Order)
                .where(Order.id == result.order_id)
                .values(
                    state=OrderState.READY_TO_SHIP,
                    fulfilled_by_marketplace=by_marketplace,
                    fulfillment_status=fulfillment,
                )
            )
        with maker() as session:
            updated = IntakeResult(result.order_id, IntakeOutcome.UPDATED, OrderState.READY_TO_SHIP)
            after_intake(session, updated)
            published[name] = [
                (sig.task, list(sig.args)) for sig in session.info.pop("ordersync.after_commit", [])
            ]
            session.rollback()
    shipped_id = published["fba shipped"][0][1][0]
    assert published == {
        "fba shipped": [("ordersync.outbound.ship", [shipped_id])],
        "fba not yet": [],
        "ours shipped": [],
    }


def _version(fixtures_dir: Path, external_id: str, minute: int, total: str) -> Any:
    payload = _payload(
        fixtures_dir,
        updated_at=(dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
                    + dt.timedelta(minutes=minute)).isoformat(),
        total=total,
    )  # fmt: skip
    payload["id"] = int(external_id)
    payload["admin_graphql_api_id"] = f"gid://shopify/Order/{external_id}"
    for n, refund in enumerate(payload.get("refunds") or [], start=1):
        # a refund id is the shop's, unique across its orders (the fixture's one order has one)
        refund["id"], refund["order_id"] = int(external_id) * 100 + n, int(external_id)
    return map_order(payload, "shop")


def test_a_page_creates_the_new_orders_leaves_the_stale_and_updates_the_newer(
    migrated_url: str, fixtures_dir: Path, new_rows_path: str
) -> None:
    # given: order 1 stored at minute 10, order 2 stored at minute 10
    maker, account_id = _setup(migrated_url)
    with maker() as session, session.begin():
        apply_order(session, account_id, _version(fixtures_dir, "1", 10, "10.00"), actor="t")
        apply_order(session, account_id, _version(fixtures_dir, "2", 10, "20.00"), actor="t")

    # when: a page with order 1 older, order 2 newer, orders 3 and 4 new (4 twice: the newer
    # version last, then an older one)
    page = [
        _version(fixtures_dir, "4", 5, "41.00"),
        _version(fixtures_dir, "1", 9, "11.00"),
        _version(fixtures_dir, "2", 11, "21.00"),
        _version(fixtures_dir, "3", 1, "30.00"),
        _version(fixtures_dir, "4", 4, "40.00"),
    ]
    with maker() as session, session.begin():
        results = apply_page(session, account_id, page, actor="poll:shop")

    # then: one result per order, in external id order
    with maker() as session:
        orders = {o.external_id: o for o in session.scalars(select(Order))}
        assert [(r.order_id, r.outcome) for r in results] == [
            (orders["1"].id, IntakeOutcome.STALE),
            (orders["2"].id, IntakeOutcome.UPDATED),
            (orders["3"].id, IntakeOutcome.CREATED),
            (orders["4"].id, IntakeOutcome.CREATED),
        ]
        assert {k: o.total for k, o in orders.items()} == {
            "1": Decimal("10.00"), "2": Decimal("21.00"), "3": Decimal("30.00"),
            "4": Decimal("41.00"),
        }  # fmt: skip
        assert orders["2"].version == 2
        lines = session.execute(
            select(OrderLine.order_id, func.count()).group_by(OrderLine.order_id)
        ).all()
        assert dict(lines) == {o.id: len(page[0].lines) for o in orders.values()}
        timeline = session.execute(
            select(Order.external_id, OrderEvent.kind, OrderEvent.actor)
            .join(Order, Order.id == OrderEvent.order_id)
            .where(OrderEvent.actor == "poll:shop")
            .order_by(Order.external_id, OrderEvent.id)
        ).all()
        # the newer version of 2 went through the single-order intake: its edit was seen, and
        # the money Shopify collected follows it (its refund, recorded at minute 10, recorded
        # the collected payment with it); the new orders' refunds (the fixture is partly
        # refunded) recorded with them, once
        assert [tuple(r) for r in timeline] == [
            ("2", "updated", "poll:shop"), ("2", "edited", "poll:shop"),
            ("2", "collected_amount_changed", "poll:shop"),
            ("3", "received", "poll:shop"), ("3", "refunded_on_marketplace", "poll:shop"),
            ("4", "received", "poll:shop"), ("4", "refunded_on_marketplace", "poll:shop"),
        ]  # fmt: skip


def test_a_cancellation_on_a_page_cancels_the_order_we_hold(
    migrated_url: str, fixtures_dir: Path
) -> None:
    maker, account_id = _setup(migrated_url)
    with maker() as session, session.begin():
        apply_order(session, account_id, _version(fixtures_dir, "1", 10, "10.00"), actor="t")
    payload = _payload(fixtures_dir, updated_at="2026-03-01T13:00:00Z", total="10.00")
    payload["id"] = 1
    payload["cancelled_at"] = "2026-03-01T13:00:00Z"

    with maker() as session, session.begin():
        [result] = apply_page(session, account_id, [map_order(payload, "shop")], actor="t")

    assert (result.outcome, result.state, result.cancelled_now) == (
        IntakeOutcome.UPDATED, OrderState.CANCELLED, True
    )  # fmt: skip


def test_overlapping_pages_and_single_deliveries_at_once_make_one_order_each_newest_data(
    migrated_url: str, fixtures_dir: Path, new_rows_path: str
) -> None:
    # given: 40 orders in 4 versions each; 8 pages of every order in one version each (pages
    # in opposite orders, so their row locks would cross if the intake took them as given),
    # and 8 threads applying versions one order at a time, all at the same moment
    maker, account_id = _setup(migrated_url)
    ids = [str(100 + n) for n in range(40)]
    versions = {v: [_version(fixtures_dir, i, v, f"{v}.00") for i in ids] for v in range(4)}
    work: list[tuple[str, list[Any]]] = []
    for n in range(8):
        orders = list(versions[n % 4])
        work.append(("page", orders if n % 2 else orders[::-1]))
        work.append(("one", versions[(n + 1) % 4][n::8]))
    barrier = threading.Barrier(len(work))

    def apply(item: tuple[str, list[Any]]) -> None:
        how, orders = item
        barrier.wait()
        if how == "page":
            with maker() as session, session.begin():
                apply_page(session, account_id, orders, actor="poll")
        else:
            for order in orders:
                with maker() as session, session.begin():
                    apply_order(session, account_id, order, actor="webhook")

    # when
    with ThreadPoolExecutor(len(work)) as pool:
        list(pool.map(apply, work))

    # then: one order per external id, each with the newest version's data and lines
    with maker() as session:
        rows = session.execute(select(Order.external_id, Order.total)).all()
        assert sorted(rows) == [(i, Decimal("3.00")) for i in ids]
        lines = session.scalar(select(func.count()).select_from(OrderLine))
        assert lines == len(ids) * len(versions[3][0].lines)
        received = session.scalar(
            select(func.count()).select_from(OrderEvent).where(OrderEvent.kind == "received")
        )
        assert received == len(ids)
