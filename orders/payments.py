"""Capturing an order's payment: the step that moves a reserved order to ``paid``, once.

There is one payment per order (a unique constraint), recorded together with the move to
``paid``:

- the marketplace collected the money (``payment_collected_by_marketplace``): recorded as
  ``collected`` without any call;
- the marketplace has not taken it yet (its financial status is one of ``AWAITING_PAYMENT``):
  nothing happens and the pipeline stops; the marketplace's update pushes the order on;
- otherwise we capture it from the payment provider under the idempotency key
  ``capture:{order_id}``, claimed and committed before the call, so a crash between the call
  and the record is resumed with the same key (the provider replays its answer) instead of
  charging again;
- captured while the order was being cancelled: the money was taken, so the payment is
  recorded, a ``captured_after_cancel`` event shows it to staff, and a refund follows.

No branch decides "nothing to capture" while a ``capture:`` key of the order is unfinished (an
attempt that died between the provider's answer and our record). When the marketplace then
says it collected the money, the provider is asked what it did for the order
(``find_capture``): a capture it made is recorded (with its key finished) and refunded, since
the buyer paid twice; only when the provider has none, and its search has had time to see one
(``SEARCH_FRESHNESS``), is the key retired and the marketplace's money recorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import Payment
from db.session import Transaction, core
from domain.errors import RetryableError
from domain.states import OrderState
from orders import idempotency
from orders.intake import record_event
from orders.steps import DONE_OR_GONE, FollowUp, Outcome
from orders.transitions import load_for_update, transition

__all__ = ["AWAITING_PAYMENT", "SEARCH_FRESHNESS", "CapturedPayment", "PaymentProvider", "capture"]

S = OrderState
ACTOR = "task:capture_payment"
#: financial statuses of an order whose marketplace collects the money but has not yet
AWAITING_PAYMENT = {"pending", "unpaid", "authorized_pending", "payment_pending"}
#: how long the provider's search may lag behind a capture ("data is searchable in under 1
#: minute", https://docs.stripe.com/search#data-freshness): no answer before that proves nothing
SEARCH_FRESHNESS = dt.timedelta(seconds=60)


class CapturedPayment(Protocol):
    """What the provider answers to a capture (``replayed``: from its idempotency cache)."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def currency(self) -> str: ...
    @property
    def replayed(self) -> bool: ...


