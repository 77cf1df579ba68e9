"""Capturing an order's payment where it lives: the step that moves a reserved order to
``paid``, once. No payment method is ever invented: we only capture an authorization the
buyer gave, and only where it is held.

There is one payment per order (a unique constraint), recorded together with the move to
``paid``. The order's payment facts (``orders.payment_facts``, ``domain.canonical.PaymentFacts``)
decide what happens:

- the marketplace collected the money (``payment_collected_by_marketplace``): recorded as
  ``collected`` without any call;
- an authorization held by the marketplace (Shopify ``authorized``): captured on the
  marketplace (``orderCapture`` with its AUTHORIZATION transaction as parent);
- an authorization held by the payment provider (a WooCommerce order paid through the Stripe
  gateway carries its PaymentIntent): captured at the provider (``/capture`` of that intent);
- nothing authorised and nothing collected yet (``AWAITING_PAYMENT``: Shopify ``pending``, a
  WooCommerce bank transfer ``on-hold``, Amazon ``Pending``): nothing happens and the pipeline
  stops; the marketplace's update pushes the order on;
- anything else: ``AuthorizationUnusable`` (the order goes to ``needs_attention``), as does an
  authorization that expired, was voided or covers less than the order; the holder says which.

A capture is made under the idempotency key ``capture:{order_id}``, claimed and committed
before the call and sent along (Shopify's ``@idempotent``, Stripe's ``Idempotency-Key``), so a
crash between the call and the record is resumed with the same key instead of capturing again.
No branch decides "nothing to capture" while that key is unfinished: when the marketplace then
says it collected the money, the holder is asked whether our capture went through
(``find_capture``); if it did, it is recorded as ours (one authorization is captured once: the
buyer paid once), otherwise the key is retired and the marketplace's collection recorded.
Captured while the order was being cancelled: the money was taken, so the payment is recorded,
a ``captured_after_cancel`` event shows it to staff, and a refund follows. So it is too when the
capture's worker died during the call and the order was cancelled before it ran again: the
step, run again (by the sweeper, for the unfinished key), asks the holder what happened.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import Order, Payment
from db.session import Transaction, core
from domain.errors import AuthorizationUnusable
from domain.states import OrderState
from orders import idempotency
from orders.intake import record_event
from orders.steps import DONE_OR_GONE, FollowUp, Outcome
from orders.transitions import load_for_update, transition

__all__ = [
    "AWAITING_PAYMENT",
    "AuthorizationHolder",
    "CapturedPayment",
    "HolderFactory",
    "capture",
    "record_collected",
]

S = OrderState
ACTOR = "task:capture_payment"
#: financial statuses of an order nobody has paid or authorised yet: wait for the marketplace
AWAITING_PAYMENT = {"pending", "unpaid", "authorized_pending", "payment_pending"}


class CapturedPayment(Protocol):
    """What a holder answers to a capture (``replayed``: from its idempotency cache)."""

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


class AuthorizationHolder(Protocol):
    """Where an order's authorization lives: the marketplace (Shopify) or the payment provider
    (a PaymentIntent). ``name`` is what the payment row records as its provider."""

    @property
    def name(self) -> str: ...

    def capture_authorization(
        self, *, order_external_id: str, authorization_id: str | None, amount: Decimal,
        currency: str, idempotency_key: str,
    ) -> CapturedPayment:  # fmt: skip
        """Capture ``amount`` of the order's authorization, once per key. Raises
        ``AuthorizationUnusable`` (expired, voided, partial: the reason in words)."""
        ...

    def find_capture(
        self, *, order_external_id: str, authorization_id: str | None
    ) -> CapturedPayment | None:
        """The succeeded capture of that authorization, if there is one."""
        ...


#: (where the authorization is held: ``marketplace`` / ``provider``, the order's account id)
#: → its holder; built only when a call is due
HolderFactory = Callable[[str, int], AuthorizationHolder]

_payments = table(Payment)
# prebuilt (see db.session.core)
_HAS_PAYMENT = select(_payments.c.id).where(_payments.c.order_id == bindparam("b_order"))
_RECORD_PAYMENT = insert(_payments)


def _has_payment(session: Session, order_id: int) -> bool:
    return core(session).execute(_HAS_PAYMENT, {"b_order": order_id}).first() is not None


def _record(
    session: Session, order_id: int, captured: CapturedPayment, key: str, provider: str
) -> None:
    """Our capture, as the order's one payment, with its key finished in the same transaction."""
    now = utcnow()
    core(session).execute(
        _RECORD_PAYMENT,
        {"order_id": order_id, "provider": provider, "amount": captured.amount,
         "currency": captured.currency, "status": captured.status,
         "external_id": captured.id, "idempotency_key": key,
         "collected_by_marketplace": False, "captured_at": now, "created_at": now},
    )  # fmt: skip
    idempotency.finish(session, key, {"id": captured.id, "status": captured.status})


