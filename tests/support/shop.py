"""A shop in a real database for the step services of ``orders/``, and fakes of the outside
world they call: a payment provider and a carrier that keep a ledger by idempotency key (a
repeated key is replayed, as the real ones do), a marketplace that records fulfilment pushes,
and a recorder of the follow-ups a step schedules. No HTTP, no Celery, no Redis.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from db.base import Base, utcnow
from db.models import ChannelAccount, IdempotencyKey, Order, OrderEvent, OrderLine, Payment
from db.session import make_engine
from domain.canonical import Address
from domain.errors import AuthorizationUnusable
from domain.parcel import Parcel
from domain.states import OrderState
from integrations.carriers.payloads import PurchasedLabel
from integrations.payments.payloads import Capture, Refund
from orders import idempotency
from orders.outbox import Effect
from orders.steps import FollowUp
from orders.transitions import load_for_update, transition
from workflows.base import describe

__all__ = [
    "FakeCarrier",
    "FakeMarketplace",
    "FakePayments",
    "FollowUps",
    "Shop",
    "WorkerKilled",
    "never_built",
]

M = TypeVar("M", bound=Base)
R = TypeVar("R")
ADDRESS = {"name": "Jane Buyer", "line1": "2 High Street", "city": "Leeds",
           "postal_code": "LS1 1AA", "country_code": "GB"}  # fmt: skip


class WorkerKilled(BaseException):
    """The worker died mid-step (SIGKILL): nothing of ours runs after it, not even ``except
    Exception`` handlers; the redelivered task (same task id) picks the step up."""


class Shop:
    """One merchant account in a migrated database, with orders made to order."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.maker = sessionmaker(bind=self.engine, expire_on_commit=False)
        with self.transaction() as session:
            self.account = ChannelAccount(name="shop", channel="shopify",
                                          api_base_url="http://shop.test")  # fmt: skip
            session.add(self.account)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.maker() as session, session.begin():
            yield session

    def keys(self, owner: str = "task-1") -> idempotency.Claimant:
        """The idempotency ``Claimant`` of one task run (``owner``: its task id)."""
        return idempotency.Claimant(self.transaction, owner, dt.timedelta(seconds=90), describe)

    def order(
        self,
        state: OrderState = OrderState.RESERVED,
        *,
        lines: dict[str, int] | None = None,
        account: ChannelAccount | None = None,
        **fields: Any,
    ) -> int:
        """An order in ``state`` with ``lines`` (sku → quantity) at 10.00 a unit."""
        lines = {"SKU-1": 2} if lines is None else lines
        total = Decimal(10) * sum(lines.values())
        with self.transaction() as session:
            values: dict[str, Any] = {
                "channel": "shopify", "state": state, "currency": "EUR", "subtotal": total,
                "tax_total": Decimal(0), "shipping_total": Decimal(0),
                "discount_total": Decimal(0), "total": total, "shipping_address": ADDRESS,
                "external_updated_at": utcnow(), "raw": {},
            }  # fmt: skip
            values.update(fields)
            count = len(session.scalars(select(Order.id)).all())
            order = Order(channel_account_id=(account or self.account).id,
                          external_id=f"ext-{count + 1}", **values)  # fmt: skip
            session.add(order)
            session.flush()
            for i, (sku, quantity) in enumerate(lines.items()):
                session.add(OrderLine(order_id=order.id, external_id=str(i), sku=sku,
                                      quantity=quantity, unit_price=Decimal(10), tax=Decimal(0),
                                      total=Decimal(10) * quantity))  # fmt: skip
            return order.id

    def move(self, order_id: int, to: OrderState) -> None:
        """Another actor moves the order (e.g. the marketplace cancels it)."""
        with self.transaction() as session:
            transition(session, load_for_update(session, order_id), to, actor="test")

    def update(self, order_id: int, **fields: Any) -> None:
        with self.transaction() as session:
            order = load_for_update(session, order_id)
            for name, value in fields.items():
                setattr(order, name, value)

    def get(self, order_id: int) -> Order:
        with self.maker() as session:
            order = session.get(Order, order_id)
            assert order is not None
            return order

    def rows(self, model: type[M], **where: Any) -> list[M]:
        with self.maker() as session:
            query = select(model).filter_by(**where).order_by(*inspect(model).primary_key)
            return list(session.scalars(query).all())

    def key(self, key: str) -> IdempotencyKey | None:
        found = self.rows(IdempotencyKey, key=key)
        return found[0] if found else None

    def events(self, order_id: int, kind: str | None = None) -> list[OrderEvent]:
        found = self.rows(OrderEvent, order_id=order_id)
        return [e for e in found if kind is None or e.kind == kind]

    def captured(self, order_id: int, external_id: str = "pi_1") -> Payment:
        """A payment we captured (the provider's ``external_id``) for the order."""
        order = self.get(order_id)
        with self.transaction() as session:
            payment = Payment(order_id=order_id, provider="payments", amount=order.total,
                              currency=order.currency, status="succeeded",
                              external_id=external_id, idempotency_key=f"capture:{order_id}",
                              captured_at=utcnow())  # fmt: skip
            session.add(payment)
        return payment


def never_built(*_: object) -> Any:
    """A client factory for a step that must call nobody: building the client fails the test."""
    raise AssertionError("the step built a client it did not need")


