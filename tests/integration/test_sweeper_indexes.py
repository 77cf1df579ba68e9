"""The sweeper's searches read an index of the rows still to do, not every row ever written.

The sweeper runs every ``sweep_after_s / 2`` (30 s by default) and looks for the few unfinished
idempotency keys, pending marketplace effects, sync runs still reading and fresh refunds among
the whole history. Before the partial indexes (``db.models``: ``UNFINISHED_KEY``,
``PENDING_EFFECT``, ``ACTIVE_RUN``) and ``ix_refunds_created_at``, each was a full scan: at
300,000 orders about 110 ms of PostgreSQL per sweep, growing with the history. Here the
database's own planner is asked, on a history of finished rows, how it runs the statements the
sweeper's functions really send."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.base import utcnow
from db.session import make_engine
from orders.documents import uncredited_refunds
from orders.recovery import unfinished_calls
from orders.syncing import stalled_runs

HISTORY = 3_000


def _seed(conn: sa.Connection) -> None:
    old = utcnow() - dt.timedelta(days=30)
    conn.execute(sa.text(
        "INSERT INTO channel_accounts (name, channel, shop, credentials, rate_limits, active) "
        "VALUES ('shop', 'shopify', 'shop.test', '{}', '{}', true)"))  # fmt: skip
    account = conn.execute(sa.text("SELECT id FROM channel_accounts")).scalar_one()
    conn.execute(sa.text(
        "INSERT INTO orders (channel_account_id, channel, external_id, state, currency, "
        "subtotal, tax_total, shipping_total, discount_total, total, "
        "payment_collected_by_marketplace, external_updated_at, raw, version, attempts, "
        "created_at, updated_at) VALUES (:a, 'shopify', :e, 'delivered', 'EUR', 10, 0, 0, 0, "
        "10, false, :at, '{}', 1, 0, :at, :at)"),
        [{"a": account, "e": f"ext-{i}", "at": old} for i in range(HISTORY)])  # fmt: skip
    order_ids = conn.execute(sa.text("SELECT id FROM orders")).scalars().all()
    conn.execute(sa.text(
        "INSERT INTO idempotency_keys (key, request_hash, recovery_point, created_at) "
        "VALUES (:k, 'h', 'finished', :at)"),
        [{"k": f"{step}:{o}", "at": old}
         for o in order_ids for step in ("capture", "label")])  # fmt: skip
    conn.execute(sa.text(
        "INSERT INTO outbox_messages (task_name, args, created_at, attempts, kind, status, "
        "published_at, order_id, channel_account_id) VALUES ('ordersync.deliver', '[]', :at, "
        "1, 'fulfillment', 'delivered', :at, :o, :a)"),
        [{"at": old, "o": o, "a": account} for o in order_ids])  # fmt: skip
    conn.execute(sa.text(
        "INSERT INTO sync_runs (channel_account_id, kind, status, orders_seen, orders_changed, "
        "started_at, heartbeat_at) VALUES (:a, 'poll', 'finished', 1, 0, :at, :at)"),
        [{"a": account, "at": old} for _ in range(HISTORY)])  # fmt: skip
    conn.execute(sa.text(
        "INSERT INTO refunds (order_id, provider, amount, currency, status, idempotency_key, "
        "created_at, source, shipping) VALUES (:o, 'shopify', 5, 'EUR', 'succeeded', :k, :at, "
        "'marketplace', 0)"),
        [{"o": o, "k": f"refund:{o}", "at": old} for o in order_ids])  # fmt: skip
    conn.execute(sa.text("ANALYZE"))


def _plans(url: str, search: Callable[[Session], Any]) -> str:
    """How the database runs every SELECT that ``search`` sends (PostgreSQL's ``EXPLAIN``,
    SQLite's ``EXPLAIN QUERY PLAN``), as one text."""
    engine = make_engine(url)
    sent: list[tuple[str, Any]] = []

    def record(_c: object, _cur: object, statement: str, params: Any, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, params))

    try:
        sa.event.listen(engine, "before_cursor_execute", record)
        with Session(engine) as session, session.begin():
            search(session)
        sa.event.remove(engine, "before_cursor_execute", record)
        explain = "EXPLAIN" if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
        with engine.connect() as conn:
            lines = [
                " ".join(str(cell) for cell in row)
                for statement, params in sent
                for row in conn.exec_driver_sql(f"{explain} {statement}", params)
            ]
        return "\n".join(lines)
    finally:
        engine.dispose()


@pytest.fixture
def history(migrated_url: str) -> str:
    engine = make_engine(migrated_url)
    try:
        with engine.begin() as conn:
            _seed(conn)
    finally:
        engine.dispose()
    return migrated_url


def _effects(session: Session) -> None:
    from workflows.tasks import _undelivered_effects

    now = utcnow()
    assert _undelivered_effects(session, 500, now, now) == []


@pytest.mark.parametrize(
    ("search", "index"),
    [
        (lambda s: unfinished_calls(s, idle_for=dt.timedelta(0), limit=500),
         "ix_idempotency_keys_unfinished"),
        (_effects, "ix_outbox_messages_pending_effects"),
        (lambda s: stalled_runs(s, idle_for=dt.timedelta(0), limit=500), "ix_sync_runs_active"),
        (lambda s: uncredited_refunds(s, before=utcnow(), limit=500), "ix_refunds_created_at"),
    ],
    ids=["unfinished_keys", "pending_effects", "active_runs", "fresh_refunds"],
)  # fmt: skip
def test_a_sweep_reads_the_index_of_what_is_left_to_do_not_the_history(
    history: str, search: Callable[[Session], Any], index: str
) -> None:
    plans = _plans(history, search)
    assert index in plans, plans