def record_collected(session: Session, order: Order) -> Payment | None:
    """The money the marketplace says it collected (``payment_collected_by_marketplace``), as
    the order's one payment, when none is recorded and no capture of ours is in doubt (that
    one the capture step settles first). The capture step records it so; so does a refund the
    marketplace reports before the pipeline reached the payment (an order paid at checkout and
    cancelled with its refund in the admin): money given back was first taken."""
    if not order.payment_collected_by_marketplace or _has_payment(session, order.id):
        return None
    if idempotency.unfinished(session, f"capture:{order.id}") is not None:
        return None
    return _collected(session, order)


def _collected(session: Session, order: Order) -> Payment:
    payment = Payment(
        order_id=order.id, provider=order.channel, amount=order.total, currency=order.currency,
        status="collected", idempotency_key=idempotency.current_key(session, f"capture:{order.id}"),
        collected_by_marketplace=True, captured_at=utcnow(),
    )  # fmt: skip
    session.add(payment)
    session.flush()
    return payment


def _facts(order: Order) -> dict[str, Any]:
    return dict(order.payment_facts or {})


def _held_by_when_in_doubt(facts: dict[str, Any]) -> str:
    """Where a capture of ours in doubt was made: a PaymentIntent stays named on the order
    (WooCommerce keeps ``_stripe_intent_id``) after it is captured; otherwise the marketplace
    held it."""
    return "provider" if facts.get("authorization_id") else "marketplace"


def _checked(order: Order, facts: dict[str, Any], now: dt.datetime) -> None:
    """Refuse what the facts already show cannot be captured (the holder checks again)."""
    expires = facts.get("authorization_expires_at")
    if expires and dt.datetime.fromisoformat(expires) <= now:
        raise AuthorizationUnusable(
            f"the payment authorization expired at {expires}: ask the buyer to pay again"
        )
    authorized = facts.get("amount_authorized")
    if authorized is not None and Decimal(authorized) < order.total:
        raise AuthorizationUnusable(
            f"partial authorization: {authorized} {order.currency} authorised of "
            f"{order.total} {order.currency}"
        )


def _ask_holder(
    transaction: Transaction, order_id: int, holders: HolderFactory
) -> tuple[AuthorizationHolder, CapturedPayment | None]:
    """Ask where a capture of ours in doubt was made whether it went through (outside any
    transaction: the caller checks again under the lock that the key is still in doubt)."""
    with transaction() as session:
        order = load_for_update(session, order_id)
        facts, account, external_id = _facts(order), order.channel_account_id, order.external_id
    holder = holders(_held_by_when_in_doubt(facts), account)
    found = holder.find_capture(
        order_external_id=external_id, authorization_id=facts.get("authorization_id")
    )
    return holder, found


def _resolve_unfinished(
    transaction: Transaction, order_id: int, key: str, holders: HolderFactory
) -> Outcome | None:
    """The marketplace collected the money while our capture under ``key`` never finished: ask
    the holder whether our capture went through. Returns the outcome when it did (recorded as
    ours), or None once it is certain it did not (key retired)."""
    holder, found = _ask_holder(transaction, order_id, holders)
    with transaction() as session:
        order = load_for_update(session, order_id)
        row = idempotency.unfinished(session, f"capture:{order_id}")
        if OrderState(order.state) != S.RESERVED or row is None or row.key != key:
            return Outcome("resolved elsewhere")  # another attempt got here first
        if found is not None and found.status == "succeeded":
            _record(session, order_id, found, key, holder.name)
            transition(session, order, S.PAID, actor=ACTOR, payment=found.id,
                       resolved="our capture in doubt went through")  # fmt: skip
            return Outcome("captured (found after the fact)")
        idempotency.fail(session, key, "no capture at the holder", rejected=True)
    return None


def _give_back(
    session: Session, order_id: int, captured: CapturedPayment, refund: FollowUp
) -> None:
    """Our capture of an order cancelled meanwhile, recorded: staff see that it was taken after
    the cancel (a ``captured_after_cancel`` event), and ``refund`` gives it back."""
    record_event(session, order_id, actor=ACTOR, kind="captured_after_cancel",
                 payment=captured.id)  # fmt: skip
    refund(session, order_id)