@dataclasses.dataclass
class FakePayments:
    """A payment provider: one charge (refund) per idempotency key, replayed on a repeat.

    ``during_call`` runs inside the call (e.g. the order is cancelled meanwhile); ``lose_answer``
    is raised once after the call was applied (the answer never arrives, or the worker dies)."""

    captures: dict[str, Capture] = dataclasses.field(default_factory=dict)
    refunds: dict[str, Refund] = dataclasses.field(default_factory=dict)
    calls: list[str] = dataclasses.field(default_factory=list)
    during_call: Callable[[], None] | None = None
    lose_answer: BaseException | None = None
    refuse: Exception | None = None
    #: authorization id → why it cannot be captured (expired, voided, partial)
    unusable: dict[str, str] = dataclasses.field(default_factory=dict)

    def _answer(self, key: str) -> None:
        self.calls.append(key)
        if self.during_call is not None:
            self.during_call()
        if self.refuse is not None:
            raise self.refuse

    def _deliver(self, result: R) -> R:
        if self.lose_answer is not None:
            lost, self.lose_answer = self.lose_answer, None
            raise lost
        return result

    name = "payments"

    def capture_authorization(
        self, *, order_external_id: str, authorization_id: str | None, amount: Decimal,
        currency: str, idempotency_key: str,
    ) -> Capture:  # fmt: skip
        """Capture the authorization once per key (a repeat replays); one authorization is
        captured at most once whatever the key (a second key answers the first capture)."""
        self._answer(idempotency_key)
        if authorization_id in self.unusable:
            raise AuthorizationUnusable(self.unusable[authorization_id])
        replayed = idempotency_key in self.captures
        if not replayed:
            self.captures[idempotency_key] = Capture(
                id=authorization_id or f"pi_{len(self.captures) + 1}", status="succeeded",
                amount=amount, currency=currency, order_ref=order_external_id,
            )  # fmt: skip
        return self._deliver(dataclasses.replace(self.captures[idempotency_key], replayed=replayed))

    def find_capture(
        self, *, order_external_id: str, authorization_id: str | None
    ) -> Capture | None:
        """The capture of ``authorization_id``, as retrieving the intent finds it."""
        self.calls.append(f"find:{authorization_id}")
        found = [c for c in self.captures.values() if c.id == authorization_id]
        return found[0] if found else None

    def refund(
        self,
        *,
        payment_intent: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        order_ref: str | None = None,
        reason: str | None = None,
    ) -> Refund:
        self._answer(idempotency_key)
        replayed = idempotency_key in self.refunds
        if not replayed:
            self.refunds[idempotency_key] = Refund(
                id=f"re_{len(self.refunds) + 1}", payment_intent=payment_intent, amount=amount,
                currency=currency, status="succeeded",
            )  # fmt: skip
        return self._deliver(dataclasses.replace(self.refunds[idempotency_key], replayed=replayed))


@dataclasses.dataclass
class FakeCarrier:
    """A carrier: one label per idempotency key; ``bought`` has what each call asked for,
    ``voided`` the labels voided (in order, repeats included)."""

    labels: dict[str, PurchasedLabel] = dataclasses.field(default_factory=dict)
    bought: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    voided: list[str] = dataclasses.field(default_factory=list)

    def buy_label(
        self,
        *,
        shipment_ref: str,
        ship_to: Address,
        ship_from: Address,
        parcel: Parcel,
        idempotency_key: str,
    ) -> PurchasedLabel:
        self.bought.append({"key": idempotency_key, "ref": shipment_ref, "ship_to": ship_to,
                            "ship_from": ship_from, "parcel": parcel})  # fmt: skip
        if idempotency_key not in self.labels:
            number = len(self.labels) + 1
            self.labels[idempotency_key] = PurchasedLabel(
                label_id=f"se-{number}", carrier="ups", service="ups_ground",
                tracking_number=f"1Z{number:08d}", pdf=b"%PDF-1.4 label", replayed=False,
            )  # fmt: skip
        return self.labels[idempotency_key]

    def void_label(self, label_id: str) -> bool:
        self.voided.append(label_id)
        return True

    def get_label_by_ref(self, shipment_ref: str) -> PurchasedLabel | None:
        """The newest label bought for ``shipment_ref`` that is not voided."""
        for asked in reversed(self.bought):
            label = self.labels[asked["key"]]
            if asked["ref"] == shipment_ref and label.label_id not in self.voided:
                return label
        return None


@dataclasses.dataclass
class FakeMarketplace:
    """Records every effect (fulfilment, cancellation) pushed to it; ``fail`` is raised (once)
    instead; ``apply_then_fail`` applies the push and then raises (an answer lost on the way
    back), and a push repeated under a key it applied is not applied twice, as the connectors
    make sure by checking first."""

    pushed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    fail: Exception | None = None
    apply_then_fail: Exception | None = None
    #: a cancellation gives the buyer back what the marketplace collected (Shopify, eBay)
    refunds_on_cancel: bool = False

    def __call__(self, account: ChannelAccount, effect: Effect) -> bool:
        if self.fail is not None:
            failure, self.fail = self.fail, None
            raise failure
        if all(p["key"] != effect.idempotency_key for p in self.pushed):
            self.pushed.append({"account": account.name, "order": effect.external_id,
                                "kind": effect.kind, "key": effect.idempotency_key,
                                **effect.payload})  # fmt: skip
        if self.apply_then_fail is not None:
            failure, self.apply_then_fail = self.apply_then_fail, None
            raise failure
        return self.refunds_on_cancel and effect.kind == "cancellation"


class FollowUps:
    """Records the follow-ups a step schedules: ``later("refund")`` is a ``FollowUp`` that
    appends its order id to ``later.scheduled["refund"]``."""

    def __init__(self) -> None:
        self.scheduled: dict[str, list[int]] = {}

    def __call__(self, name: str) -> FollowUp:
        def schedule(session: Session, order_id: int) -> None:
            assert session.in_transaction()  # scheduled inside the transaction that needs it
            self.scheduled.setdefault(name, []).append(order_id)

        return schedule
