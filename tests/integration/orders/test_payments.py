"""orders.payments.capture: one payment per order, whatever crashes, retries and cancels do."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from db.base import utcnow
from db.models import IdempotencyKey, Payment
from domain.errors import RetryableError, TransportError, ValidationError
from domain.states import OrderState
from orders import idempotency
from orders.payments import SEARCH_FRESHNESS, capture
from orders.steps import Outcome
from tests.support.shop import FakePayments, FollowUps, Shop, WorkerKilled, never_built

S = OrderState


def _capture(shop: Shop, order_id: int, provider: FakePayments, later: FollowUps,
             owner: str = "task-1") -> Outcome:  # fmt: skip
    return capture(shop.transaction, order_id, lambda: provider, shop.keys(owner),
                   refund=later("refund"))  # fmt: skip


def test_capture_charges_once_and_records_exactly_one_payment(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = shop.order(S.RESERVED, lines={"A": 2})

    assert _capture(shop, order_id, provider, later) == Outcome("captured")
    # a second run (a duplicate trigger) finds the order paid and calls nobody
    assert _capture(shop, order_id, provider, later, owner="task-2") == Outcome("skip: paid")

    assert provider.calls == [f"capture:{order_id}"]
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert (payment.external_id, payment.amount, payment.status) == ("pi_1", Decimal(20),
                                                                     "succeeded")  # fmt: skip
    assert payment.idempotency_key == f"capture:{order_id}"
    assert not payment.collected_by_marketplace
    assert shop.get(order_id).state == S.PAID
    key = shop.key(f"capture:{order_id}")
    assert key is not None and key.recovery_point == "finished"
    assert key.response_body == {"id": "pi_1", "status": "succeeded"}
    assert later.scheduled == {}


def test_a_worker_killed_between_the_call_and_the_record_replays_the_claimed_key(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    # given a capture the provider applied, whose worker died before recording it
    order_id = shop.order(S.RESERVED)
    provider.lose_answer = WorkerKilled()
    with pytest.raises(WorkerKilled):
        _capture(shop, order_id, provider, later)
    assert shop.rows(Payment, order_id=order_id) == []
    key = shop.key(f"capture:{order_id}")
    assert key is not None and (key.recovery_point, key.locked_by) == ("capture_sent", "task-1")

    # when another worker tries while the dead one's lock is young, it waits (retryable)
    with pytest.raises(idempotency.KeyLocked):
        _capture(shop, order_id, provider, later, owner="task-2")
    # and when the task is redelivered (the same task id)
    assert _capture(shop, order_id, provider, later) == Outcome("captured")

    # then the provider was asked again under the same key, and charged once
    assert provider.calls == [f"capture:{order_id}"] * 2
    assert list(provider.captures) == [f"capture:{order_id}"]
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.external_id == "pi_1"
    (paid,) = shop.events(order_id, "transition")
    assert paid.to_state == S.PAID and paid.detail["replayed"] is True


def test_a_lost_answer_releases_the_key_and_the_retry_reuses_it(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = shop.order(S.RESERVED)
    provider.lose_answer = TransportError("capture: read timeout")
    with pytest.raises(TransportError):
        _capture(shop, order_id, provider, later)
    key = shop.key(f"capture:{order_id}")
    assert key is not None and key.locked_by is None and key.recovery_point == "capture_sent"
    assert key.last_error == "TransportError: capture: read timeout"

    assert _capture(shop, order_id, provider, later, owner="task-2") == Outcome("captured")
    assert provider.calls == [f"capture:{order_id}"] * 2
    assert len(provider.captures) == 1 and len(shop.rows(Payment, order_id=order_id)) == 1


def test_a_refused_capture_retires_its_key_and_the_next_attempt_takes_a_new_one(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = shop.order(S.RESERVED)
    provider.refuse = ValidationError("capture: amount_too_large", status=400)
    with pytest.raises(ValidationError):
        _capture(shop, order_id, provider, later)
    key = shop.key(f"capture:{order_id}")
    assert key is not None and key.recovery_point == "rejected"

    provider.refuse = None  # staff fixed the cause
    assert _capture(shop, order_id, provider, later, owner="task-2") == Outcome("captured")
    assert provider.calls == [f"capture:{order_id}", f"capture:{order_id}:2"]
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.idempotency_key == f"capture:{order_id}:2"


def test_money_the_marketplace_collected_is_recorded_without_a_call(
    shop: Shop, later: FollowUps
) -> None:
    order_id = shop.order(S.RESERVED, channel="amazon", payment_collected_by_marketplace=True,
                          financial_status="paid")  # fmt: skip

    outcome = capture(shop.transaction, order_id, never_built, shop.keys(),
                      refund=later("refund"))  # fmt: skip

    assert outcome == Outcome("collected by marketplace")
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.collected_by_marketplace and payment.status == "collected"
    assert (payment.provider, payment.amount, payment.external_id) == ("amazon", Decimal(20), None)
    assert shop.get(order_id).state == S.PAID
    (paid,) = shop.events(order_id, "transition")
    assert paid.detail == {"collected_by": "amazon"}


def test_a_capture_in_doubt_when_the_marketplace_says_it_collected_is_found_and_refunded(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    # given our capture applied at the provider, its worker killed before recording it
    order_id = shop.order(S.RESERVED)
    provider.lose_answer = WorkerKilled()
    with pytest.raises(WorkerKilled):
        _capture(shop, order_id, provider, later)
    # and then the marketplace's update: it collected the money itself (authorized -> paid)
    shop.update(order_id, payment_collected_by_marketplace=True, financial_status="paid")

    # when the step runs again (a sweep, the update's pipeline)
    outcome = _capture(shop, order_id, provider, later, owner="task-2")

    # then the provider was asked, our charge is recorded with its key finished, and refunded
    assert outcome == Outcome("captured by us and collected by the marketplace: refunding ours")
    assert provider.calls == [f"capture:{order_id}", f"search:{order_id}"]
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert (payment.external_id, payment.collected_by_marketplace) == ("pi_1", False)
    key = shop.key(f"capture:{order_id}")
    assert key is not None and key.recovery_point == "finished"
    assert later.scheduled == {"refund": [order_id]}
    (twice,) = shop.events(order_id, "captured_twice")
    assert twice.detail["payment"] == "pi_1"
    assert shop.get(order_id).state == S.PAID


def test_a_capture_in_doubt_the_provider_never_saw_waits_then_the_marketplaces_money_counts(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    # given a key claimed by a worker that died before its call reached the provider
    order_id = shop.order(S.RESERVED, payment_collected_by_marketplace=True,
                          financial_status="paid")  # fmt: skip
    params = {"order_ref": str(order_id), "amount": "20", "currency": "USD"}
    with shop.transaction() as session:
        shop.keys().claim(session, f"capture:{order_id}", params, point="capture_sent")

    # when the step runs while the provider's search may still lag: it asks again later
    with pytest.raises(RetryableError):
        _capture(shop, order_id, provider, later, owner="task-2")
    assert shop.rows(Payment, order_id=order_id) == []
    # and once the search has had time to see any capture, nothing is found
    claimed = shop.key(f"capture:{order_id}")
    assert claimed is not None
    with shop.transaction() as session:
        key = session.get(IdempotencyKey, claimed.id)
        assert key is not None
        key.created_at = utcnow() - SEARCH_FRESHNESS - dt.timedelta(seconds=1)
    outcome = _capture(shop, order_id, provider, later, owner="task-3")

    # then the key is retired and the marketplace's money recorded; nobody was charged by us
    assert outcome == Outcome("collected by marketplace")
    assert provider.captures == {}
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.collected_by_marketplace
    retired = shop.key(f"capture:{order_id}")
    assert retired is not None and retired.recovery_point == "rejected"
    assert later.scheduled == {}


def test_a_payment_the_marketplace_has_not_taken_yet_is_waited_for(
    shop: Shop, later: FollowUps
) -> None:
    order_id = shop.order(S.RESERVED, channel="amazon", payment_collected_by_marketplace=True,
                          financial_status="Pending")  # fmt: skip

    outcome = capture(shop.transaction, order_id, never_built, shop.keys(),
                      refund=later("refund"))  # fmt: skip

    assert outcome == Outcome("awaiting the marketplace's payment", stop=True)
    assert shop.rows(Payment, order_id=order_id) == []
    assert shop.get(order_id).state == S.RESERVED
    # when the marketplace's update says it took the money, the next run records it
    shop.update(order_id, financial_status="paid")
    again = capture(shop.transaction, order_id, never_built, shop.keys(), refund=later("refund"))
    assert again == Outcome("collected by marketplace")


def test_money_captured_while_the_order_was_cancelled_is_recorded_and_refunded(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = shop.order(S.RESERVED)
    provider.during_call = lambda: shop.move(order_id, S.CANCELLED)  # the marketplace cancels

    outcome = _capture(shop, order_id, provider, later)

    assert outcome == Outcome("captured, but order is cancelled")
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.external_id == "pi_1"
    assert shop.get(order_id).state == S.CANCELLED
    (event,) = shop.events(order_id, "captured_after_cancel")
    assert event.detail == {"payment": "pi_1"}
    assert later.scheduled == {"refund": [order_id]}


@pytest.mark.parametrize(
    ("state", "stop"),
    [(S.NEW, True), (S.ON_HOLD, True), (S.CANCELLED, True), (S.NEEDS_ATTENTION, True),
     (S.PAID, False), (S.READY_TO_SHIP, False)],
)  # fmt: skip
def test_an_order_not_reserved_is_not_charged_and_stops_the_chain_if_it_is_behind_or_gone(
    shop: Shop, provider: FakePayments, later: FollowUps, state: OrderState, stop: bool
) -> None:
    order_id = shop.order(state)

    assert _capture(shop, order_id, provider, later) == Outcome(f"skip: {state}", stop=stop)
    assert provider.calls == [] and shop.rows(Payment, order_id=order_id) == []
