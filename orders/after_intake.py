"""What follows an order applied by intake (a webhook, a poll's page, a refetch), decided here
and done by the caller's follow-ups (``workflows.tasks`` publishes them as tasks after commit).

- a new order, or news on one still waiting for the pipeline (a payment), enters the pipeline;
- refunds the marketplace made get their credit notes;
- an edit that moved a parcel (address, lines) voids the old label and labels the new shipment;
- a delivery that said the order changed without carrying it has the order fetched;
- an order the marketplace cancelled releases its stock, credits, refunds and voids labels
  (``cancelled``, in the transaction that cancelled it);
- a ready (or partly shipped) order the marketplace fulfils and says it shipped is shipped; one
  fulfilled in the marketplace's admin (not by our pushes) is not shipped again: its labels
  that did not leave are voided (``orders.fulfilment.fulfilled_elsewhere``);
- a partly shipped, shipped or delivered order the marketplace cancelled expects a return
  (``orders.fulfilment.cancelled_after_shipping``), never a silent no-op. (Until 2026-12-06 a
  partly shipped one was looked at only as "fulfilled elsewhere?", and its cancellation was
  dropped: it cannot move to ``cancelled``, so nothing else sees it.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from db.models import Order
from domain.states import OrderState
from orders.fulfilment import cancelled_after_shipping, fulfilled_elsewhere, marketplace_shipped
from orders.intake import IntakeOutcome, IntakeResult
from orders.steps import FollowUp

__all__ = ["Then", "batched", "enters_pipeline", "follow"]

S = OrderState


@dataclass(frozen=True)
class Then:
    """The follow-ups intake may need, each for one order."""

    pipeline: FollowUp
    credit_note: FollowUp
    buy_label: FollowUp
    void_unused: FollowUp
    ship: FollowUp
    #: in the transaction that cancelled the order: stock back, credit note, refund, labels
    cancelled: FollowUp
    #: (session, the account's id, the order's id there): fetch it as it is now
    refetch: Callable[[Session, int, str], None]


def enters_pipeline(result: IntakeResult) -> bool:
    """A new order, or news (a payment) on one the pipeline has not taken past reserving."""
    return (result.outcome == IntakeOutcome.CREATED and result.state == S.NEW) or (
        result.outcome == IntakeOutcome.UPDATED and result.state in (S.NEW, S.RESERVED)
    )


def batched(result: IntakeResult) -> bool:
    """Nothing but its pipeline to start (no refunds to credit, nothing to fetch or relabel):
    a sync's page sends such orders' pipelines as one message."""
    return (
        enters_pipeline(result)
        and not result.refunded
        and not result.relabel
        and result.refetch is None
    )


def follow(session: Session, result: IntakeResult, account_id: int | None, then: Then) -> None:
    """Do (or schedule, through ``then``) what follows ``result`` (module doc). Without
    ``account_id`` an order is not fetched (nobody to ask)."""
    order_id = result.order_id
    if result.refunded:
        then.credit_note(session, order_id)
    if result.relabel:
        then.void_unused(session, order_id)
        then.buy_label(session, order_id)
    if result.refetch is not None and account_id is not None:
        then.refetch(session, account_id, result.refetch)
    if enters_pipeline(result):
        then.pipeline(session, order_id)
        return
    if result.outcome != IntakeOutcome.UPDATED:
        return
    if result.cancelled_now:
        then.cancelled(session, order_id)
        return
    if result.state not in (S.READY_TO_SHIP, S.PARTIALLY_SHIPPED, S.SHIPPED, S.DELIVERED):
        return
    order = session.get(Order, order_id)
    if order is None:
        return
    if order.cancelled_at is not None and result.state != S.READY_TO_SHIP:
        # (a ready order's cancellation cancels it: cancelled_now) some of it left: a return
        # is expected, staff see it; a partly shipped order cannot be cancelled either
        cancelled_after_shipping(session, order_id)
    elif result.state in (S.READY_TO_SHIP, S.PARTIALLY_SHIPPED):
        if marketplace_shipped(order):  # e.g. Amazon shipped an FBA order
            then.ship(session, order_id)
        elif order.fulfillment_status == "fulfilled":
            fulfilled_elsewhere(session, order_id, void_unused=then.void_unused)
