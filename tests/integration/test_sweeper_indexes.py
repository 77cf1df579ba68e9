"""The sweeper's searches read an index of the rows still to do, not every row ever written.

The sweeper runs every ``sweep_after_s / 2`` (30 s by default) and looks for the few unfinished
idempotency keys, pending marketplace effects, sync runs still reading and fresh refunds among
the whole history. Before the partial indexes (``db.models``: ``UNFINISHED_KEY``,
``PENDING_EFFECT``, ``ACTIVE_RUN``, ``RECEIVED_EVENT``, ``UNPUBLISHED_WORK``) and
``ix_refunds_created_at``, most were full scans (300,000 orders on PostgreSQL: 120 ms a sweep,
growing with the history; ``bench.sweep``). Here the database's own planner is asked, on a
history of finished rows (``bench.sweep.seed_history``), how it runs the statements the
sweeper's functions really send."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.sweep import seed_history
from db.base import Base, utcnow
from db.session import make_engine
from orders import sweeper
from orders.documents import uncredited_refunds
from orders.recovery import unfinished_calls
from orders.syncing import stalled_runs

HISTORY = 10_000


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
            seed_history(conn, HISTORY)
    finally:
        engine.dispose()
    return migrated_url


def _effects(session: Session) -> None:
    now = utcnow()
    assert sweeper.undelivered_effects(session, 500, now, now) == []


def _webhooks(session: Session) -> None:
    assert sweeper.unprocessed_webhooks(session, 500, utcnow()) == []


def _work(session: Session) -> None:
    now = utcnow()
    assert sweeper.due_work(session, 500, now, now) == []


SEARCHES: dict[str, tuple[Callable[[Session], Any], str]] = {
    "unfinished keys": (
        lambda s: unfinished_calls(s, idle_for=dt.timedelta(0), limit=500), "idempotency_keys"),
    "pending effects": (_effects, "outbox_messages"),
    "sync runs still reading": (
        lambda s: stalled_runs(s, idle_for=dt.timedelta(0), limit=500), "sync_runs"),
    "refunds of the last day": (
        lambda s: uncredited_refunds(s, before=utcnow(), limit=500), "refunds"),
    "webhooks not processed": (_webhooks, "inbox_events"),
    "work not published": (_work, "outbox_messages"),
}  # fmt: skip


def _reads_whole(plan: str, table: str) -> bool:
    """PostgreSQL's ``Seq Scan on t``; SQLite's ``SCAN t``, alone or through an index of every
    row (``SCAN t USING INDEX`` of a partial index reads only the rows it holds)."""
    partial = {index.name for index in Base.metadata.tables[table].indexes
               if index.dialect_options["sqlite"]["where"] is not None}  # fmt: skip
    for line in plan.splitlines():
        detail = line.split(" ", 3)[-1]
        if detail.startswith(f"SCAN {table}") and not any(
            detail.endswith(f"INDEX {name}") for name in partial
        ):
            return True
    return f"Seq Scan on {table}" in plan


def test_every_sweep_search_reads_an_index_of_what_is_left_to_do_not_the_history(
    history: str,
) -> None:
    whole = {
        name: plan
        for name, (search, table) in SEARCHES.items()
        if _reads_whole(plan := _plans(history, search), table)
    }
    assert whole == {}


def test_the_index_predicates_name_the_values_the_services_use() -> None:
    """``db.models`` cannot import ``orders`` (layers), so the predicates spell the values out;
    a status added on one side and not the other would hide rows from the sweeper."""
    from db.models import ACTIVE_RUN, PENDING_EFFECT, UNFINISHED_KEY
    from orders.idempotency import FINISHED, REJECTED
    from orders.outbox import PENDING
    from orders.syncing import ACTIVE

    assert UNFINISHED_KEY.text == f"recovery_point NOT IN ('{FINISHED}', '{REJECTED}')"
    assert ACTIVE_RUN.text == f"status IN ({', '.join(repr(s) for s in ACTIVE)})"
    assert PENDING_EFFECT.text == f"kind IS NOT NULL AND status = '{PENDING}'"
