"""An edit on the marketplace after the label (SQLite and PostgreSQL): a parcel whose address
or lines changed is voided once at the carrier and labelled again under a new key; an edit
that moves no parcel voids nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import update

from db.base import utcnow
from db.models import IdempotencyKey, Label, Shipment, ShipmentLine
from domain.canonical import Address, CanonicalOrder
from domain.errors import RetryableError
from domain.parcel import Parcel
from domain.states import OrderState
from orders.fulfilment import buy_label, void_labels
from orders.intake import IntakeResult, apply_order
from tests.integration.orders.test_edits_and_refunds import _canonical, _documented, _stock
from tests.support.shop import FakeCarrier, Shop
from workflows.tasks import after_intake

S = OrderState
HOME = Address(name="Zoë Buyer", line1="2 High Street", city="Leeds", postal_code="LS1 1AA",
               country_code="GB")  # fmt: skip
MOVED = HOME.model_copy(update={"line1": "9 Low Road", "postal_code": "LS2 2BB"})


def _order(lines: dict[str, tuple[str, int]], *, minutes: int = 0, **fields: Any) -> CanonicalOrder:
    return _canonical(lines, minutes=minutes, **{"shipping_address": HOME, **fields})


def _labelled(shop: Shop, carrier: FakeCarrier) -> int:
    """A (A x1) order, invoiced and labelled, waiting to ship."""
    _stock(shop, A=5, B=5)
    order_id = _documented(shop, _order({"1": ("A", 1)}))
    shop.move(order_id, S.READY_TO_SHIP)
    assert buy_label(shop.transaction, order_id, lambda: carrier, shop.keys()).result == (
        "1Z00000001")  # fmt: skip
    return order_id


def _edit(shop: Shop, order: CanonicalOrder) -> IntakeResult:
    with shop.transaction() as session:
        return apply_order(session, shop.account.id, order, actor="webhook:shopify")


def _after_commit(shop: Shop, result: IntakeResult) -> list[tuple[str, list[Any]]]:
    """What the intake's follow-up publishes once its transaction commits."""
    with shop.maker() as session:
        after_intake(session, result)
        published = session.info.pop("ordersync.after_commit", [])
        session.rollback()
    return [(sig.task, list(sig.args)) for sig in published]


def _lines(shop: Shop, shipment_id: int) -> dict[str, int]:
    return {ln.line_external_id: ln.quantity
            for ln in shop.rows(ShipmentLine, shipment_id=shipment_id)}  # fmt: skip


def _settle(shop: Shop, order_id: int, carrier: FakeCarrier) -> None:
    """The follow-ups run, each twice (a redelivered task)."""
    for attempt in ("task-2", "task-3"):
        void_labels(shop.transaction, order_id, lambda: carrier, shop.keys())
        buy_label(shop.transaction, order_id, lambda: carrier, shop.keys(attempt))


def test_an_address_edited_after_the_label_voids_it_once_and_buys_one_new_label(
    shop: Shop,
) -> None:
    carrier = FakeCarrier()
    order_id = _labelled(shop, carrier)

    # when the buyer's address is edited on the marketplace (delivered twice)
    result = _edit(shop, _order({"1": ("A", 1)}, minutes=5, shipping_address=MOVED))
    again = _edit(shop, _order({"1": ("A", 1)}, minutes=5, shipping_address=MOVED))

    # then the old shipment is set aside in the edit's transaction, and after commit its
    # label is voided and the new shipment labelled
    assert (result.relabel, again.relabel) == (True, False)
    assert _after_commit(shop, result) == [
        ("ordersync.outbound.void_labels", [order_id]),
        ("ordersync.outbound.buy_label", [order_id]),
    ]
    old, new = shop.rows(Shipment, order_id=order_id)
    assert (old.status, new.status) == ("voided", "pending")
    assert _lines(shop, new.id) == {"1": 1}
    _settle(shop, order_id, carrier)

    assert carrier.voided == ["se-1"]  # once, though the void ran twice
    assert [b["key"] for b in carrier.bought] == [f"label:{order_id}",
                                                  f"label:{order_id}:s{new.id}"]  # fmt: skip
    assert carrier.bought[-1]["ship_to"] == MOVED
    old_label, new_label = shop.rows(Label)
    assert old_label.voided_at is not None and new_label.voided_at is None
    assert new_label.shipment_id == new.id
    (moved,) = shop.events(order_id, "relabelled")
    assert moved.detail == {"reason": "address changed", "voided": ["1Z00000001"],
                            "new_shipments": [new.id]}  # fmt: skip
    assert shop.get(order_id).state == S.READY_TO_SHIP


