"""Engines under load: SQLite writers queue on the flock; PostgreSQL survives a lost connection."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from db.session import make_engine
from workflows.base import is_retryable


def test_sqlite_writers_from_many_threads_all_commit_one_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    setup = make_engine(url)
    with setup.begin() as conn:
        conn.execute(sa.text("CREATE TABLE c (n INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT INTO c VALUES (0)"))
    inside, most_inside = 0, 0
    guard = threading.Lock()
    start = threading.Barrier(8)

    def writer(_i: int) -> None:
        engine = make_engine(url)  # its own connections, as another process would have
        start.wait()
        for _ in range(25):
            with engine.begin() as conn:
                nonlocal inside, most_inside
                with guard:
                    inside += 1
                    most_inside = max(most_inside, inside)
                n = conn.execute(sa.text("SELECT n FROM c")).scalar_one()
                conn.execute(sa.text("UPDATE c SET n = :n"), {"n": n + 1})  # read-modify-write
                with guard:
                    inside -= 1
        engine.dispose()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))

    with setup.connect() as conn:
        assert conn.execute(sa.text("SELECT n FROM c")).scalar_one() == 200  # no lost update
    assert most_inside == 1  # one transaction at a time, none failed with "database is locked"
    assert (tmp_path / "w.db-writers").exists()


@pytest.mark.postgres
def test_a_worker_connection_killed_by_the_server_fails_retryably_and_the_next_one_works(
    postgres_url: str,
) -> None:
    engine = make_engine(postgres_url, pool_pre_ping=False)  # as in worker processes
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:  # a restart, a failover, an idle timeout on a proxy
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(sa.exc.DBAPIError) as failed, engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert failed.value.connection_invalidated and is_retryable(failed.value)
        with engine.connect() as conn:  # the retry: a new connection
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_a_long_statement_sent_again_is_converted_by_psycopg_once(postgres_url: str) -> None:
    """A page's multi-row INSERT (hundreds of parameters, longer than 4 KB) is sent again and
    again with the same text: psycopg keeps its placeholder conversion (db.session)."""
    from psycopg import _queries

    engine = make_engine(postgres_url)
    columns = ", ".join(f":p{i} AS c{i}" for i in range(300))  # 300 parameters, > 4 KB
    statement = sa.text(f"SELECT {columns} /* {'x' * 2000} */")
    try:
        with engine.connect() as conn:
            conn.execute(statement, {f"p{i}": i for i in range(300)})
            parsed = _queries._query2pg.cache_info()
            row = conn.execute(statement, {f"p{i}": i * 2 for i in range(300)}).one()
            again = _queries._query2pg.cache_info()
    finally:
        engine.dispose()
    assert row[299] == 598  # the second one's own values
    assert again.hits == parsed.hits + 1 and again.misses == parsed.misses


@pytest.mark.postgres
def test_a_worker_process_does_not_ping_on_checkout_though_its_cli_made_an_engine_first(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ordersync worker`` checks the schema (an engine, with the ping) before Celery starts;
    ``worker_init`` must still leave the tasks' engine without the ping (one round trip per
    transaction: ten per order in the pipeline, before this was fixed)."""
    from celery import signals

    from db import session
    from db.migrate import check_ready, upgrade

    upgrade(postgres_url)
    monkeypatch.delenv("ORDERSYNC_DB_POOL_PRE_PING", raising=False)
    monkeypatch.setattr(session, "PRE_PING_DEFAULT", True)
    check_ready(postgres_url)  # as ordersync.cli.worker does, before app.worker_main
    before = session.get_engine(postgres_url)
    assert before.pool._pre_ping  # the CLI's own engine pings (web and CLI keep it)
    try:
        signals.worker_init.send(sender=None)
        signals.worker_process_init.send(sender=None)
        engine = session.get_sessionmaker(postgres_url)().get_bind()
        assert engine is session.get_engine(postgres_url) and engine is not before
        assert engine.pool._pre_ping is False
        with engine.connect() as conn:  # and it works
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        session.set_pre_ping_default(True)
        gc.unfreeze()  # the signals froze this process's heap, as they do a worker's


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_label_steps_read_leaves_psycopgs_prepared_statements_in_place(
    settings_for: str,
) -> None:
    """``buy_label`` reads the order's account for its shipment plan once per order. Ended
    with a ROLLBACK, that read made psycopg drop every statement prepared on the connection
    (73 times for 110 orders in the pipeline benchmark), and each was parsed and planned
    again; ended with a COMMIT, they stay."""
    from db.models import ChannelAccount
    from db.session import get_engine, session_scope
    from tests.support.shop import Shop
    from workflows.pipeline import _shipment_plan

    shop = Shop(settings_for)
    with session_scope() as session:
        hooks_only = ChannelAccount(name="hooks-only", channel="shopify")  # no API to ask
        session.add(hooks_only)
    order_id = shop.order(account=hooks_only)
    shop.engine.dispose()
    engine = get_engine()
    engine.dispose()  # this test's reads on one connection of their own
    for _ in range(8):  # past psycopg's prepare_threshold (5)
        assert _shipment_plan(order_id) == []
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT name FROM pg_prepared_statements")).all()
    assert names  # the plan's SELECT, prepared on the sixth read, is still there
