"""A full sync reconciles every order it sees: an order deleted here is restored, a status that
disagrees with the marketplace's at the same version is repaired where that is safe and flagged
for staff otherwise, and the night's report counts each (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.models import Order, OrderEvent, OrderLine, ReconcileReport, SyncRun
from domain.states import OrderState
from orders.intake import IntakeResult
from orders.reconcile import RECONCILE_STEP
from orders.recovery import retry
from orders.syncing import run_slice, start_run
from tests.integration.orders.test_syncing import NOW, SINCE, FakeMarketplace
from tests.support.shop import FollowUps, Shop

S = OrderState


class Seen:
    def __init__(self) -> None:
        self.results: list[IntakeResult] = []

    def __call__(
        self, session: Session, results: Sequence[IntakeResult], account_id: int
    ) -> None:
        self.results += results


def _run(shop: Shop, source: FakeMarketplace, kind: str, report_id: int | None = None) -> Seen:
    seen = Seen()
    with shop.transaction() as session:
        run_id = start_run(session, shop.account.id, kind, window_from=SINCE, window_to=NOW,
                           reconcile_report_id=report_id)  # fmt: skip
    outcome = run_slice(shop.transaction, run_id, source, seen, max_pages=100, max_seconds=60)
    assert outcome.status == "ok"
    return seen


def test_a_full_sync_restores_deleted_orders_repairs_safe_mismatches_and_flags_the_rest(
    shop: Shop,
) -> None:
    # given: six orders taken in by a poll, then our side goes wrong in five ways
    market = FakeMarketplace(6)
    _run(shop, market, "poll")
    with shop.maker() as session:
        ids = {o.external_id: o.id for o in session.scalars(select(Order))}
    with shop.transaction() as session:
        gone = ids["1000"]  # deleted here
        session.execute(delete(OrderEvent).where(OrderEvent.order_id == gone))
        session.execute(delete(OrderLine).where(OrderLine.order_id == gone))
        session.execute(delete(Order).where(Order.id == gone))
        # cancelled here while the marketplace has it open
        session.execute(update(Order).where(Order.id == ids["1002"]).values(state="cancelled"))
        # another total here
        session.execute(update(Order).where(Order.id == ids["1003"]).values(total=Decimal(99)))
        # ready here, fulfilled in the marketplace's admin
        session.execute(update(Order).where(Order.id == ids["1004"]).values(state="ready_to_ship"))
        report = ReconcileReport(accounts=1)
        session.add(report)
        session.flush()
        report_id = report.id
    # the marketplace cancelled 1001 and fulfilled 1004 without a newer version reaching us
    market.orders[1] = market.orders[1].model_copy(
        update={"status": S.CANCELLED, "cancelled_at": SINCE}
    )
    market.orders[4] = market.orders[4].model_copy(update={"fulfillment_status": "fulfilled"})

    # when: the night's full sync
    seen = _run(shop, market, "full", report_id)

    # then: the deleted order is back, the cancellation and the fulfilment repaired (their
    # flows handed to after_intake), the other two flagged, and the report counts them
    with shop.maker() as session:
        orders = {o.external_id: o for o in session.scalars(select(Order))}
        assert set(orders) == {str(1000 + n) for n in range(6)}
        assert orders["1001"].state == S.CANCELLED
        assert orders["1002"].state == S.CANCELLED  # final: only on the timeline
        assert (orders["1003"].state, orders["1003"].failed_step) == (
            S.NEEDS_ATTENTION, RECONCILE_STEP
        )  # fmt: skip
        assert "total here 99" in (orders["1003"].last_error or "")
        assert orders["1004"].fulfillment_status == "fulfilled"
        assert orders["1005"].state == S.NEW
        flags = session.execute(
            select(OrderEvent.order_id, OrderEvent.detail)
            .where(OrderEvent.kind == "reconcile_mismatch").order_by(OrderEvent.order_id)
        ).all()  # fmt: skip
        assert [(o, d["reason"]) for o, d in flags] == [
            (ids["1002"], "cancelled here, open on the marketplace"),
            (ids["1003"], "total here 99.00 EUR, on the marketplace 10.00 EUR"),
        ]
        run = session.scalars(select(SyncRun).where(SyncRun.kind == "full")).one()
        assert (run.orders_seen, run.orders_created, run.states_repaired,
                run.mismatches_flagged) == (6, 1, 2, 2)  # fmt: skip
        report_row = session.get_one(ReconcileReport, report_id)
        assert report_row.finished_at is not None
        assert (report_row.seen, report_row.created, report_row.states_repaired,
                report_row.flagged) == (6, 1, 2, 2)  # fmt: skip
    by_id = {r.order_id: r for r in seen.results}
    assert by_id[ids["1001"]].cancelled_now  # the cancellation's flow runs
    assert (by_id[ids["1004"]].outcome, by_id[ids["1004"]].state) == ("updated", S.READY_TO_SHIP)
    assert {r.outcome for oid, r in by_id.items() if oid not in (ids["1001"], ids["1004"])} <= {
        "created", "stale"
    }  # fmt: skip

    # and: a second full sync counts what is still wrong, without more timeline rows; staff
    # retry puts 1003 back where it was
    _run(shop, market, "full")
    with shop.maker() as session:
        second = session.scalars(
            select(SyncRun).where(SyncRun.kind == "full").order_by(SyncRun.id.desc())
        ).first()
        assert second is not None and second.mismatches_flagged == 2
        notes = session.scalars(
            select(OrderEvent.id).where(OrderEvent.kind == "reconcile_mismatch")
        ).all()
        assert len(notes) == 2
    later = FollowUps()
    with shop.transaction() as session:
        resumed = retry(session, ids["1003"], actor="alice", pipeline=later("pipeline"),
                        ship=later("ship"), refund=later("refund"), push=later("push"))  # fmt: skip
    assert resumed == S.NEW
    assert later.scheduled == {"pipeline": [ids["1003"]]}


def test_a_poll_compares_nothing(shop: Shop) -> None:
    market = FakeMarketplace(2)
    _run(shop, market, "poll")
    with shop.transaction() as session:
        session.execute(update(Order).values(total=Decimal(1)))
    _run(shop, market, "poll")
    with shop.maker() as session:
        assert {o.state for o in session.scalars(select(Order))} == {S.NEW}