def test_lines_edited_after_the_label_rebuy_it_with_the_new_weight(shop: Shop) -> None:
    carrier = FakeCarrier()
    order_id = _labelled(shop, carrier)

    result = _edit(shop, _order({"1": ("A", 1), "2": ("B", 2)}, minutes=5))

    assert result.relabel
    _settle(shop, order_id, carrier)
    old, new = shop.rows(Shipment, order_id=order_id)
    assert (old.status, new.status) == ("voided", "labelled")
    assert _lines(shop, new.id) == {"1": 1, "2": 2}
    assert carrier.voided == ["se-1"]
    assert carrier.bought[-1]["parcel"] == Parcel(weight_grams=1200, length_cm=30, width_cm=20,
                                                  height_cm=10)  # fmt: skip
    assert shop.events(order_id, "relabelled")[0].detail["reason"] == "lines changed"


def test_an_edit_that_moves_no_parcel_voids_nothing(shop: Shop) -> None:
    carrier = FakeCarrier()
    order_id = _labelled(shop, carrier)

    # a new price for the same line, and a new e-mail: the parcel is the same
    repriced = _order({"1": ("A", 1)}, minutes=5, buyer_email="zoe@example.com")
    line = repriced.lines[0].model_copy(update={"unit_price": Decimal(8), "total": Decimal(8)})
    result = _edit(shop, repriced.model_copy(update={"lines": [line], "subtotal": Decimal(8),
                                                     "total": Decimal(8)}))  # fmt: skip

    assert not result.relabel
    assert _after_commit(shop, result) == []
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert shipment.status == "labelled"
    void_labels(shop.transaction, order_id, lambda: carrier, shop.keys())
    assert carrier.voided == [] and len(carrier.bought) == 1
    assert shop.events(order_id, "relabelled") == []
    assert shop.events(order_id, "edited")  # the edit itself is on the timeline


def test_a_shipment_not_labelled_yet_takes_the_edited_lines_in_place(shop: Shop) -> None:
    # given an order paid, its shipment made but its label not bought yet (A x1, B x2)
    _stock(shop, A=5, B=5)
    order_id = _documented(shop, _order({"1": ("A", 1), "2": ("B", 2)}))
    with shop.transaction() as session:
        shipment = Shipment(order_id=order_id, carrier="", status="pending")
        shipment.lines = [ShipmentLine(line_external_id="1", quantity=1),
                          ShipmentLine(line_external_id="2", quantity=2)]  # fmt: skip
        session.add(shipment)
        session.flush()
        shipment_id = shipment.id

    # when B goes to 3 and A is removed
    result = _edit(shop, _order({"2": ("B", 3)}, minutes=5))

    # then the same shipment carries the lines as they are now: nothing to void or re-buy
    assert not result.relabel
    (same,) = shop.rows(Shipment, order_id=order_id)
    assert (same.id, same.status) == (shipment_id, "pending")
    assert _lines(shop, shipment_id) == {"2": 3}
    (moved,) = shop.events(order_id, "relabelled")
    assert moved.detail == {"reason": "lines changed", "voided": [], "new_shipments": []}


def _lock_ran_out(shop: Shop, key: str) -> None:
    with shop.transaction() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == key)
                        .values(locked_at=utcnow() - dt.timedelta(minutes=5)))  # fmt: skip


def _cancelled_after_a_dead_purchase(shop: Shop) -> tuple[FakeCarrier, int, int]:
    """A label sold by the carrier to an attempt that died before recording it, and the order
    cancelled on the marketplace meanwhile: the carrier, the order id and the shipment id."""
    carrier = FakeCarrier()
    order_id, shipment_id = _label_attempt_died(shop, carrier, bought=True)
    shop.move(order_id, S.CANCELLED)
    return carrier, order_id, shipment_id


