"""Order states and the one table of allowed transitions.

The happy path is ``new → reserved → paid → documented → ready_to_ship → shipped → delivered``
(``partially_shipped`` between ready and shipped while some of an order's shipments have left).
Side states: ``on_hold`` (stock short; released automatically when stock arrives),
``cancelled`` (by the marketplace or staff; releases stock, credits the invoice) and
``needs_attention`` (a step failed for good; staff retry resumes that step).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TRANSITIONS", "InboxStatus", "OrderState", "can_transition"]


class OrderState(StrEnum):
    NEW = "new"  # accepted from a marketplace, nothing done yet
    RESERVED = "reserved"  # stock reserved for every line
    PAID = "paid"  # payment captured (or collected by the marketplace and recorded)
    DOCUMENTED = "documented"  # invoice issued and label bought
    READY_TO_SHIP = "ready_to_ship"  # waiting for the parcel to leave
    PARTIALLY_SHIPPED = "partially_shipped"  # some of its shipments left, not all
    SHIPPED = "shipped"  # every shipment left (its tracking on its way to the marketplace)
    DELIVERED = "delivered"  # carrier confirmed delivery
    ON_HOLD = "on_hold"  # stock short; resumes when stock arrives
    CANCELLED = "cancelled"  # final; stock released, invoice credited
    NEEDS_ATTENTION = "needs_attention"  # a step failed for good; staff can retry it


_S = OrderState
_ACTIVE = {_S.NEW, _S.RESERVED, _S.PAID, _S.DOCUMENTED, _S.READY_TO_SHIP, _S.ON_HOLD}

#: state → states it may move to. Anything else is refused (and stale events never move back).
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    _S.NEW: frozenset({_S.RESERVED, _S.ON_HOLD}),
    _S.RESERVED: frozenset({_S.PAID}),
    _S.PAID: frozenset({_S.DOCUMENTED}),
    _S.DOCUMENTED: frozenset({_S.READY_TO_SHIP}),
    _S.READY_TO_SHIP: frozenset({_S.SHIPPED, _S.PARTIALLY_SHIPPED}),
    _S.PARTIALLY_SHIPPED: frozenset({_S.SHIPPED, _S.NEEDS_ATTENTION}),
    # shipped, but the tracking did not reach the marketplace (no credentials, a refused push),
    # the carrier lost the parcel, or the marketplace edited the order after the parcel left:
    # staff look (not the pipeline)
    _S.SHIPPED: frozenset({_S.DELIVERED, _S.NEEDS_ATTENTION}),
    _S.DELIVERED: frozenset(),
    _S.ON_HOLD: frozenset({_S.RESERVED}),
    _S.CANCELLED: frozenset(),
    # staff retry resumes the failed step: back to the state that step starts from
    _S.NEEDS_ATTENTION: frozenset(
        {
            _S.NEW, _S.RESERVED, _S.PAID, _S.DOCUMENTED, _S.READY_TO_SHIP,
            _S.PARTIALLY_SHIPPED, _S.SHIPPED,
        }
    ),
}
# an edit on the marketplace added units the shelf cannot cover: the order waits for them
for _state in (_S.RESERVED, _S.PAID, _S.DOCUMENTED, _S.READY_TO_SHIP):
    TRANSITIONS[_state] = TRANSITIONS[_state] | {_S.ON_HOLD}
for _state in _ACTIVE:
    TRANSITIONS[_state] = TRANSITIONS[_state] | {_S.CANCELLED, _S.NEEDS_ATTENTION}
TRANSITIONS[_S.NEEDS_ATTENTION] = TRANSITIONS[_S.NEEDS_ATTENTION] | {_S.CANCELLED}


def can_transition(current: OrderState, target: OrderState) -> bool:
    return target in TRANSITIONS[current]


class InboxStatus(StrEnum):
    RECEIVED = "received"  # committed, task published (or to be republished by the sweeper)
    PROCESSED = "processed"  # applied to the order (or found stale and ignored on purpose)
    FAILED = "failed"  # could not be parsed or applied; shown to staff with the error
    IGNORED = "ignored"  # a topic we do not act on (logged, kept)
