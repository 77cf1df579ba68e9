"""Stock reservations and idempotency keys under real concurrency, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.models import ChannelAccount, IdempotencyKey, Order, OrderLine, StockItem, StockReservation
from db.session import make_engine
from domain.states import OrderState
from orders import idempotency, stock
from orders.transitions import IllegalTransition, StaleOrder, load_for_update, transition


def _maker(url: str) -> sessionmaker[Session]:
    options = {} if url.startswith("sqlite") else {"pool_size": 30}
    return sessionmaker(bind=make_engine(url, **options), expire_on_commit=False)


def _orders(maker: sessionmaker[Session], lines: list[dict[str, int]]) -> list[int]:
    with maker() as session, session.begin():
        account = ChannelAccount(name="a", channel="shopify")
        session.add(account)
        session.flush()
        ids = []
        for i, skus in enumerate(lines):
            order = Order(channel_account_id=account.id, channel="shopify", external_id=f"o{i}",
                          currency="USD", subtotal=Decimal(1), tax_total=Decimal(0),
                          shipping_total=Decimal(0), discount_total=Decimal(0), total=Decimal(1),
                          external_updated_at=utcnow(), raw={})  # fmt: skip
            session.add(order)
            session.flush()
            for j, (sku, qty) in enumerate(skus.items()):
                price = {"unit_price": Decimal(1), "tax": Decimal(0), "total": Decimal(qty)}
                line = OrderLine(
                    order_id=order.id, external_id=str(j), sku=sku, quantity=qty, **price
                )
                session.add(line)
            ids.append(order.id)
        return ids


def _concurrently(n: int, fn: Any) -> list[Any]:
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_two_orders_competing_for_the_last_unit_one_reserves_one_is_short(
    migrated_url: str,
) -> None:
    maker = _maker(migrated_url)
    first, second = _orders(maker, [{"LAST": 1}, {"LAST": 1}])
    with maker() as session, session.begin():
        stock.set_on_hand(session, "LAST", 1)

    def attempt(i: int) -> bool:
        with maker() as session, session.begin():
            return stock.reserve(session, (first, second)[i]).ok

    results = _concurrently(2, attempt)

    assert sorted(results) == [False, True]
    with maker() as session:
        item = session.get(StockItem, "LAST")
        assert item is not None and (item.on_hand, item.reserved) == (1, 1)
        assert len(session.scalars(select(StockReservation)).all()) == 1


def test_many_orders_never_oversell_and_a_short_order_reserves_nothing(migrated_url: str) -> None:
    # 24 orders each want 1 A + 1 B; there are 10 A and 30 B: exactly 10 orders get both,
    # the others get neither (no B held for an order that could not get its A)
    maker = _maker(migrated_url)
    ids = _orders(maker, [{"A": 1, "B": 1}] * 24)
    with maker() as session, session.begin():
        stock.set_on_hand(session, "A", 10)
        stock.set_on_hand(session, "B", 30)

    def attempt(i: int) -> bool:
        with maker() as session, session.begin():
            return stock.reserve(session, ids[i]).ok

    results = _concurrently(24, attempt)

    assert results.count(True) == 10
    with maker() as session:
        a, b = session.get(StockItem, "A"), session.get(StockItem, "B")
        assert a is not None and b is not None
        assert (a.reserved, b.reserved) == (10, 10)


def test_release_gives_units_back_and_consume_takes_them_off_the_shelf(migrated_url: str) -> None:
    maker = _maker(migrated_url)
    cancelled, shipped = _orders(maker, [{"X": 2}, {"X": 3}])
    with maker() as session, session.begin():
        stock.set_on_hand(session, "X", 5)
        assert stock.reserve(session, cancelled).ok and stock.reserve(session, shipped).ok
    with maker() as session, session.begin():
        assert stock.release(session, cancelled) == 1
        assert stock.release(session, cancelled) == 0  # twice is once
        assert stock.consume(session, shipped) == 1
    with maker() as session:
        item = session.get(StockItem, "X")
        assert item is not None and (item.on_hand, item.reserved) == (2, 0)


def test_on_hand_cannot_be_set_below_what_open_orders_hold(migrated_url: str) -> None:
    maker = _maker(migrated_url)
    (order,) = _orders(maker, [{"Y": 4}])
    with maker() as session, session.begin():
        stock.set_on_hand(session, "Y", 4)
        stock.reserve(session, order)
    with pytest.raises(ValueError, match="reserved"), maker() as session, session.begin():
        stock.set_on_hand(session, "Y", 3)


def test_an_idempotency_key_is_created_once_under_concurrency_and_replays_when_finished(
    migrated_url: str,
) -> None:
    maker = _maker(migrated_url)
    params = {"amount": "10.00", "currency": "EUR"}

    def begin(i: int) -> str:
        try:
            with maker() as session, session.begin():
                return idempotency.begin(session, "capture:1", params, owner=f"task-{i}").key
        except idempotency.KeyLocked:
            return "locked"

    outcomes = _concurrently(12, begin)

    assert outcomes.count("capture:1") == 1 and outcomes.count("locked") == 11
    with maker() as session, session.begin():
        idempotency.finish(session, "capture:1", {"id": "pi_1"})
    with maker() as session, session.begin():
        again = idempotency.begin(session, "capture:1", params, owner="task-99")
    assert again.finished and again.response == {"id": "pi_1"}
    with maker() as session:
        assert len(session.scalars(select(IdempotencyKey)).all()) == 1


def test_a_key_reused_for_another_request_is_refused(migrated_url: str) -> None:
    maker = _maker(migrated_url)
    with maker() as session, session.begin():
        idempotency.begin(session, "k", {"amount": "1"}, owner="a")
    with pytest.raises(idempotency.IdempotencyMismatch), maker() as session, session.begin():
        idempotency.begin(session, "k", {"amount": "2"}, owner="a")


def test_a_redelivered_attempt_resumes_its_own_key_and_a_dead_ones_key_after_the_timeout(
    migrated_url: str,
) -> None:
    maker = _maker(migrated_url)
    with maker() as session, session.begin():
        idempotency.begin(session, "k", {}, owner="task-a")
        idempotency.set_recovery_point(session, "k", "capture_sent")
    with maker() as session, session.begin():  # the same task id, redelivered after a crash
        assert idempotency.begin(session, "k", {}, owner="task-a").recovery_point == "capture_sent"
    with pytest.raises(idempotency.KeyLocked), maker() as session, session.begin():
        idempotency.begin(session, "k", {}, owner="task-b")
    with maker() as session, session.begin():
        taken = idempotency.begin(session, "k", {}, owner="task-b",
                                  lock_timeout=dt.timedelta(seconds=0))  # fmt: skip
    assert taken.recovery_point == "capture_sent"


def test_transitions_are_checked_and_fenced(migrated_url: str) -> None:
    maker = _maker(migrated_url)
    (order_id,) = _orders(maker, [{"Z": 1}])
    with pytest.raises(IllegalTransition), maker() as session, session.begin():
        transition(session, load_for_update(session, order_id), OrderState.PAID, actor="t")
    with maker() as session, session.begin():
        stale = load_for_update(session, order_id)
    with maker() as session, session.begin():
        transition(session, load_for_update(session, order_id), OrderState.RESERVED, actor="t")
    with pytest.raises(StaleOrder), maker() as session, session.begin():
        transition(session, stale, OrderState.ON_HOLD, actor="stale writer")
    with maker() as session:
        order = session.get(Order, order_id)
        assert order is not None and order.state == OrderState.RESERVED and order.version == 2


def test_claim_stores_the_key_at_its_recovery_point_and_steps_over_rejected_keys(
    migrated_url: str,
) -> None:
    maker = _maker(migrated_url)
    with maker() as session, session.begin():
        first = idempotency.claim(session, "label:7", {"a": 1}, owner="t1", point="label_requested")
    with maker() as session:
        row = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == "label:7")).one()
        assert (first.key, row.recovery_point, row.locked_by) == ("label:7", "label_requested",
                                                                  "t1")  # fmt: skip
    with maker() as session, session.begin():  # the carrier refused it: retired for good
        idempotency.fail(session, "label:7", "400 bad address", rejected=True)
    with maker() as session, session.begin():  # staff fixed the address: a new request
        second = idempotency.claim(session, "label:7", {"a": 2}, owner="t2",
                                   point="label_requested")  # fmt: skip
        assert idempotency.current_key(session, "label:7") == second.key == "label:7:2"
    with maker() as session, session.begin():
        idempotency.fail(session, "label:7:2", "400 again", rejected=True)
    with maker() as session, session.begin():
        third = idempotency.claim(session, "label:7", {"a": 3}, owner="t3", point="label_requested")
    assert third.key == "label:7:3"
    with maker() as session, session.begin():  # the same request again resumes, never a 4th key
        again = idempotency.claim(session, "label:7", {"a": 3}, owner="t3", point="label_requested")
    assert again.key == "label:7:3" and again.recovery_point == "label_requested"


def test_a_retired_shipment_key_does_not_move_the_orders_first_label_key_on(
    migrated_url: str,
) -> None:
    maker = _maker(migrated_url)
    with maker() as session, session.begin():  # the first label's attempt is in flight
        idempotency.claim(session, "label:7", {"a": 1}, owner="t1", point="label_requested")
        idempotency.claim(session, "label:7:s3", {"b": 1}, owner="t1", point="label_requested")
    with maker() as session, session.begin():  # a second shipment's label was refused
        idempotency.fail(session, "label:7:s3", "400 bad address", rejected=True)
    with maker() as session:
        pending = idempotency.unfinished(session, "label:7")
        assert idempotency.current_key(session, "label:7") == "label:7"
        assert pending is not None and pending.key == "label:7"
        assert idempotency.current_key(session, "label:7:s3") == "label:7:s3:2"
        assert idempotency.unfinished(session, "label:7:s3") is None


def test_advance_walks_a_path_in_one_fenced_write_with_a_timeline_row_per_step(
    migrated_url: str,
) -> None:
    from db.models import OrderEvent
    from orders.transitions import advance

    maker = _maker(migrated_url)
    (order_id,) = _orders(maker, [{"Z": 1}])
    with pytest.raises(IllegalTransition), maker() as session, session.begin():
        advance(session, load_for_update(session, order_id),
                [OrderState.RESERVED, OrderState.READY_TO_SHIP], actor="t")  # fmt: skip
    with maker() as session, session.begin():
        order = load_for_update(session, order_id)
        started = advance(session, order, [OrderState.RESERVED, OrderState.PAID], actor="t", n=1)
        assert (started, order.state, order.version) == (OrderState.NEW, OrderState.PAID, 3)
        assert not session.dirty  # the object was kept in step without a second UPDATE
    with maker() as session:
        order = session.get_one(Order, order_id)
        events = session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        ).all()
        assert (order.state, order.version) == (OrderState.PAID, 3)
        assert [(e.from_state, e.to_state, e.detail) for e in events] == [
            ("new", "reserved", {"n": 1}),
            ("reserved", "paid", {"n": 1}),
        ]


def test_a_keys_family_is_itself_and_the_keys_under_it_read_from_the_unique_index(
    migrated_url: str,
) -> None:
    # given keys of order 7's label, of orders 70 and 8, and a key that only sorts nearby
    maker = _maker(migrated_url)
    keys = ["label:7", "label:7:2", "label:7:s3", "label:7:s3:2", "label:70", "label:70:2",
            "label:8", "label:6:9", "label:7;", "label:7 ", "LABEL:7:2", "label:7/"]  # fmt: skip
    with maker() as session, session.begin():
        for key in keys:
            session.add(IdempotencyKey(key=key, request_hash="h"))

    # when the family of label:7 is read
    query = select(IdempotencyKey.key).where(idempotency.family("label:7"))
    with maker() as session:
        found = sorted(session.scalars(query))
    engine = maker.kw["bind"]
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # a scan of the whole table is the planner's last resort here: a plan without one
            # exists only if the index serves the predicate
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))
        else:
            plan = "\n".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))

    # then it is the key and the keys under it, nothing that merely begins alike
    assert found == ["label:7", "label:7:2", "label:7:s3", "label:7:s3:2"]
    # and the unique index finds them: no scan of the whole table (it grew with every order)
    assert "Seq Scan" not in plan and not plan.startswith("SCAN"), plan
    assert "idempotency_keys_key" in plan or "sqlite_autoindex_idempotency_keys" in plan, plan


@pytest.mark.postgres
def test_a_keys_family_is_whole_on_a_postgresql_database_with_a_language_collation(
    postgres_admin_url: str,
) -> None:
    # given a database whose default collation is a language's (ICU en-US, where ';' sorts
    # before ':', as many servers are set up): ordered so, the family's range would be empty
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from db.migrate import upgrade

    name = f"ordersync_t_icu_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        icu = "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE template0 {icu}'))
    url = make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        maker = _maker(url)
        with maker() as session, session.begin():
            assert session.scalar(sa.text("SELECT 'label:7:2' < 'label:7;'")) is False
            for key in ("label:7", "label:7:2", "label:7:s3", "label:70", "label:8"):
                session.add(IdempotencyKey(key=key, request_hash="h"))

        # when order 7's label keys are read, and the next key after a retired one is asked
        with maker() as session, session.begin():
            found = sorted(session.scalars(
                select(IdempotencyKey.key).where(idempotency.family("label:7"))))  # fmt: skip
            for retired in ("label:7", "label:7:2"):  # the carrier refused both
                idempotency.fail(session, retired, "400", rejected=True)
            current = idempotency.current_key(session, "label:7")

        # then the migration's byte order holds: every key under label:7 and no other
        assert found == ["label:7", "label:7:2", "label:7:s3"]
        assert current == "label:7:3"  # never a retired key again
        maker.kw["bind"].dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
