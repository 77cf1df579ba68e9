"""orders.recovery.unfinished_calls: what the sweeper runs again after an attempt died."""

from __future__ import annotations

import datetime as dt

from db.base import utcnow
from db.models import IdempotencyKey
from domain.states import OrderState
from orders.recovery import UnfinishedCall, unfinished_calls
from tests.support.shop import Shop

S = OrderState
IDLE = dt.timedelta(seconds=90)
LONG_AGO = dt.timedelta(minutes=10)


def _key(shop: Shop, key: str, point: str, *, held_for: dt.timedelta | None) -> None:
    """A key as an attempt left it: ``held_for`` ago it was last locked (None: released)."""
    now = utcnow()
    with shop.transaction() as session:
        session.add(
            IdempotencyKey(key=key, request_hash="h", recovery_point=point,
                           locked_at=None if held_for is None else now - held_for,
                           locked_by=None if held_for is None else "dead-task",
                           created_at=now - LONG_AGO, last_run_at=now - LONG_AGO)
        )  # fmt: skip


def _found(shop: Shop) -> list[UnfinishedCall]:
    with shop.transaction() as session:
        return unfinished_calls(session, idle_for=IDLE, limit=100)


def test_keys_no_live_attempt_holds_are_run_again_once_per_idle_period(shop: Shop) -> None:
    # given: a capture and a label whose workers died, a refund released after a failure
    capture = shop.order(S.RESERVED)
    label = shop.order(S.PAID)
    refund = shop.order(S.CANCELLED)
    _key(shop, f"capture:{capture}", "capture_sent", held_for=LONG_AGO)
    _key(shop, f"label:{label}:2", "label_requested", held_for=LONG_AGO)
    _key(shop, f"refund:{refund}", "refund_sent", held_for=None)
    # and a label bought as its order was cancelled: no label step runs for it any more
    cancelled = shop.order(S.CANCELLED)
    _key(shop, f"label:{cancelled}", "label_requested", held_for=LONG_AGO)

    # when the sweeper looks
    first = _found(shop)

    # then each is resumed by its own step, and not again before the idle period has passed
    assert sorted((c.step, c.order_id, c.key) for c in first) == sorted([
        ("capture_payment", capture, f"capture:{capture}"),
        ("buy_label", label, f"label:{label}:2"),
        ("refund_payment", refund, f"refund:{refund}"),
        ("void_labels", cancelled, f"label:{cancelled}"),
    ])  # fmt: skip
    assert _found(shop) == []


def test_live_finished_rejected_and_moot_keys_are_left_alone(shop: Shop) -> None:
    live = shop.order(S.RESERVED)
    finished = shop.order(S.RESERVED)
    rejected = shop.order(S.RESERVED)
    moved_on = shop.order(S.NEEDS_ATTENTION)  # staff decide what happens to it
    _key(shop, f"capture:{live}", "capture_sent", held_for=dt.timedelta(seconds=5))
    _key(shop, f"capture:{finished}", "finished", held_for=None)
    _key(shop, f"capture:{rejected}", "rejected", held_for=None)
    _key(shop, f"capture:{moved_on}", "capture_sent", held_for=LONG_AGO)
    _key(shop, "fulfill:not-ours", "started", held_for=LONG_AGO)

    assert _found(shop) == []
