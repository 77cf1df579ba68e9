"""A pipeline step, as the services of ``orders/`` see it: what it gives back and what it may
set off.

A step service (``reservation.reserve``, ``payments.capture``, …) takes a ``Transaction``, the
order id, its outside-call dependency as a parameter (a Protocol the real client satisfies) and,
when it calls out, an ``idempotency.Claimant``. It returns an ``Outcome``: the result its task
reports and whether the rest of the pipeline must not run (``stop``). Work it schedules for
later (a refund, the ship step, the pipeline again) is a ``FollowUp``: called inside the
transaction that needs it, it runs only once that transaction has committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from domain.states import OrderState

__all__ = ["DONE_OR_GONE", "FollowUp", "Outcome"]

#: states no pipeline step moves an order out of: the chain stops there
DONE_OR_GONE = frozenset({OrderState.CANCELLED, OrderState.NEEDS_ATTENTION, OrderState.DELIVERED})


@dataclass(frozen=True)
class Outcome:
    """What a step did (``result``, e.g. ``"reserved"``, ``"skip: paid"``) and whether the rest
    of the pipeline must not run after it (``stop``: on hold, cancelled, awaiting payment)."""

    result: str
    stop: bool = False


class FollowUp(Protocol):
    """Work for ``order_id`` that runs after ``session``'s transaction commits (dropped if it
    rolls back)."""

    def __call__(self, session: Session, order_id: int) -> None: ...