def _settle_cut_short(
    transaction: Transaction, order_id: int, key: str, holders: HolderFactory, refund: FollowUp
) -> Outcome:
    """A cancelled order whose capture under ``key`` never finished (its worker died during the
    call): ask the holder whether it went through. If it did, the money was taken: it is
    recorded as ours, a ``captured_after_cancel`` event shows it to staff and ``refund`` gives
    it back; if not, the key is retired. Either way nothing is left in doubt."""
    holder, found = _ask_holder(transaction, order_id, holders)
    with transaction() as session:
        load_for_update(session, order_id)
        row = idempotency.unfinished(session, f"capture:{order_id}")
        if row is None or row.key != key or _has_payment(session, order_id):
            return Outcome("resolved elsewhere", stop=True)
        if found is None or found.status != "succeeded":
            idempotency.fail(session, key, "no capture at the holder", rejected=True)
            return Outcome("skip: cancelled (the capture cut short had not gone through)",
                           stop=True)  # fmt: skip
        _record(session, order_id, found, key, holder.name)
        _give_back(session, order_id, found, refund)
    return Outcome("captured before the cancel (found after the fact), refunding", stop=True)


def capture(
    transaction: Transaction,
    order_id: int,
    holders: HolderFactory,
    keys: idempotency.Claimant,
    *,
    refund: FollowUp,
) -> Outcome:
    """Capture (or record) the payment of a reserved order. ``refund`` gives back money
    captured after the order was cancelled."""
    cut_short: str | None = None
    with transaction() as session:
        order = load_for_update(session, order_id)
        state = OrderState(order.state)
        if state != S.RESERVED:
            if state == S.CANCELLED and not _has_payment(session, order_id):
                row = idempotency.unfinished(session, f"capture:{order_id}")
                # our capture died in flight, then the order was cancelled: settled below
                cut_short = row.key if row is not None else None
            if cut_short is None:
                return Outcome(f"skip: {state}", stop=state in DONE_OR_GONE | {S.NEW, S.ON_HOLD})
        else:  # reserved
            if _has_payment(session, order_id):
                transition(session, order, S.PAID, actor=ACTOR)
                return Outcome("already captured")
            amount, currency, facts = order.total, order.currency, _facts(order)
            account, external_id = order.channel_account_id, order.external_id
            held_by = facts.get("held_by")
            in_doubt: str | None = None
            if order.payment_collected_by_marketplace:
                pending = idempotency.unfinished(session, f"capture:{order_id}")
                if pending is None:
                    _collected(session, order)
                    transition(session, order, S.PAID, actor=ACTOR, collected_by=order.channel)
                    return Outcome("collected by marketplace")
                in_doubt = pending.key  # our capture may have gone through: settle that first
            elif held_by is None:
                financial = (order.financial_status or "").lower()
                if financial in AWAITING_PAYMENT:
                    # nobody has paid or authorised yet (Amazon "Pending", a bank transfer): wait
                    # for the update that says so; intake pushes the order on then
                    return Outcome("awaiting the marketplace's payment", stop=True)
                raise AuthorizationUnusable(
                    f"nothing to capture: the marketplace has not collected the payment "
                    f"(financial status {financial or 'unknown'}) and holds no authorization"
                )
            else:
                _checked(order, facts, utcnow())
                authorization = facts.get("authorization_id")
                params = {"order_ref": str(order_id), "amount": str(amount), "currency": currency,
                          "held_by": held_by, "authorization": authorization}  # fmt: skip
                # a finished key would mean a recorded payment (same transaction): returned above
                key = keys.claim(session, f"capture:{order_id}", params, point="capture_sent")
    if cut_short is not None:
        return _settle_cut_short(transaction, order_id, cut_short, holders, refund)
    if in_doubt is not None:
        resolved = _resolve_unfinished(transaction, order_id, in_doubt, holders)
        return resolved or capture(transaction, order_id, holders, keys, refund=refund)
    # committed: the key exists before the call, so a crash here is resumed, not repeated
    holder = holders(str(held_by), account)
    with keys.outside_call(key):
        captured = holder.capture_authorization(
            order_external_id=external_id, authorization_id=authorization, amount=amount,
            currency=currency, idempotency_key=key,
        )  # fmt: skip
    with transaction() as session:
        order = load_for_update(session, order_id)
        # a payment is recorded together with the move to paid (one per order, by a unique
        # constraint), so while the order is still reserved there is none
        if OrderState(order.state) != S.RESERVED and _has_payment(session, order_id):
            return Outcome("already recorded")
        _record(session, order_id, captured, key, holder.name)
        if OrderState(order.state) != S.RESERVED:
            # cancelled while the capture was in flight: the money was taken (recorded above)
            _give_back(session, order_id, captured, refund)
            return Outcome(f"captured, but order is {order.state}")
        transition(session, order, S.PAID, actor=ACTOR, payment=captured.id,
                   held_by=holder.name, replayed=captured.replayed)  # fmt: skip
    return Outcome("captured")