class PaymentProvider(Protocol):
    """The payment provider: one call, one charge per idempotency key."""

    def capture(
        self, *, order_ref: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> CapturedPayment: ...

    def retrieve_by_order(self, order_ref: str) -> CapturedPayment | None:
        """What the provider did for ``order_ref``: its succeeded capture, else its newest
        attempt, else None."""
        ...


_payments = table(Payment)
# prebuilt (see db.session.core)
_HAS_PAYMENT = select(_payments.c.id).where(_payments.c.order_id == bindparam("b_order"))
_RECORD_PAYMENT = insert(_payments)


def _has_payment(session: Session, order_id: int) -> bool:
    return core(session).execute(_HAS_PAYMENT, {"b_order": order_id}).first() is not None


def _record(session: Session, order_id: int, captured: CapturedPayment, key: str) -> None:
    """Our capture, as the order's one payment, with its key finished in the same transaction."""
    now = utcnow()
    core(session).execute(
        _RECORD_PAYMENT,
        {"order_id": order_id, "provider": "payments", "amount": captured.amount,
         "currency": captured.currency, "status": captured.status,
         "external_id": captured.id, "idempotency_key": key,
         "collected_by_marketplace": False, "captured_at": now, "created_at": now},
    )  # fmt: skip
    idempotency.finish(session, key, {"id": captured.id, "status": captured.status})


def _resolve_unfinished(
    transaction: Transaction,
    order_id: int,
    key: str,
    provider: Callable[[], PaymentProvider],
    *,
    refund: FollowUp,
) -> Outcome | None:
    """The marketplace collected the money while our capture under ``key`` never finished: ask
    the provider what it did. Returns the outcome when our capture was found (recorded, and
    refunded: the buyer paid twice), or None once it is certain there was none (key retired)."""
    found = provider().retrieve_by_order(str(order_id))
    with transaction() as session:
        order = load_for_update(session, order_id)
        row = idempotency.unfinished(session, f"capture:{order_id}")
        if OrderState(order.state) != S.RESERVED or row is None or row.key != key:
            return Outcome("resolved elsewhere")  # another attempt got here first
        if found is not None and found.status == "succeeded":
            _record(session, order_id, found, key)
            record_event(session, order_id, actor=ACTOR, kind="captured_twice",
                         payment=found.id, collected_by=order.channel)  # fmt: skip
            transition(session, order, S.PAID, actor=ACTOR, payment=found.id,
                       collected_by=order.channel)  # fmt: skip
            refund(session, order_id)  # the marketplace has the buyer's money: give ours back
            return Outcome("captured by us and collected by the marketplace: refunding ours")
        if utcnow() - row.created_at < SEARCH_FRESHNESS:
            raise RetryableError(
                f"capture {key} unfinished and not yet found at the provider; asking again",
                retry_after=10.0,
            )
        idempotency.fail(session, key, "no capture at the provider", rejected=True)
    return None


def capture(
    transaction: Transaction,
    order_id: int,
    provider: Callable[[], PaymentProvider],
    keys: idempotency.Claimant,
    *,
    refund: FollowUp,
) -> Outcome:
    """Capture (or record) the payment of a reserved order. ``provider`` is built only when a
    call is due: an order whose marketplace collects the money needs none configured.
    ``refund`` gives back money captured after the order was cancelled."""
    with transaction() as session:
        order = load_for_update(session, order_id)
        state = OrderState(order.state)
        if state != S.RESERVED:
            return Outcome(f"skip: {state}", stop=state in DONE_OR_GONE | {S.NEW, S.ON_HOLD})
        if _has_payment(session, order_id):
            transition(session, order, S.PAID, actor=ACTOR)
            return Outcome("already captured")
        amount, currency = order.total, order.currency
        in_doubt: str | None = None
        if order.payment_collected_by_marketplace:
            if (order.financial_status or "").lower() in AWAITING_PAYMENT:
                # the marketplace has not taken the money yet (Amazon "Pending"): wait for the
                # update that says it has; intake pushes the order on then
                return Outcome("awaiting the marketplace's payment", stop=True)
            pending = idempotency.unfinished(session, f"capture:{order_id}")
            if pending is None:
                key = idempotency.current_key(session, f"capture:{order_id}")
                session.add(
                    Payment(order_id=order_id, provider=order.channel, amount=amount,
                            currency=currency, status="collected", idempotency_key=key,
                            collected_by_marketplace=True, captured_at=utcnow())
                )  # fmt: skip
                transition(session, order, S.PAID, actor=ACTOR, collected_by=order.channel)
                return Outcome("collected by marketplace")
            in_doubt = pending.key  # we may have charged the buyer too: settle that first
        else:
            params = {"order_ref": str(order_id), "amount": str(amount), "currency": currency}
            # a finished key would mean a recorded payment (same transaction): returned above
            key = keys.claim(session, f"capture:{order_id}", params, point="capture_sent")
    if in_doubt is not None:
        resolved = _resolve_unfinished(transaction, order_id, in_doubt, provider, refund=refund)
        return resolved or capture(transaction, order_id, provider, keys, refund=refund)
    # committed: the key exists before the call, so a crash here is resumed, not repeated
    with keys.outside_call(key):
        captured = provider().capture(
            order_ref=str(order_id), amount=amount, currency=currency, idempotency_key=key
        )
    with transaction() as session:
        order = load_for_update(session, order_id)
        # a payment is recorded together with the move to paid (one per order, by a unique
        # constraint), so while the order is still reserved there is none
        if OrderState(order.state) != S.RESERVED and _has_payment(session, order_id):
            return Outcome("already recorded")
        _record(session, order_id, captured, key)
        if OrderState(order.state) != S.RESERVED:
            # cancelled while the capture was in flight: the money was taken, so it is
            # recorded, and staff see that it needs refunding
            record_event(session, order_id, actor=ACTOR, kind="captured_after_cancel",
                         payment=captured.id)  # fmt: skip
            refund(session, order_id)  # give it back
            return Outcome(f"captured, but order is {order.state}")
        transition(session, order, S.PAID, actor=ACTOR, payment=captured.id,
                   replayed=captured.replayed)  # fmt: skip
    return Outcome("captured")
