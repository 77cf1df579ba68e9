"""orders.payments.capture: the authorization captured where it lives, once per order, whatever
crashes, retries and cancels do; never a payment method of our own."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import pytest

from db.base import utcnow
from db.models import Payment
from domain.errors import AuthorizationUnusable, TransportError, ValidationError
from domain.states import OrderState
from orders import idempotency
from orders.payments import AuthorizationHolder, capture
from orders.recovery import UnfinishedCall, unfinished_calls
from orders.steps import Outcome
from tests.support.shop import FakePayments, FollowUps, Shop, WorkerKilled, never_built

S = OrderState
#: a WooCommerce order paid through the Stripe gateway: its PaymentIntent awaits capture
AUTHORIZED = {"gateway": "stripe", "held_by": "provider", "authorization_id": "pi_auth"}


class Holders:
    """The holder factory the step gets: records where it looked (held_by, account)."""

    def __init__(self, holder: FakePayments) -> None:
        self.holder, self.asked = holder, list[tuple[str, int]]()

    def __call__(self, held_by: str, account_id: int) -> AuthorizationHolder:
        self.asked.append((held_by, account_id))
        return self.holder


def _capture(shop: Shop, order_id: int, provider: FakePayments, later: FollowUps,
             owner: str = "task-1") -> Outcome:  # fmt: skip
    return capture(shop.transaction, order_id, Holders(provider), shop.keys(owner),
                   refund=later("refund"))  # fmt: skip


def _authorized(shop: Shop, state: OrderState = S.RESERVED, **fields: Any) -> int:
    return shop.order(state, payment_facts=fields.pop("facts", AUTHORIZED), **fields)


def _killed_after_the_call(shop: Shop, provider: FakePayments, later: FollowUps) -> int:
    """An authorized order whose capture the holder applied, the worker killed before it
    recorded it (nothing recorded)."""
    order_id = _authorized(shop)
    provider.lose_answer = WorkerKilled()
    with pytest.raises(WorkerKilled):
        _capture(shop, order_id, provider, later)
    assert shop.rows(Payment, order_id=order_id) == []
    return order_id


def test_the_authorization_is_captured_once_at_its_holder_and_exactly_one_payment_recorded(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = _authorized(shop)
    holders = Holders(provider)

    outcome = capture(shop.transaction, order_id, holders, shop.keys(), refund=later("refund"))
    assert outcome == Outcome("captured")
    # a second run (a duplicate trigger) finds the order paid and calls nobody
    assert _capture(shop, order_id, provider, later, owner="task-2") == Outcome("skip: paid")

    assert holders.asked == [("provider", shop.account.id)]
    assert provider.calls == [f"capture:{order_id}"]
    (made,) = provider.captures.values()
    assert (made.id, made.amount) == ("pi_auth", Decimal(20))  # the buyer's intent, no new one
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert (payment.external_id, payment.amount, payment.status, payment.provider) == (
        "pi_auth", Decimal(20), "succeeded", "payments")  # fmt: skip
    assert payment.idempotency_key == f"capture:{order_id}"
    assert not payment.collected_by_marketplace
    assert shop.get(order_id).state == S.PAID
    key = shop.key(f"capture:{order_id}")
    assert key is not None and key.recovery_point == "finished"
    assert key.response_body == {"id": "pi_auth", "status": "succeeded"}
    assert later.scheduled == {}


def test_an_authorization_held_by_the_marketplace_is_captured_by_the_orders_account(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = _authorized(shop, facts={"gateway": "shopify_payments", "held_by": "marketplace"})
    holders = Holders(provider)

    outcome = capture(shop.transaction, order_id, holders, shop.keys(), refund=later("refund"))

    assert outcome == Outcome("captured")
    assert holders.asked == [("marketplace", shop.account.id)]
    assert provider.calls == [f"capture:{order_id}"]


def test_a_worker_killed_between_the_call_and_the_record_replays_the_claimed_key(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    # given a capture the holder applied, whose worker died before recording it
    order_id = _killed_after_the_call(shop, provider, later)
    key = shop.key(f"capture:{order_id}")
    assert key is not None and (key.recovery_point, key.locked_by) == ("capture_sent", "task-1")

    # when another worker tries while the dead one's lock is young, it waits (retryable)
    with pytest.raises(idempotency.KeyLocked):
        _capture(shop, order_id, provider, later, owner="task-2")
    # and when the task is redelivered (the same task id)
    assert _capture(shop, order_id, provider, later) == Outcome("captured")

    # then the holder was asked again under the same key, and captured once
    assert provider.calls == [f"capture:{order_id}"] * 2
    assert list(provider.captures) == [f"capture:{order_id}"]
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.external_id == "pi_auth"
    (paid,) = shop.events(order_id, "transition")
    assert paid.to_state == S.PAID and paid.detail["replayed"] is True


def test_a_lost_answer_releases_the_key_and_the_retry_reuses_it(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = _authorized(shop)
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
    order_id = _authorized(shop)
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


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        ({**AUTHORIZED, "authorization_expires_at": "2026-01-08T10:00:00+00:00"},
         "the payment authorization expired at 2026-01-08T10:00:00+00:00"),
        ({**AUTHORIZED, "amount_authorized": "15.00"},
         "partial authorization: 15.00 EUR authorised of 20.0000 EUR"),
    ],
)  # fmt: skip
def test_an_authorization_the_facts_show_expired_or_partial_is_refused_in_words_without_a_call(
    shop: Shop, provider: FakePayments, later: FollowUps, facts: dict[str, str], reason: str
) -> None:
    order_id = _authorized(shop, facts=facts)

    with pytest.raises(AuthorizationUnusable, match=re.escape(reason)):
        _capture(shop, order_id, provider, later)

    assert provider.calls == [] and shop.key(f"capture:{order_id}") is None
    assert shop.rows(Payment, order_id=order_id) == [] and shop.get(order_id).state == S.RESERVED


def test_an_authorization_its_holder_finds_voided_is_refused_with_the_holders_reason(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = _authorized(shop)
    provider.unusable["pi_auth"] = "the payment authorization was voided at the provider"

    with pytest.raises(AuthorizationUnusable, match="voided at the provider"):
        _capture(shop, order_id, provider, later)

    assert provider.captures == {} and shop.rows(Payment, order_id=order_id) == []
    # nothing was applied: the key is retired (not left unfinished), a staff retry takes the
    # next one (capture:{order}:2) and asks again
    key = shop.key(f"capture:{order_id}")
    assert key is not None and key.locked_by is None and key.recovery_point == "rejected"
    assert key.last_error == "AuthorizationUnusable: the payment authorization was voided at " \
        "the provider"  # fmt: skip


def test_no_authorization_and_no_collection_is_never_charged_with_a_method_of_our_own(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = shop.order(S.RESERVED, financial_status="authorized", payment_facts=None)

    with pytest.raises(AuthorizationUnusable, match="holds no authorization"):
        _capture(shop, order_id, provider, later)

    assert provider.calls == [] and shop.rows(Payment, order_id=order_id) == []


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


def test_a_capture_in_doubt_when_the_marketplace_says_it_collected_is_found_and_recorded_once(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    # given our capture applied at the provider, its worker killed before recording it
    order_id = _killed_after_the_call(shop, provider, later)
    # and then the marketplace's update: it now says the money is collected (the same intent)
    shop.update(order_id, payment_collected_by_marketplace=True, financial_status="paid",
                payment_facts={"gateway": "stripe", "authorization_id": "pi_auth"})  # fmt: skip

    # when the step runs again (a sweep, the update's pipeline)
    outcome = _capture(shop, order_id, provider, later, owner="task-2")

    # then the holder was asked, our capture is recorded with its key finished, nothing refunded
    # (one authorization, captured once: the buyer paid once)
    assert outcome == Outcome("captured (found after the fact)")
    assert provider.calls == [f"capture:{order_id}", "find:pi_auth"]
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert (payment.external_id, payment.collected_by_marketplace) == ("pi_auth", False)
    key = shop.key(f"capture:{order_id}")
    assert key is not None and key.recovery_point == "finished"
    assert later.scheduled == {}
    assert shop.get(order_id).state == S.PAID


def test_a_capture_in_doubt_the_holder_never_saw_retires_its_key_and_the_marketplaces_money_counts(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    # given a key claimed by a worker that died before its call reached the holder
    facts = {"gateway": "stripe", "authorization_id": "pi_x"}
    order_id = shop.order(S.RESERVED, payment_collected_by_marketplace=True,
                          financial_status="paid", payment_facts=facts)  # fmt: skip
    params = {"order_ref": str(order_id), "amount": "20", "currency": "USD"}
    with shop.transaction() as session:
        shop.keys().claim(session, f"capture:{order_id}", params, point="capture_sent")

    outcome = _capture(shop, order_id, provider, later, owner="task-3")

    # then the key is retired and the marketplace's money recorded; nothing was captured by us
    assert outcome == Outcome("collected by marketplace")
    assert provider.calls == ["find:pi_x"] and provider.captures == {}
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.collected_by_marketplace
    retired = shop.key(f"capture:{order_id}")
    assert retired is not None and retired.recovery_point == "rejected"
    assert later.scheduled == {}


@pytest.mark.parametrize("financial", ["Pending", "pending", "unpaid"])
def test_a_payment_nobody_has_made_or_authorised_yet_is_waited_for(
    shop: Shop, later: FollowUps, financial: str
) -> None:
    collected = financial == "Pending"  # Amazon: collects itself, once the buyer's bank says so
    order_id = shop.order(S.RESERVED, payment_collected_by_marketplace=collected,
                          financial_status=financial)  # fmt: skip
    if collected:
        shop.update(order_id, payment_collected_by_marketplace=False)

    outcome = capture(shop.transaction, order_id, never_built, shop.keys(),
                      refund=later("refund"))  # fmt: skip

    assert outcome == Outcome("awaiting the marketplace's payment", stop=True)
    assert shop.rows(Payment, order_id=order_id) == []
    assert shop.get(order_id).state == S.RESERVED
    # when the marketplace's update says it took the money, the next run records it
    shop.update(order_id, financial_status="paid", payment_collected_by_marketplace=True)
    again = capture(shop.transaction, order_id, never_built, shop.keys(), refund=later("refund"))
    assert again == Outcome("collected by marketplace")


def test_money_captured_while_the_order_was_cancelled_is_recorded_and_refunded(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    order_id = _authorized(shop)
    provider.during_call = lambda: shop.move(order_id, S.CANCELLED)  # the marketplace cancels

    outcome = _capture(shop, order_id, provider, later)

    assert outcome == Outcome("captured, but order is cancelled")
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.external_id == "pi_auth"
    assert shop.get(order_id).state == S.CANCELLED
    (event,) = shop.events(order_id, "captured_after_cancel")
    assert event.detail == {"payment": "pi_auth"}
    assert later.scheduled == {"refund": [order_id]}


def test_a_capture_cut_short_then_the_order_cancelled_is_found_recorded_and_refunded(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    # given our capture applied at the provider, its worker killed before recording it
    order_id = _killed_after_the_call(shop, provider, later)
    # and then the order cancelled on the marketplace
    shop.move(order_id, S.CANCELLED)
    # the sweeper finds the key the dead attempt left: its step still has work
    with shop.transaction() as session:
        calls = unfinished_calls(session, idle_for=dt.timedelta(0), limit=10)
    assert calls == [UnfinishedCall("capture_payment", order_id, f"capture:{order_id}")]

    # when the step runs again
    outcome = _capture(shop, order_id, provider, later, owner="task-2")

    # then the holder was asked (no second capture): the money taken is recorded and refunded
    assert outcome == Outcome("captured before the cancel (found after the fact), refunding",
                              stop=True)  # fmt: skip
    assert provider.calls == [f"capture:{order_id}", "find:pi_auth"]
    (payment,) = shop.rows(Payment, order_id=order_id)
    assert payment.external_id == "pi_auth"
    key = shop.key(f"capture:{order_id}")
    assert key is not None and key.recovery_point == "finished"
    (event,) = shop.events(order_id, "captured_after_cancel")
    assert event.detail == {"payment": "pi_auth"}
    assert later.scheduled == {"refund": [order_id]}
    assert shop.get(order_id).state == S.CANCELLED
    # and nothing is left for the sweeper; the step, run once more, does nothing
    with shop.transaction() as session:
        assert unfinished_calls(session, idle_for=dt.timedelta(0), limit=10) == []
    assert _capture(shop, order_id, provider, later, owner="task-3") == Outcome(
        "skip: cancelled", stop=True)  # fmt: skip


def test_a_capture_cut_short_before_it_reached_the_holder_then_cancelled_retires_its_key(
    shop: Shop, provider: FakePayments, later: FollowUps
) -> None:
    # given a key claimed by a worker that died before its call reached the holder
    order_id = _authorized(shop)
    params = {"order_ref": str(order_id), "amount": "20", "currency": "EUR"}
    with shop.transaction() as session:
        shop.keys().claim(session, f"capture:{order_id}", params, point="capture_sent")
    shop.move(order_id, S.CANCELLED)

    outcome = _capture(shop, order_id, provider, later, owner="task-2")

    # then the key is retired: nothing was taken, nothing recorded, nothing to refund
    assert outcome == Outcome("skip: cancelled (the capture cut short had not gone through)",
                              stop=True)  # fmt: skip
    assert provider.calls == ["find:pi_auth"] and provider.captures == {}
    assert shop.rows(Payment, order_id=order_id) == []
    retired = shop.key(f"capture:{order_id}")
    assert retired is not None and retired.recovery_point == "rejected"
    assert later.scheduled == {}
    with shop.transaction() as session:
        assert unfinished_calls(session, idle_for=dt.timedelta(0), limit=10) == []


@pytest.mark.parametrize(
    ("state", "stop"),
    [(S.NEW, True), (S.ON_HOLD, True), (S.CANCELLED, True), (S.NEEDS_ATTENTION, True),
     (S.PAID, False), (S.READY_TO_SHIP, False)],
)  # fmt: skip
def test_an_order_not_reserved_is_not_charged_and_stops_the_chain_if_it_is_behind_or_gone(
    shop: Shop, provider: FakePayments, later: FollowUps, state: OrderState, stop: bool
) -> None:
    order_id = _authorized(shop, state)

    assert _capture(shop, order_id, provider, later) == Outcome(f"skip: {state}", stop=stop)
    assert provider.calls == [] and shop.rows(Payment, order_id=order_id) == []


def test_the_expiry_check_uses_the_clock(shop: Shop) -> None:
    # an authorization that expires tomorrow is still good today (guards the comparison)
    tomorrow = (utcnow() + dt.timedelta(days=1)).isoformat()
    order_id = _authorized(shop, facts={**AUTHORIZED, "authorization_expires_at": tomorrow})
    provider, later = FakePayments(), FollowUps()
    assert _capture(shop, order_id, provider, later) == Outcome("captured")
