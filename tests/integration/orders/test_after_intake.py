"""orders.after_intake: what follows an order applied by intake, decided once for webhooks, a
poll's pages and a refetch; the follow-ups are the caller's (recorded here)."""

from __future__ import annotations

from typing import Any

import pytest

from db.base import utcnow
from domain.states import OrderState
from orders.after_intake import Then, batched, follow
from orders.intake import IntakeOutcome, IntakeResult
from tests.support.shop import FollowUps, Shop

S = OrderState
Out = IntakeOutcome


class Recorded(FollowUps):
    """``FollowUps`` with the refetch's (account, external id) too."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[tuple[int, str]] = []

    def then(self) -> Then:
        def refetch(_session: Any, account_id: int, external_id: str) -> None:
            self.fetched.append((account_id, external_id))

        return Then(pipeline=self("pipeline"), credit_note=self("credit_note"),
                    buy_label=self("buy_label"), void_unused=self("void_unused"),
                    ship=self("ship"), cancelled=self("cancelled"), refetch=refetch)  # fmt: skip


def _follow(shop: Shop, result: IntakeResult, account_id: int | None = 7) -> Recorded:
    recorded = Recorded()
    with shop.transaction() as session:
        follow(session, result, account_id, recorded.then())
    return recorded


@pytest.mark.parametrize(
    ("outcome", "state", "enters"),
    [
        (Out.CREATED, S.NEW, True),
        (Out.UPDATED, S.NEW, True),
        (Out.UPDATED, S.RESERVED, True),  # news on it, e.g. its payment
        (Out.CREATED, S.CANCELLED, False),  # born cancelled
        (Out.STALE, S.NEW, False),
        (Out.UPDATED, S.PAID, False),  # the pipeline has it
    ],
)
def test_new_orders_and_news_before_the_payment_enter_the_pipeline(
    shop: Shop, outcome: IntakeOutcome, state: OrderState, enters: bool
) -> None:
    order_id = shop.order(state)
    result = IntakeResult(order_id, outcome, state)
    assert _follow(shop, result).scheduled == ({"pipeline": [order_id]} if enters else {})
    assert batched(result) == enters


def test_refunds_an_edit_and_a_refetch_are_followed_and_keep_the_order_out_of_a_batch(
    shop: Shop,
) -> None:
    order_id = shop.order(S.RESERVED)
    result = IntakeResult(order_id, Out.UPDATED, S.RESERVED, refunded=(3,), refetch="4711",
                          relabel=True)  # fmt: skip
    recorded = _follow(shop, result)
    assert recorded.scheduled == {"credit_note": [order_id], "void_unused": [order_id],
                                  "buy_label": [order_id], "pipeline": [order_id]}  # fmt: skip
    assert recorded.fetched == [(7, "4711")] and not batched(result)
    assert _follow(shop, result, account_id=None).fetched == []  # nobody to ask


def test_a_cancellation_on_the_marketplace_is_handed_on_in_its_transaction(shop: Shop) -> None:
    order_id = shop.order(S.CANCELLED)
    result = IntakeResult(order_id, Out.UPDATED, S.CANCELLED, cancelled_now=True)
    assert _follow(shop, result).scheduled == {"cancelled": [order_id]}
    assert _follow(shop, IntakeResult(order_id, Out.UPDATED, S.CANCELLED)).scheduled == {}


def test_a_ready_order_the_marketplace_shipped_itself_is_shipped_and_ours_fulfilled_there_not(
    shop: Shop,
) -> None:
    fba = shop.order(S.READY_TO_SHIP, fulfilled_by_marketplace=True, fulfillment_status="fulfilled")
    waiting = shop.order(S.READY_TO_SHIP, fulfilled_by_marketplace=True)
    admin = shop.order(S.READY_TO_SHIP, fulfillment_status="fulfilled")

    assert _follow(shop, IntakeResult(fba, Out.UPDATED, S.READY_TO_SHIP)).scheduled == {
        "ship": [fba]
    }
    assert _follow(shop, IntakeResult(waiting, Out.UPDATED, S.READY_TO_SHIP)).scheduled == {}
    # fulfilled in the marketplace's admin: shipped there, ours never leave
    _follow(shop, IntakeResult(admin, Out.UPDATED, S.READY_TO_SHIP))
    assert shop.get(admin).state == S.SHIPPED


@pytest.mark.parametrize("state", [S.PARTIALLY_SHIPPED, S.SHIPPED, S.DELIVERED])
def test_an_order_cancelled_on_the_marketplace_after_some_of_it_left_expects_a_return(
    shop: Shop, state: OrderState
) -> None:
    """A partly shipped order cannot be cancelled, so its cancellation came back as a plain
    update of a partly shipped order, which was only asked whether it was fulfilled elsewhere:
    the cancellation was dropped (until 2026-12-06)."""
    order_id = shop.order(state, cancelled_at=utcnow())

    assert _follow(shop, IntakeResult(order_id, Out.UPDATED, state)).scheduled == {}

    order = shop.get(order_id)
    assert len(shop.events(order_id, "return_expected")) == 1
    if state == S.DELIVERED:
        assert order.state == S.DELIVERED  # the parcel is with the buyer: the event says it
    else:
        assert (order.state, order.failed_step) == (S.NEEDS_ATTENTION, "return")
