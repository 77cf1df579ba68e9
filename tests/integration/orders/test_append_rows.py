"""db.session.append_rows: new rows as an INSERT would add them, by COPY on PostgreSQL (the
intake of a page writes its new orders' lines and timeline rows so), on both databases."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, StatementError

from db.base import table
from db.models import OrderEvent, OrderLine
from db.session import append_rows
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