def _label_attempt_died(shop: Shop, carrier: FakeCarrier, *, bought: bool) -> tuple[int, int]:
    """An order (A x1) invoiced, its shipment made and its label key claimed by an attempt
    whose worker died in flight: after the carrier sold the label (``bought``), or before the
    request reached it. Its order id and shipment id."""
    from orders import idempotency

    _stock(shop, A=5, B=5)
    order_id = _documented(shop, _order({"1": ("A", 1)}))
    shop.move(order_id, S.READY_TO_SHIP)  # as _labelled: the label step runs in this state too
    with shop.transaction() as session:
        shipment = Shipment(order_id=order_id, carrier="", status="pending")
        shipment.lines = [ShipmentLine(line_external_id="1", quantity=1)]
        session.add(shipment)
        session.flush()
        shipment_id = shipment.id
        params = {"ship_to": HOME.model_dump(), "grams": 400}
        key = f"label:{order_id}"
        idempotency.claim(session, key, params, owner="task-dead", point="label_requested")
    _lock_ran_out(shop, key)  # the attempt is not alive
    if bought:
        from orders.fulfilment import parcel_for, ship_from

        carrier.buy_label(shipment_ref=f"order-{order_id}", ship_to=HOME, ship_from=ship_from(),
                          parcel=parcel_for(1), idempotency_key=f"label:{order_id}")  # fmt: skip
    return order_id, shipment_id


def test_an_edit_after_a_label_purchase_died_in_flight_voids_that_label_and_buys_the_new_parcel(
    shop: Shop,
) -> None:
    # given a label bought at the carrier for (A x1) by an attempt that died before recording
    carrier = FakeCarrier()
    order_id, shipment_id = _label_attempt_died(shop, carrier, bought=True)

    # when B x2 is added on the marketplace: the pending shipment takes it in place
    _edit(shop, _order({"1": ("A", 1), "2": ("B", 2)}, minutes=5))
    assert _lines(shop, shipment_id) == {"1": 1, "2": 2}

    # then the label step (run twice, a redelivery) voids the old parcel's label once,
    # retires its key and buys one label for the parcel as it is now, under a new key
    _settle(shop, order_id, carrier)
    assert carrier.voided == ["se-1"]
    assert [b["key"] for b in carrier.bought] == [f"label:{order_id}", f"label:{order_id}:2"]
    assert carrier.bought[-1]["parcel"].weight_grams == 1200
    (label,) = shop.rows(Label)
    assert (label.shipment_id, label.idempotency_key, label.voided_at) == (
        shipment_id, f"label:{order_id}:2", None)  # fmt: skip
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert shipment.status == "labelled" and shipment.tracking_number == "1Z00000002"
    (voided,) = shop.events(order_id, "label_voided")
    assert voided.detail["tracking_number"] == "1Z00000001"


def test_an_edit_after_a_label_request_died_before_the_carrier_buys_under_a_new_key(
    shop: Shop,
) -> None:
    carrier = FakeCarrier()
    order_id, shipment_id = _label_attempt_died(shop, carrier, bought=False)

    _edit(shop, _order({"1": ("A", 2)}, minutes=5))
    _settle(shop, order_id, carrier)

    # nothing to void: one label, for two units, under the next key
    assert carrier.voided == []
    assert [b["key"] for b in carrier.bought] == [f"label:{order_id}:2"]
    assert carrier.bought[0]["parcel"].weight_grams == 800
    assert shop.events(order_id, "label_voided") == []
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert (shipment.id, shipment.status) == (shipment_id, "labelled")


def test_a_label_attempt_still_in_flight_is_waited_for_not_superseded(shop: Shop) -> None:
    import pytest

    from orders import idempotency

    carrier = FakeCarrier()
    order_id, _ = _label_attempt_died(shop, carrier, bought=False)
    with shop.transaction() as session:  # the attempt is alive: its lock is fresh
        idempotency.claim(session, f"label:{order_id}", {"ship_to": HOME.model_dump(),
                          "grams": 400}, owner="task-dead", point="label_requested")  # fmt: skip
    _edit(shop, _order({"1": ("A", 2)}, minutes=5))

    with pytest.raises(idempotency.KeyLocked):
        buy_label(shop.transaction, order_id, lambda: carrier, shop.keys("task-2"))
    assert carrier.bought == [] and carrier.voided == []


