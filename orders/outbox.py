"""Every effect on a marketplace goes through the outbox.

An effect (``fulfilment``: a shipment left with its tracking number; ``delivery``: the carrier
delivered it, told where the marketplace takes delivery events, after the shipment's
fulfilment; ``cancellation``: we cancelled the order) is an ``outbox_messages`` row written by
``enqueue`` in the transaction of the state change that causes it, with an idempotency key
derived from our ids (``fulfill:{order_id}:s{shipment_id}``, ``cancel:{order_id}``) and what
the marketplace is to be told (``payload``). Its delivery (``deliver``, the task
``ordersync.outbound.deliver``) is published after that commit; the sweeper publishes again a
message that is still ``pending``.

``deliver`` claims the key before the call (``orders.idempotency``), calls the marketplace,
and writes one ``outbox_attempts`` row per try (status, response code, error, duration). An
account that cannot take pushes (no credentials, no API URL: a webhook-only account) is not
called: the message fails with "no credentials" and, for a fulfilment, the order goes to
``needs_attention`` ("tracking not sent: no credentials"), never a silent "shipped". A
failure for good (``record_failure``) does the same with the marketplace's error. Staff retry a
failed message (``retry``); for a fulfilment that also puts the order back to ``shipped`` (or
``partially_shipped``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ChannelAccount, Order, OutboxAttempt, OutboxMessage, Shipment
from db.session import Transaction
from domain.errors import PermanentError
from domain.states import OrderState
from orders import idempotency
from orders.intake import record_event
from orders.returns import refunded_with_cancellation
from orders.steps import FollowUp, Outcome
from orders.transitions import load_for_update, transition

__all__ = [
    "CANCELLATION",
    "DELIVERY",
    "DELIVER_TASK",
    "FULFILMENT",
    "NO_CREDENTIALS",
    "PUSH_STEP",
    "Effect",
    "PushEffect",
    "can_push",
    "deliver",
    "enqueue",
    "record_failure",
    "retry",
    "retry_for_order",
    "shipped_state",
]

S = OrderState
FULFILMENT, CANCELLATION, DELIVERY = "fulfilment", "cancellation", "delivery"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
#: the task that delivers one message (its only argument: the message id)
DELIVER_TASK = "ordersync.outbound.deliver"
#: the order's failed step when its tracking did not reach the marketplace
PUSH_STEP = "push_fulfilment"
NO_CREDENTIALS = "no credentials"


@dataclass(frozen=True)
class Effect:
    """One message as the marketplace's connector gets it."""

    kind: str
    external_id: str  # the marketplace's order id
    payload: dict[str, Any]
    idempotency_key: str


class PushEffect(Protocol):
    """Tell the marketplace of ``account`` about ``effect`` (safe to repeat with its key)."""

    def __call__(self, account: ChannelAccount, effect: Effect) -> bool | None:
        """True when the marketplace gave the buyer their money back with it (a cancellation
        where the marketplace collected the money and refunds on cancel)."""


def can_push(account: ChannelAccount) -> bool:
    """The account has an API connection we can push through (a webhook-only account has
    neither credentials nor an API URL)."""
    return bool(account.credentials or account.api_base_url)


def enqueue(
    session: Session,
    order_id: int,
    *,
    kind: str,
    key: str,
    payload: dict[str, Any],
    deliver_it: FollowUp,
    shipment_id: int | None = None,
) -> int:
    """The message of one effect, once per ``key`` (a second call returns the first row); its
    delivery is published after this transaction commits. Returns the message id."""
    existing = session.scalar(select(OutboxMessage).where(OutboxMessage.idempotency_key == key))
    if existing is not None:
        return existing.id
    message = OutboxMessage(
        task_name=DELIVER_TASK, args=[], queue=None, kind=kind, idempotency_key=key,
        payload=payload, status=PENDING, order_id=order_id, shipment_id=shipment_id,
        attempts=0,
    )  # fmt: skip
    session.add(message)
    session.flush()
    message.args = [message.id]
    deliver_it(session, message.id)
    return message.id


def _attempt(
    session: Session, message_id: int, status: str, started: float, *,
    code: int | None = None, error: str | None = None,
) -> None:  # fmt: skip
    session.add(OutboxAttempt(
        message_id=message_id, status=status, response_code=code, error=error,
        duration_ms=int((time.monotonic() - started) * 1000),
    ))  # fmt: skip


def shipped_state(session: Session, order_id: int) -> OrderState:
    """``shipped``, or ``partially_shipped`` while some of its shipments have not left."""
    waiting = session.scalar(
        select(Shipment.id).where(
            Shipment.order_id == order_id, Shipment.status.in_(["pending", "labelled"])
        )
    )
    return S.SHIPPED if waiting is None else S.PARTIALLY_SHIPPED


def _order_needs_attention(session: Session, order_id: int, error: str) -> None:
    order = load_for_update(session, order_id)
    if OrderState(order.state) not in (S.SHIPPED, S.PARTIALLY_SHIPPED):
        return
    transition(session, order, S.NEEDS_ATTENTION, actor="task:deliver", step=PUSH_STEP,
               error=error)  # fmt: skip
    order.failed_step, order.last_error, order.attempts = PUSH_STEP, error, 1


def _fail(session: Session, message: OutboxMessage, error: str) -> None:
    message.status, message.last_error = FAILED, error[:2000]
    assert message.order_id is not None
    record_event(session, message.order_id, actor="task:deliver", kind="push_failed",
                 effect=message.kind, error=error[:500])  # fmt: skip
    if message.kind == FULFILMENT:
        _order_needs_attention(session, message.order_id, f"tracking not sent: {error}"[:2000])


