"""db.session.append_rows: new rows as an INSERT would add them, by COPY on PostgreSQL (the
intake of a page writes its new orders' lines and timeline rows so); insert_new_rows: rows
inserted unless their key exists, as INSERT … ON CONFLICT DO NOTHING RETURNING (by COPY into a
staging table on PostgreSQL: the intake of a page writes its orders so); on both databases."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, StatementError

import db.session
from db.base import table, utcnow
from db.models import Order, OrderEvent, OrderLine
from db.session import append_rows, insert_new_rows
from tests.support.shop import Shop
from workflows.base import is_retryable

AT = dt.datetime(2026, 12, 7, 5, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def _line(order_id: int, external_id: str, **values: object) -> dict[str, object]:
    return {"order_id": order_id, "external_id": external_id, "sku": None,
            "title": "Mug \u2028 \"blue\"\t\\ é", "quantity": 3, "unit_price": Decimal("12.345"),
            "discount": Decimal(0), "tax": Decimal("-0.5"), "total": 7, **values}  # fmt: skip


def test_appended_rows_read_back_as_given_with_each_columns_conversion(shop: Shop) -> None:
    order_id = shop.order(lines={})
    with shop.transaction() as session:
        append_rows(session, table(OrderLine), [_line(order_id, "a"), _line(order_id, "b")])
        append_rows(session, table(OrderEvent), [{
            "order_id": order_id, "at": AT, "actor": "full:shopify", "kind": "received",
            "from_state": None, "to_state": "new",
            "detail": {"external_updated_at": AT.isoformat(), "note": "tab\there, 'q' \\N"},
        }])  # fmt: skip

    lines = shop.rows(OrderLine, order_id=order_id)
    assert [(x.external_id, x.sku, x.title, x.quantity) for x in lines] == [
        ("a", None, "Mug \u2028 \"blue\"\t\\ é", 3), ("b", None, "Mug \u2028 \"blue\"\t\\ é", 3)
    ]
    assert [(x.unit_price, x.discount, x.tax, x.total) for x in lines] == [
        (Decimal("12.3450"), Decimal(0), Decimal("-0.5000"), Decimal("7.0000"))
    ] * 2
    [event] = shop.events(order_id, "received")
    assert event.at == AT and event.at.tzinfo is not None  # stored in UTC, the same instant
    assert (event.actor, event.from_state, event.to_state) == ("full:shopify", None, "new")
    assert event.detail == {"external_updated_at": AT.isoformat(), "note": "tab\there, 'q' \\N"}


def test_a_float_amount_and_a_naive_time_are_refused_as_an_insert_refuses_them(
    shop: Shop,
) -> None:
    order_id = shop.order(lines={})
    naive = {"order_id": order_id, "at": dt.datetime(2026, 12, 7), "actor": "t", "kind": "k",
             "from_state": None, "to_state": None, "detail": {}}  # fmt: skip
    for model, row, error in (
        (OrderLine, _line(order_id, "a", total=7.0), "never float"),
        (OrderEvent, naive, "naive datetime refused"),
    ):
        with pytest.raises((TypeError, ValueError, StatementError), match=error):
            with shop.transaction() as session:
                append_rows(session, table(model), [row])
    assert shop.rows(OrderLine, order_id=order_id) == []


def test_appended_rows_are_part_of_the_transaction_and_leave_with_its_rollback(shop: Shop) -> None:
    order_id = shop.order(lines={})

    class Abort(Exception):
        pass

    with pytest.raises(Abort), shop.transaction() as session:
        append_rows(session, table(OrderLine), [_line(order_id, "a")])
        assert len(session.scalars(select(OrderLine.id).filter_by(order_id=order_id)).all()) == 1
        raise Abort

    assert shop.rows(OrderLine, order_id=order_id) == []
    with shop.transaction() as session:
        append_rows(session, table(OrderLine), [])  # nothing to append: no statement
    assert shop.rows(OrderLine, order_id=order_id) == []


def test_a_row_of_no_order_fails_with_sqlalchemys_integrity_error_as_an_insert_does(
    shop: Shop,
) -> None:
    with pytest.raises(IntegrityError), shop.transaction() as session:
        append_rows(session, table(OrderLine), [_line(10_000, "a")])


def _order(shop: Shop, external_id: str, total: str = "20") -> dict[str, object]:
    now = utcnow()
    return {"channel_account_id": shop.account.id, "channel": "shopify",
            "external_id": external_id, "state": "new", "currency": "EUR",
            "subtotal": Decimal(total), "tax_total": Decimal(0), "shipping_total": Decimal(0),
            "discount_total": Decimal(0), "total": Decimal(total), "raw": {"id": external_id},
            "payment_collected_by_marketplace": False, "fulfilled_by_marketplace": False,
            "version": 1, "attempts": 0, "created_at": now, "updated_at": now,
            "external_updated_at": now}  # fmt: skip


_KEY = ("channel_account_id", "external_id")


def test_new_rows_go_in_in_key_order_and_a_row_whose_key_exists_is_left_and_not_returned(
    shop: Shop, new_rows_path: str
) -> None:
    held = shop.order()  # ext-1, total 20.00
    with shop.transaction() as session:
        first = insert_new_rows(
            session, table(Order),
            [_order(shop, "ext-3"), _order(shop, "ext-1", "99"), _order(shop, "ext-2")],
            key=_KEY, returning=("id", "external_id"),
        )  # fmt: skip
        # again in the same transaction: what the first call staged is not staged again
        second = insert_new_rows(session, table(Order), [_order(shop, "ext-4")],
                                 key=_KEY, returning=("external_id",))  # fmt: skip

    made = sorted((row.external_id, row.id) for row in first)
    assert [external_id for external_id, _ in made] == ["ext-2", "ext-3"]
    assert made[0][1] < made[1][1]  # written in the key's order (the row locks' order)
    assert [row.external_id for row in second] == ["ext-4"]
    orders = {o.external_id: o for o in shop.rows(Order)}
    assert sorted(orders) == ["ext-1", "ext-2", "ext-3", "ext-4"]
    assert orders["ext-1"].id == held and orders["ext-1"].total == Decimal(20)  # left as held
    assert orders["ext-3"].version == 1
    with shop.transaction() as session:
        assert session.scalar(select(Order.raw).filter_by(external_id="ext-3")) == {"id": "ext-3"}
    with shop.transaction() as session:
        assert insert_new_rows(session, table(Order), [], key=_KEY, returning=("id",)) == []


def test_new_rows_of_no_account_fail_with_an_integrity_error_and_a_float_is_refused(
    shop: Shop, new_rows_path: str
) -> None:
    with pytest.raises(IntegrityError), shop.transaction() as session:
        insert_new_rows(session, table(Order), [{**_order(shop, "x"), "channel_account_id": 99}],
                        key=_KEY, returning=("id",))  # fmt: skip
    with pytest.raises((TypeError, ValueError, StatementError), match="never float"):
        with shop.transaction() as session:
            insert_new_rows(session, table(Order), [_order(shop, "y") | {"total": 20.0}],
                            key=_KEY, returning=("id",))  # fmt: skip
    assert shop.rows(Order) == []


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_staging_table_is_made_again_after_the_transaction_that_made_it_rolled_back(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db.session, "STAGE_FROM_ROWS", 1)  # one row staged
    class Abort(Exception):
        pass

    with pytest.raises(Abort), shop.transaction() as session:  # the first use: made here
        pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        insert_new_rows(session, table(Order), [_order(shop, "ext-1")], key=_KEY,
                        returning=("id",))  # fmt: skip
        raise Abort  # and taken away with the rollback

    with shop.transaction() as session:  # the same connection, back from the pool
        assert session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() == pid
        [row] = insert_new_rows(session, table(Order), [_order(shop, "ext-1")], key=_KEY,
                                returning=("external_id",))  # fmt: skip
        staged = session.execute(sa.text(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'stage_orders_%' "
            "AND relpersistence = 't'"
        )).scalar_one()  # fmt: skip
    assert row.external_id == "ext-1" and staged >= 1
    assert [o.external_id for o in shop.rows(Order)] == ["ext-1"]


def test_rows_without_a_column_whose_default_is_pythons_are_refused_on_postgresql(
    shop: Shop,
) -> None:
    # COPY applies the database's defaults only: `title` (default "") would be NULL there
    order_id = shop.order(lines={})
    line = {k: v for k, v in _line(order_id, "a").items() if k != "title"}
    with shop.transaction() as session:
        if session.get_bind().dialect.name != "postgresql":
            append_rows(session, table(OrderLine), [line])  # SQLAlchemy applies it
            return
    with pytest.raises(ValueError, match="without title"), shop.transaction() as session:
        append_rows(session, table(OrderLine), [line])


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_connection_the_server_killed_fails_retryably_invalidated_and_the_next_one_works(
    shop: Shop, migrated_url: str
) -> None:
    order_id = shop.order(lines={})
    admin = sa.create_engine(migrated_url, isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(sa.exc.DBAPIError) as failed, shop.transaction() as session:
            pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            with admin.connect() as conn:  # a restart, a failover
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            append_rows(session, table(OrderLine), [_line(order_id, "a")])
        assert failed.value.connection_invalidated and is_retryable(failed.value)
        with shop.transaction() as session:  # the retry, on a new connection
            append_rows(session, table(OrderLine), [_line(order_id, "a")])
        assert [x.external_id for x in shop.rows(OrderLine, order_id=order_id)] == ["a"]
    finally:
        admin.dispose()
