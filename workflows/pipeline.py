"""The order pipeline: one canvas, one thin task per step, each step exactly once in effect.

    pipeline(order_id) = chain(
        reserve_stock.si(order_id),        # or on_hold when stock is short (the chain stops)
        capture_payment.si(order_id),      # recorded without a call when the marketplace collected
        chord([issue_invoice.si(order_id), buy_label.si(order_id)],
              mark_ready_to_ship.si(order_id)),
    )
    ship(order_id): tracking back to the marketplace → shipped
    refund_payment(order_id): a cancelled order's captured payment goes back (once)

Every task holds the Redis lock of (order, step) (``workflows.steps.StepTask``) and calls its
step's service in ``orders/`` (``reservation``, ``payments``, ``documents``, ``fulfilment``,
``refunds``), which reloads the order and does the step only if it is not done yet; outside
calls carry idempotency keys derived from our ids (``capture:{order_id}``, ``label:{order_id}``)
stored before the call. Here the services get their real outside world (the clients of
``workflows.providers``) and their follow-ups become tasks published after commit. A step that
fails for good sends the order to ``needs_attention``; ``retry_order`` resumes it from that step
(``orders.recovery``). Orders the marketplace fulfils itself (Amazon FBA) run the same canvas
with nothing of ours leaving the shelf (``orders.fulfilment``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeGuard

from celery import chain, chord
from celery.canvas import Signature
from sqlalchemy.orm import Session

from db.models import ChannelAccount, Refund
from domain.states import OrderState
from integrations.base import ConnectorSeams
from orders import cancellation, documents, fulfilment, payments, recovery, refunds, reservation
from orders.fulfilment import marketplace_shipped
from orders.payments import AuthorizationHolder
from orders.steps import FollowUp
from workflows.base import describe
from workflows.celery_app import app
from workflows.providers import (
    NotAHolder,
    carrier_client,
    connector_for,
    payments_client,
    shared_limiter,
)
from workflows.publish import publish_after_commit
from workflows.steps import RefundTask, StepTask

__all__ = [
    "buy_label",
    "capture_payment",
    "credit_note",
    "issue_invoice",
    "mark_ready_to_ship",
    "marketplace_shipped",
    "on_cancelled",
    "pipeline",
    "refund_payment",
    "release_waiting",
    "request_refund",
    "reserve_stock",
    "retry_order",
    "ship",
    "staff_refund",
]


def _task(
    step: str, queue_prefix: str, *, chord_header: bool = False, base: type = StepTask
) -> Any:
    # Only the chord's header tasks store a result (the chord counts them); for the others a
    # result is a Redis write nobody reads, and a publisher that keeps it would subscribe to it.
    return app.task(base=base, bind=True, name=f"ordersync.{queue_prefix}.{step}", step=step,
                    ignore_result=not chord_header)  # fmt: skip


def _after_commit(signature: Callable[[int], Signature]) -> FollowUp:
    """A follow-up that publishes ``signature(order_id)`` once the transaction has committed."""

    def publish(session: Session, order_id: int) -> None:
        publish_after_commit(session, signature(order_id))

    return publish


def _push_fulfilment(
    account: ChannelAccount, external_id: str, *, tracking_number: str, carrier: str,
    idempotency_key: str,
) -> None:  # fmt: skip
    # the account's connector, on the buckets every worker shares (as polling uses them)
    connector = connector_for(account, ConnectorSeams(limiter=shared_limiter()))
    try:
        connector.push_fulfillment(external_id, tracking_number=tracking_number, carrier=carrier,
                                   idempotency_key=idempotency_key)  # fmt: skip
    finally:
        connector.close()


#: the marketplace holders of this process, per account: (the account row's updated_at, its
#: connector). Building a connector builds an httpx client (~50 ms: the TLS trust store), more
#: than the capture itself; a changed account (credentials, limits) gets a new one.
_HOLDERS: dict[int, tuple[Any, Any]] = {}
_HOLDERS_LOCK = threading.Lock()


def _holder(held_by: str, account_id: int) -> AuthorizationHolder:
    """Where an order's authorization lives: the payment provider (a PaymentIntent), or the
    marketplace of the order's account (its connector, on the buckets every worker shares;
    reused by this process while the account is unchanged)."""
    if held_by == "provider":
        return payments_client()
    from db.session import session_scope

    with session_scope() as session:
        account = session.get_one(ChannelAccount, account_id)
        with _HOLDERS_LOCK:
            cached = _HOLDERS.get(account_id)
            if cached is not None and cached[0] == account.updated_at:
                holder: AuthorizationHolder = cached[1]
                return holder
            connector = connector_for(account, ConnectorSeams(limiter=shared_limiter()))
            if not _is_holder(connector):
                connector.close()
                raise NotAHolder(
                    f"the {account.channel} marketplace holds no authorizations we capture"
                )
            if cached is not None:
                cached[1].close()
            _HOLDERS[account_id] = (account.updated_at, connector)
            return connector


def _is_holder(candidate: object) -> TypeGuard[AuthorizationHolder]:
    return all(hasattr(candidate, name) for name in ("capture_authorization", "find_capture"))


# --- the steps --------------------------------------------------------------------------------


@_task("reserve_stock", "orders")
def reserve_stock(self: StepTask, order_id: int) -> str:
    with self.lock(order_id):
        return self.report(reservation.reserve(self.transaction, order_id))


@_task("capture_payment", "orders")
def capture_payment(self: StepTask, order_id: int) -> str:
    refund = _after_commit(refund_payment.si)  # money captured after a cancel goes back
    with self.lock(order_id):
        outcome = payments.capture(self.transaction, order_id, _holder, self.keys(), refund=refund)
        return self.report(outcome)


@_task("issue_invoice", "documents", chord_header=True)
def issue_invoice(self: StepTask, order_id: int) -> str:
    with self.lock(order_id):
        return self.report(documents.issue_invoice(self.transaction, order_id))


@_task("buy_label", "outbound", chord_header=True)
def buy_label(self: StepTask, order_id: int) -> str:
    with self.lock(order_id):
        outcome = fulfilment.buy_label(self.transaction, order_id, carrier_client, self.keys())
        return self.report(outcome)


@_task("mark_ready_to_ship", "orders")
def mark_ready_to_ship(self: StepTask, order_id: int) -> str:
    ship_it = _after_commit(ship.si)  # the marketplace shipped it meanwhile
    with self.lock(order_id):
        return self.report(
            fulfilment.mark_ready_to_ship(self.transaction, order_id, ship_it=ship_it)
        )


@_task("ship", "outbound")
def ship(self: StepTask, order_id: int) -> str:
    with self.lock(order_id):
        return self.report(fulfilment.ship(self.transaction, order_id, _push_fulfilment))


@_task("credit_note", "documents")
def credit_note(self: StepTask, order_id: int) -> str:
    return self.report(documents.credit_note(self.transaction, order_id))


@_task("refund_payment", "orders", base=RefundTask)
def refund_payment(self: RefundTask, order_id: int) -> str:
    with self.lock(order_id):
        outcome = refunds.refund(self.transaction, order_id, payments_client, self.keys())
        return self.report(outcome)


class StaffRefundTask(StepTask):
    abstract = True

    def on_permanent_failure(
        self, exc: Exception, args: Any, kwargs: Any, *, attempts: int
    ) -> None:
        order_id, refund_id = (args or (kwargs["order_id"], kwargs["refund_id"]))[:2]
        with self.transaction() as session:
            refunds.refund_refused(session, order_id, refund_id, error=describe(exc))


@_task("staff_refund", "orders", base=StaffRefundTask)
def staff_refund(self: StepTask, order_id: int, refund_id: int) -> str:
    credit = _after_commit(credit_note.si)
    with self.lock(order_id):
        outcome = refunds.make_refund(self.transaction, order_id, refund_id, payments_client,
                                      self.keys(), credit=credit)  # fmt: skip
        return self.report(outcome)


def request_refund(
    session: Session, order_id: int, *, actor: str, lines: dict[str, int] | None = None,
    amount: Decimal | None = None, request_key: str | None = None,
) -> tuple[Refund, bool]:  # fmt: skip
    """Staff refund of lines or an amount (``orders.refunds.request_refund``), made at the
    provider once the transaction commits; a repeated request is the same refund."""
    refund, new = refunds.request_refund(session, order_id, actor=actor, lines=lines,
                                         amount=amount, request_key=request_key)  # fmt: skip
    if new:
        publish_after_commit(session, staff_refund.si(order_id, refund.id))
    return refund, new


# --- canvas, and what cancelling, staff and new stock set off ---------------------------------


def pipeline(order_id: int) -> Signature:
    return chain(
        reserve_stock.si(order_id),
        capture_payment.si(order_id),
        chord(
            [issue_invoice.si(order_id), buy_label.si(order_id)], mark_ready_to_ship.si(order_id)
        ),
    )


def on_cancelled(session: Session, order_id: int) -> None:
    """In the transaction that cancelled the order: stock back, credit note and refund later."""
    cancellation.on_cancelled(session, order_id, credit_note=_after_commit(credit_note.si),
                              refund=_after_commit(refund_payment.si))  # fmt: skip


def retry_order(session: Session, order_id: int, *, actor: str) -> OrderState:
    """Staff retry (``orders.recovery.retry``): the failed step again, or the missing refund."""
    resume, shipping, refund = (_after_commit(s) for s in (pipeline, ship.si, refund_payment.si))
    return recovery.retry(
        session, order_id, actor=actor, pipeline=resume, ship=shipping, refund=refund
    )


def release_waiting(session: Session, sku: str) -> list[int]:
    """After stock arrived: push the on-hold orders that wait for ``sku`` through again."""
    return reservation.release_waiting(session, sku, resume=_after_commit(pipeline))