def test_a_label_bought_as_its_order_was_cancelled_and_never_recorded_is_voided_once(
    shop: Shop,
) -> None:
    # given: a label sold by the carrier to an attempt that died before recording it, and
    # the order cancelled on the marketplace meanwhile (the label step skips it now)
    carrier, order_id, _ = _cancelled_after_a_dead_purchase(shop)
    assert buy_label(shop.transaction, order_id, lambda: carrier,
                     shop.keys("task-2")).result == "skip: cancelled"  # fmt: skip

    # when the voids run (twice: a redelivery, or the sweeper's for the unfinished key)
    first = void_labels(shop.transaction, order_id, lambda: carrier, shop.keys("task-3"))
    second = void_labels(shop.transaction, order_id, lambda: carrier, shop.keys("task-4"))

    # then the label is voided at the carrier once, its key retired, staff see it
    assert (first.result, second.result) == ("voided 1", "voided 0")
    assert carrier.voided == ["se-1"] and len(carrier.bought) == 1
    (key,) = shop.rows(IdempotencyKey, key=f"label:{order_id}")
    assert key.recovery_point == "rejected"
    (voided,) = shop.events(order_id, "label_voided")
    assert voided.detail == {"tracking_number": "1Z00000001",
                             "reason": "bought as the order was cancelled, never recorded"}


def test_a_label_request_that_never_reached_the_carrier_of_a_cancelled_order_only_retires_its_key(
    shop: Shop,
) -> None:
    carrier = FakeCarrier()
    order_id, _ = _label_attempt_died(shop, carrier, bought=False)
    shop.move(order_id, S.CANCELLED)

    assert void_labels(shop.transaction, order_id, lambda: carrier, shop.keys()).result == (
        "voided 0")  # fmt: skip
    assert carrier.voided == [] and carrier.bought == []
    (key,) = shop.rows(IdempotencyKey, key=f"label:{order_id}")
    assert key.recovery_point == "rejected" and shop.events(order_id, "label_voided") == []


def test_a_cancelled_orders_label_purchase_still_in_flight_is_waited_for(shop: Shop) -> None:
    import pytest

    from orders import idempotency

    carrier = FakeCarrier()
    order_id, _ = _label_attempt_died(shop, carrier, bought=True)
    with shop.transaction() as session:  # the attempt is alive: it will record its label
        idempotency.claim(session, f"label:{order_id}", {"ship_to": HOME.model_dump(),
                          "grams": 400}, owner="task-dead", point="label_requested")  # fmt: skip
    shop.move(order_id, S.CANCELLED)

    with pytest.raises(idempotency.KeyLocked) as waited:
        void_labels(shop.transaction, order_id, lambda: carrier, shop.keys("task-2"))
    # retried once the attempt's lock (90 s) has run out, not every 5 s until it gives up
    assert 80 < (waited.value.retry_after or 0) <= 91
    assert carrier.voided == []
    (key,) = shop.rows(IdempotencyKey, key=f"label:{order_id}")
    assert key.recovery_point == "label_requested"


class _StoppedCarrier(FakeCarrier):
    """A carrier call during which the calling worker was stopped past its key's lock: the
    world goes on (``meanwhile``, once) before the label is sold (``sold_first=False``: the
    request had not reached the carrier) or after it (the answer had not come back)."""

    def __init__(self, meanwhile: Callable[[], object], *, sold_first: bool) -> None:
        super().__init__()
        self.meanwhile: Callable[[], object] | None = meanwhile
        self.sold_first = sold_first

    def buy_label(self, **asked: Any) -> Any:
        if not self.sold_first:
            self._go_on()
        label = super().buy_label(**asked)
        self._go_on()
        return label

    def _go_on(self) -> None:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()


