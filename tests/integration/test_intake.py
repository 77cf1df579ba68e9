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
from orders.intake import IntakeOutcome, IntakeResult, apply_order


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