def _shipment_messages(
    session: Session, message: OutboxMessage, kind: str
) -> list[tuple[int, str]]:
    """(id, status) of the messages of ``kind`` for the same shipment as ``message``."""
    if message.shipment_id is None:
        return []
    return [(int(i), str(status)) for i, status in session.execute(
        select(OutboxMessage.id, OutboxMessage.status).where(
            OutboxMessage.shipment_id == message.shipment_id, OutboxMessage.kind == kind)
    )]  # fmt: skip


def deliver(
    transaction: Transaction,
    message_id: int,
    push: PushEffect,
    keys: idempotency.Claimant,
    deliver_it: FollowUp | None = None,
) -> Outcome:
    """Deliver one message (see the module docstring); a failed call is recorded as an
    attempt and raised for the task to retry.

    A delivery event waits for its shipment's fulfilment: the marketplace finds the
    fulfilment it belongs to by its tracking number, so told first it answers "not found"
    (the chaos suite: a fulfilment held back by 429s, the carrier's delivery ahead of it).
    Waiting costs no try and no key; once the fulfilment is delivered it publishes the waiting
    delivery (``deliver_it``), and the sweeper publishes a pending one again anyway. Only a
    fulfilment still pending holds it: one that failed for good (staff see it) does not keep
    its delivery pending for ever; the delivery is tried, and fails, as before."""
    started = time.monotonic()
    with transaction() as session:
        message = session.get(OutboxMessage, message_id, with_for_update=True)
        if message is None or message.kind is None:
            raise PermanentError(f"outbox message {message_id} is not an effect to deliver")
        if message.status != PENDING:
            return Outcome(f"skip: {message.status}")
        if message.kind == DELIVERY and any(
            status == PENDING for _, status in _shipment_messages(session, message, FULFILMENT)
        ):
            return Outcome("waits: the shipment's fulfilment is not delivered yet")
        order = session.get(Order, message.order_id)
        assert order is not None
        account = session.get(ChannelAccount, order.channel_account_id)
        assert account is not None
        if not can_push(account):
            _attempt(session, message_id, FAILED, started, error=NO_CREDENTIALS)
            _fail(session, message, NO_CREDENTIALS)
            return Outcome(f"failed: {NO_CREDENTIALS}")
        effect = Effect(message.kind, order.external_id, dict(message.payload or {}),
                        message.idempotency_key or "")  # fmt: skip
        params = {"kind": effect.kind, "order": effect.external_id, **effect.payload}
        key = keys.claim(session, effect.idempotency_key, params, point="push_requested")
        session.expunge(account)
    try:
        with keys.outside_call(key):
            refunded = bool(push(account, effect))
    except Exception as exc:
        with transaction() as session:
            _attempt(session, message_id, "error", started, code=getattr(exc, "status", None),
                     error=keys.describe(exc))  # fmt: skip
        raise
    with transaction() as session:
        message = session.get(OutboxMessage, message_id, with_for_update=True)
        assert message is not None and message.order_id is not None
        if message.status == DELIVERED:
            return Outcome("already delivered")
        message.status, message.delivered_at, message.last_error = DELIVERED, utcnow(), None
        _attempt(session, message_id, DELIVERED, started, code=200)
        idempotency.finish(session, key, {"delivered": True})
        record_event(session, message.order_id, actor="task:deliver", kind="pushed",
                     effect=message.kind, key=key)  # fmt: skip
        if message.kind == CANCELLATION and refunded:
            refunded_with_cancellation(session, message.order_id, actor="task:deliver")
        if message.kind == FULFILMENT and deliver_it is not None:
            for waiting, status in _shipment_messages(session, message, DELIVERY):
                if status == PENDING:
                    deliver_it(session, waiting)
    return Outcome("delivered")


def record_failure(session: Session, message_id: int, *, error: str) -> None:
    """The delivery failed for good (refused, or its retries ran out): staff see it."""
    message = session.get(OutboxMessage, message_id, with_for_update=True)
    if message is None or message.status != PENDING:
        return
    _fail(session, message, error)


def retry(session: Session, message_id: int, *, actor: str, deliver_it: FollowUp) -> str:
    """Staff retry one failed (or still pending) message; a fulfilment's order goes back to
    ``shipped``. Returns the message's status before."""
    message = session.get(OutboxMessage, message_id, with_for_update=True)
    if message is None or message.kind is None:
        raise LookupError(f"no outbox message {message_id}")
    was = str(message.status)
    if was == DELIVERED:
        raise ValueError(f"outbox message {message_id} was delivered already")
    message.status, message.last_error, message.published_at = PENDING, None, utcnow()
    assert message.order_id is not None
    order = load_for_update(session, message.order_id)
    if (
        message.kind == FULFILMENT
        and order.state == S.NEEDS_ATTENTION
        and (order.failed_step == PUSH_STEP)
    ):
        transition(session, order, shipped_state(session, order.id), actor=actor,
                   retry_of=PUSH_STEP)  # fmt: skip
        order.failed_step, order.last_error, order.attempts = None, None, 0
    record_event(session, message.order_id, actor=actor, kind="retry", step="push",
                 effect=message.kind, message_id=message_id)  # fmt: skip
    deliver_it(session, message_id)
    return was


def retry_for_order(session: Session, order_id: int, *, actor: str, deliver_it: FollowUp) -> int:
    """Staff retry of an order whose tracking was not sent: its undelivered messages again."""
    ids = session.scalars(
        select(OutboxMessage.id).where(
            OutboxMessage.order_id == order_id,
            OutboxMessage.kind.is_not(None),
            OutboxMessage.status != DELIVERED,
        )
    ).all()
    for message_id in ids:
        retry(session, message_id, actor=actor, deliver_it=deliver_it)
    return len(ids)