def _stopped_past_its_lock(shop: Shop, *, sold_first: bool) -> tuple[int, _StoppedCarrier]:
    """An order waiting for its label, and a carrier call during which its attempt's lock ran
    out, the order was cancelled on the marketplace and its labels voided by another task."""
    _stock(shop, A=5, B=5)
    order_id = _documented(shop, _order({"1": ("A", 1)}))
    shop.move(order_id, S.READY_TO_SHIP)

    def meanwhile() -> None:
        _lock_ran_out(shop, f"label:{order_id}")
        shop.move(order_id, S.CANCELLED)
        void_labels(shop.transaction, order_id, lambda: carrier, shop.keys("task-void"))

    carrier = _StoppedCarrier(meanwhile, sold_first=sold_first)
    return order_id, carrier


def test_an_attempt_that_outlived_its_lock_does_not_record_the_label_voided_meanwhile(
    shop: Shop,
) -> None:
    # given: the label sold, then the attempt stopped; meanwhile its key was taken for dead,
    # the label found by our reference and voided, the key retired
    order_id, carrier = _stopped_past_its_lock(shop, sold_first=True)

    # when the stopped attempt wakes up and goes on to record its label
    outcome = buy_label(shop.transaction, order_id, lambda: carrier, shop.keys("task-zombie"))

    # then nothing is recorded as a label of the cancelled order; the label is voided (the
    # repeated void is the carrier's no-op) and staff see one void
    assert outcome.result == "already recorded"
    assert shop.rows(Label) == []
    assert carrier.voided == ["se-1", "se-1"]
    (voided,) = shop.events(order_id, "label_voided")
    assert voided.detail["reason"] == "bought as the order was cancelled, never recorded"
    (key,) = shop.rows(IdempotencyKey, key=f"label:{order_id}")
    assert key.recovery_point == "rejected"


def test_a_label_bought_after_its_key_was_retired_is_voided_not_recorded(shop: Shop) -> None:
    # given: the attempt stopped before its request reached the carrier; meanwhile the void
    # found nothing to void and retired the key
    order_id, carrier = _stopped_past_its_lock(shop, sold_first=False)

    # when it wakes up: the carrier sells it a label
    buy_label(shop.transaction, order_id, lambda: carrier, shop.keys("task-zombie"))

    # then that label is voided at once, never recorded, and staff see why
    assert len(carrier.bought) == 1 and carrier.voided == ["se-1"]
    assert shop.rows(Label) == []
    (voided,) = shop.events(order_id, "label_voided")
    assert voided.detail == {"tracking_number": "1Z00000001", "reason": (
        "bought by an attempt that outlived its lock after its key was retired, never recorded")}


def test_a_label_recorded_while_its_purchase_was_being_voided_is_recorded_voided(
    shop: Shop,
) -> None:
    import pytest

    from orders.fulfilment import _record_label
    from orders.idempotency import locked_point

    # given: an attempt taken for dead whose label the carrier sold, the order cancelled
    carrier, order_id, shipment_id = _cancelled_after_a_dead_purchase(shop)
    key, label = f"label:{order_id}", carrier.labels[f"label:{order_id}"]

    # when the void at the carrier is under way, the attempt wakes and records its label
    def void_label(label_id: str) -> bool:
        with shop.transaction() as session:
            assert locked_point(session, key) == "label_requested"
            _record_label(session, order_id, shipment_id, key, label, "task-dead", None)
        return FakeCarrier.void_label(carrier, label_id)

    carrier.void_label = void_label  # type: ignore[method-assign]
    with pytest.raises(RetryableError):
        void_labels(shop.transaction, order_id, lambda: carrier, shop.keys("task-void"))
    again = void_labels(shop.transaction, order_id, lambda: carrier, shop.keys("task-void"))

    # then the recorded label is recorded as voided (it is, at the carrier), voided once
    assert again.result == "voided 0" and carrier.voided == ["se-1"]
    (row,) = shop.rows(Label)
    assert row.voided_at is not None
    (shipment,) = shop.rows(Shipment, order_id=order_id)
    assert shipment.status == "voided"
    assert len(shop.events(order_id, "label_voided")) == 1
