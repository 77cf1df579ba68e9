"""orders.retention.purge: buyer personal data past retention goes, and nothing an invariant
needs (inbox dedupe keys, orders, money, invoices, unfinished idempotency keys)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import update
from sqlalchemy.orm import undefer

from db.base import utcnow
from db.models import ChannelAccount, IdempotencyKey, InboxEvent, Invoice, Label, Order, Shipment
from db.session import dialect_insert
from domain.states import InboxStatus, OrderState
from orders.retention import purge
from tests.support.shop import Shop

S = OrderState
NOW = utcnow()
OLD = NOW - dt.timedelta(days=120)
RECENT = NOW - dt.timedelta(days=10)


def _aged(shop: Shop, order_id: int, when: dt.datetime) -> None:
    with shop.transaction() as session:  # a Core UPDATE: the ORM would stamp updated_at = now
        session.execute(update(Order).where(Order.id == order_id).values(updated_at=when))


def _inbox(shop: Shop, key: str, status: InboxStatus, when: dt.datetime) -> None:
    with shop.transaction() as session:
        session.add(InboxEvent(channel_account_id=shop.account.id, channel="shopify",
                               topic="orders/create", dedupe_key=key, body=b'{"name": "Jane"}',
                               status=status.value, received_at=when))  # fmt: skip


def _key(shop: Shop, key: str, point: str, when: dt.datetime) -> None:
    with shop.transaction() as session:
        session.add(IdempotencyKey(key=key, request_hash="h", recovery_point=point,
                                   created_at=when))  # fmt: skip


def _label(shop: Shop, order_id: int) -> None:
    with shop.transaction() as session:
        shipment = Shipment(order_id=order_id, carrier="ups", tracking_number=f"1Z{order_id}")
        session.add(shipment)
        session.flush()
        session.add(
            Label(
                shipment_id=shipment.id,
                carrier="ups",
                tracking_number=f"1Z{order_id}",
                idempotency_key=f"label:{order_id}",
                pdf=b"%PDF Jane, 2 High St",
            )
        )
        session.add(Invoice(order_id=order_id, series="INV", number=order_id,
                            source_key=f"invoice:{order_id}:1",
                            full_number=f"INV-{order_id}", total=Decimal(20), currency="EUR",
                            pdf=b"%PDF invoice"))  # fmt: skip


def _purge(shop: Shop, *, dry_run: bool = False) -> dict[str, int]:
    with shop.transaction() as session:
        return purge(session, now=NOW, personal_data_days=90, idempotency_days=30,
                     dry_run=dry_run).as_dict()  # fmt: skip


def test_personal_data_past_retention_goes_and_what_the_invariants_need_stays(shop: Shop) -> None:
    # given: long-done orders, a recent one, an old one still in the pipeline, one needing staff
    shipped = shop.order(S.SHIPPED, buyer_name="Jane Buyer", buyer_email="jane@example.com",
                         raw={"customer": {"first_name": "Jane"}})  # fmt: skip
    cancelled = shop.order(S.CANCELLED, buyer_name="Jo Buyer")
    recent = shop.order(S.SHIPPED, buyer_name="Recent Buyer")
    in_flight = shop.order(S.READY_TO_SHIP, buyer_name="Waiting Buyer")
    stuck = shop.order(S.NEEDS_ATTENTION, buyer_name="Stuck Buyer")
    _label(shop, shipped)
    for order_id in (shipped, cancelled, in_flight, stuck):
        _aged(shop, order_id, OLD)
    _aged(shop, recent, RECENT)
    _inbox(shop, "old-processed", InboxStatus.PROCESSED, OLD)
    _inbox(shop, "old-failed", InboxStatus.FAILED, OLD)
    _inbox(shop, "old-unprocessed", InboxStatus.RECEIVED, OLD)  # the sweeper still needs it
    _inbox(shop, "recent", InboxStatus.PROCESSED, RECENT)
    _key(shop, "capture:1", "finished", OLD)
    _key(shop, "refund:2", "rejected", OLD)
    _key(shop, "label:3", "label_requested", OLD)  # unfinished: the sweeper resolves it
    _key(shop, "capture:4", "finished", RECENT)

    # when: a dry run, then the purge, then another one
    counted = _purge(shop, dry_run=True)
    removed = _purge(shop)
    again = _purge(shop)

    # then the dry run counted exactly what went, and a second purge finds nothing left
    expected = {"inbox_bodies": 2, "orders": 2, "label_pdfs": 1, "idempotency_keys": 2}
    assert counted == removed == expected
    assert again == dict.fromkeys(expected, 0)

    done = shop.get(shipped)
    with shop.maker() as session:
        raw = session.get(Order, shipped, options=[undefer(Order.raw)])
        assert raw is not None and raw.raw == {}
    assert (done.buyer_name, done.buyer_email) == (None, None)
    assert done.shipping_address == {"postal_code": "LS1 1AA", "country_code": "GB"}
    assert (done.total, done.state) == (Decimal(20), S.SHIPPED)
    assert shop.get(cancelled).buyer_name is None
    for kept in (recent, in_flight, stuck):
        assert shop.get(kept).buyer_name is not None
    [label] = shop.rows(Label)
    assert (label.pdf, label.tracking_number) == (b"", f"1Z{shipped}")
    [invoice] = shop.rows(Invoice)
    assert invoice.pdf == b"%PDF invoice"  # the law keeps invoices, not us
    bodies = {e.dedupe_key: e.body for e in shop.rows(InboxEvent)}
    assert bodies == {
        "old-processed": b"",
        "old-failed": b"",
        "old-unprocessed": b'{"name": "Jane"}',
        "recent": b'{"name": "Jane"}',
    }
    assert sorted(k.key for k in shop.rows(IdempotencyKey)) == ["capture:4", "label:3"]


def test_a_redelivery_of_a_purged_webhook_is_still_absorbed_by_its_dedupe_key(shop: Shop) -> None:
    _inbox(shop, "webhook-1", InboxStatus.PROCESSED, OLD)
    _purge(shop)

    with shop.transaction() as session:
        inserted = session.execute(
            dialect_insert(session)(InboxEvent)
            .values(channel_account_id=shop.account.id, channel="shopify", topic="orders/create",
                    dedupe_key="webhook-1", body=b"{}", status=InboxStatus.RECEIVED.value)
            .on_conflict_do_nothing(index_elements=["channel_account_id", "dedupe_key"])
            .returning(InboxEvent.id)
        ).scalar_one_or_none()  # fmt: skip

    assert inserted is None
    assert [e.body for e in shop.rows(InboxEvent)] == [b""]
    assert shop.rows(ChannelAccount)[0].name == "shop"
