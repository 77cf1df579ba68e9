"""Engines and sessions.

SQLite (the embedded default) is made fit for several processes writing at once: WAL journal, a
busy timeout, and ``BEGIN IMMEDIATE`` so a transaction takes the write lock up front instead of
failing to upgrade a read lock halfway through (``database is locked``).

Writers also queue on an advisory file lock (``flock`` on ``<database>-writers``) before
``BEGIN IMMEDIATE``, held until the commit or rollback. SQLite's own busy handler polls with
sleeps that grow to 100 ms, so under contention a waiter often sleeps long after the lock was
freed (the pipeline benchmark measured its workers idle a third of the time). A waiter
blocked in ``flock`` is woken by the kernel the moment the holder lets go, and a process that
dies loses its lock with its file descriptors. SQLite's busy timeout still covers everything
else (a checkpoint, a process that does not use this engine).
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeAlias, cast

from sqlalchemy import (
    Column,
    Connection,
    CursorResult,
    Dialect,
    Engine,
    Insert,
    MetaData,
    Result,
    Table,
    create_engine,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from core import jsonio
from core.settings import ConfigError, get_settings

__all__ = [
    "PRE_PING_DEFAULT",
    "Transaction",
    "after_fork",
    "append_rows",
    "core",
    "dialect_insert",
    "dialect_insert_for",
    "get_engine",
    "get_sessionmaker",
    "insert_new_rows",
    "make_engine",
    "per_dialect",
    "rowcount",
    "session_scope",
    "set_pre_ping_default",
]

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_directory(database: Path) -> None:
    """The embedded setup's own directory (``VAR_DIR``) is made on first use; any other
    directory must exist, so that a typo in the URL is an error, not a new empty database
    somewhere else."""
    folder = database.parent
    if folder.resolve() == get_settings().var_dir.resolve():
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise ConfigError(f"ORDERSYNC_DATABASE_URL: the directory {folder} does not exist")


@functools.lru_cache(maxsize=64)
def _is_sqlite(url: str) -> bool:
    """The URL's backend is SQLite (asked for every engine lookup: parsed once per URL)."""
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    # the JSON columns written through orjson, as json would write them (core.jsonio)
    kwargs.setdefault("json_serializer", jsonio.dumps)
    parsed = make_url(url)
    if _is_sqlite(url):
        if parsed.database and parsed.database != ":memory:":
            _sqlite_directory(Path(parsed.database))
        connect_args: dict[str, Any] = {
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            "check_same_thread": False,
        }
        if parsed.database and parsed.database != ":memory:":
            connect_args["factory"] = _queued_writers(f"{parsed.database}-writers")
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        _configure_sqlite(engine)
        return engine
    _cache_long_statements()
    kwargs.setdefault("pool_pre_ping", _pre_ping())
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


#: psycopg converts a statement's ``%(name)s`` placeholders to ``$n`` with a regex pass over
#: the text, and keeps the result (an LRU of 128 statements) only for a statement of at most
#: 4,096 bytes and 50 parameters. A page's multi-row INSERTs (``orders.intake.apply_page``: 50
#: orders of 30 columns per statement, 44 KB, the same text each time) are longer: each was
#: parsed anew, about 3 ms a statement (an in-process cProfile of ``apply_page``: 724 -> 311-392
#: µs per order with the cache). With these limits they are parsed once per process; the LRU
#: holds at most 128 statements of at most 64 KB.
PSYCOPG_CACHED_STATEMENT_BYTES = 64 * 1024
PSYCOPG_CACHED_STATEMENT_PARAMS = 4096


def _cache_long_statements() -> None:
    try:
        from psycopg import _queries
    except ImportError:  # no psycopg: no PostgreSQL engine will connect anyway
        return
    _queries.MAX_CACHED_STATEMENT_LENGTH = max(
        _queries.MAX_CACHED_STATEMENT_LENGTH, PSYCOPG_CACHED_STATEMENT_BYTES
    )
    _queries.MAX_CACHED_STATEMENT_PARAMS = max(
        _queries.MAX_CACHED_STATEMENT_PARAMS, PSYCOPG_CACHED_STATEMENT_PARAMS
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # let SQLAlchemy emit BEGIN itself (pysqlite's implicit transactions are deferred)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        dbapi_conn = conn.connection.dbapi_connection
        if isinstance(dbapi_conn, QueuedWriterConnection):
            dbapi_conn.take_write_lock()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if isinstance(dbapi_conn, QueuedWriterConnection):
                dbapi_conn.drop_write_lock()
            raise


class QueuedWriterConnection(sqlite3.Connection):
    """A pysqlite connection that holds the writers' ``flock`` from ``BEGIN`` to the end of the
    transaction (see the module docstring). Its subclasses name the lock file."""

    lock_path = ""
    _lock_fd: int | None = None

    def take_write_lock(self) -> None:
        if self._lock_fd is None:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; woken as soon as the holder unlocks
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd

    def drop_write_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.drop_write_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.drop_write_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.drop_write_lock()


def _queued_writers(lock_path: str) -> type[QueuedWriterConnection]:
    return type("QueuedWriterConnection", (QueuedWriterConnection,), {"lock_path": lock_path})


def core(session: Session) -> Connection:
    """The session's connection (same transaction), for prebuilt Core statements.

    The pipeline's hot statements are built once, at import, with ``bindparam`` placeholders,
    and run here with a dict of values: building a statement inline (and computing its cache
    key) costs 5 to 8 times what running it does (SQLite: ~120 µs inline through the ORM
    against ~15 µs prebuilt on a connection), and the ORM's DML path adds more on top.

    Pending ORM changes are flushed first, as the ORM's autoflush would before a query, so
    statements run in the order the code wrote them.
    """
    if session.new or session.dirty or session.deleted:
        session.flush()
    return session.connection()


_DIALECT_INSERT: dict[str, Callable[..., Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


def dialect_insert(session: Session) -> Callable[..., Any]:
    """The session's dialect's own ``insert`` (``postgresql.insert`` or ``sqlite.insert``), the
    one with ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
    return dialect_insert_for(session.get_bind().dialect.name)


def dialect_insert_for(name: str) -> Callable[..., Any]:
    """The ``insert`` of the dialect called ``name`` (an engine's ``dialect.name``)."""
    if name not in _DIALECT_INSERT:
        raise NotImplementedError(f"no upsert for the {name} dialect")
    return _DIALECT_INSERT[name]


def per_dialect(build: Callable[[Callable[..., Any]], Any]) -> Callable[[Session], Any]:
    """A statement that needs the dialect's own ``insert`` (``ON CONFLICT``, ``RETURNING``),
    built once per dialect: ``build(insert)`` gets ``postgresql.insert`` or ``sqlite.insert``."""
    built: dict[str, Any] = {}

    def get(session: Session) -> Any:
        name = session.get_bind().dialect.name
        statement = built.get(name)
        if statement is None:
            statement = built[name] = build(dialect_insert(session))
        return statement

    return get


def append_rows(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """New rows of ``table`` (each with the same keys), as one multi-row INSERT would add them:
    on PostgreSQL one ``COPY … FROM STDIN`` in the session's transaction, each value through
    its column's bind processing first (``Money`` refuses a float, ``UTCDateTime`` a naive
    time, JSON is wrapped for psycopg); elsewhere an ``executemany`` INSERT. For rows that
    cannot conflict (a new order's lines and timeline): COPY has no ``ON CONFLICT``. Its errors
    are SQLAlchemy's, as an INSERT's would be (``IntegrityError``, ``OperationalError`` with the
    connection invalidated when the server is gone): the retry rules see no difference.

    Measured in ``orders.intake.apply_page`` (PostgreSQL, 250-order pages, three such rows an
    order): what the INSERT path spent per row in SQLAlchemy's parameter handling and
    psycopg's pipelined executemany, COPY spends once per page."""
    if not rows:
        return
    connection = core(session)
    if connection.dialect.name != "postgresql":
        connection.execute(_plain_insert(table), list(rows))
        return
    _copy(connection, table, table, list(rows[0]), rows)


#: the fewest rows ``insert_new_rows`` stages (below, its three round trips cost more than the
#: INSERTs' parameters; in apply_page, PostgreSQL, CPU and wall per order: 50 rows 69.5 and
#: 165 µs staged against 65.6 and 127 inserted, 100 rows 54.4 and 106 against 69.4 and 131)
STAGE_FROM_ROWS = 75


def insert_new_rows(
    session: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: tuple[str, ...],
    returning: tuple[str, ...],
) -> list[Any]:
    """``rows`` (each with the same keys) inserted in the order of their ``key`` unless a row
    of that key exists (``ON CONFLICT (key) DO NOTHING``: the unique key decides, as for one
    row), and the ``returning`` columns of those inserted. On PostgreSQL, from
    ``STAGE_FROM_ROWS`` rows, they go by one ``COPY`` into a temporary table of this
    connection (made if it is not there, emptied at each commit) and into ``table`` by one
    ``INSERT … SELECT`` that takes them out of it; otherwise (SQLite, or fewer rows) by one
    multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` per fifty rows. Errors as
    ``append_rows`` raises them.

    Measured in ``orders.intake.apply_page`` (``bench/README.md``): fifty-row INSERTs cost
    SQLAlchemy's handling and psycopg's adapting of every parameter (1,500 a statement for
    orders), and a round trip each."""
    if not rows:
        return []
    connection = core(session)
    dialect = connection.dialect
    if dialect.name != "postgresql" or len(rows) < STAGE_FROM_ROWS:
        statement = _insert_new(table, key, returning, dialect.name)
        ordered = sorted(rows, key=lambda row: tuple(row[name] for name in key))
        return list(connection.execute(statement, ordered))
    names = tuple(rows[0])
    stage = _stage(connection, table, names)
    _copy(connection, table, stage, list(names), rows)
    return list(connection.execute(_move_staged(table, stage, key, returning)))


@functools.cache
def _move_staged(
    table: Table, stage: Table, key: tuple[str, ...], returning: tuple[str, ...]
) -> Any:
    """``WITH staged AS (DELETE FROM stage RETURNING …) INSERT INTO table (…) SELECT … FROM
    staged ORDER BY key ON CONFLICT (key) DO NOTHING RETURNING …``"""
    staged = delete(stage).returning(*stage.c).cte("staged")
    names = [column.name for column in stage.c]
    return (
        postgresql.insert(table)
        .from_select(names, select(*staged.c).order_by(*(staged.c[name] for name in key)))
        .on_conflict_do_nothing(index_elements=list(key))
        .returning(*(table.c[name] for name in returning))
    )


@functools.cache
def _insert_new(table: Table, key: tuple[str, ...], returning: tuple[str, ...], name: str) -> Any:
    return (
        dialect_insert_for(name)(table)
        .on_conflict_do_nothing(index_elements=list(key))
        .returning(*(table.c[name] for name in returning))
        # fifty rows per statement: the same text each time, whose conversion psycopg and
        # SQLite keep (a 250-row statement would be converted anew each time)
        .execution_options(insertmanyvalues_page_size=50)
    )


def _stage(connection: Connection, table: Table, names: tuple[str, ...]) -> Table:
    """This connection's temporary table for rows of ``table`` with ``names`` (the columns'
    types, none of its constraints), made if it is not there (one round trip a page: a
    transaction that made it and rolled back took it away again); its rows are deleted at
    each commit, and by the statement that reads them."""
    stage = _stage_table(table, names)
    prepare = connection.dialect.identifier_preparer
    columns = ", ".join(prepare.quote(name) for name in names)
    # names of our own table and its columns, quoted: nothing here comes from outside
    made = f"{prepare.quote(stage.name)} ON COMMIT DELETE ROWS"
    source = f"SELECT {columns} FROM {prepare.format_table(table)} WITH NO DATA"  # noqa: S608
    connection.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {made} AS {source}")
    return stage


@functools.cache
def _stage_table(table: Table, names: tuple[str, ...]) -> Table:
    name = f"stage_{table.name}_{zlib.crc32(' '.join(names).encode()):08x}"
    return Table(name, MetaData(), *(Column(n, table.c[n].type) for n in names))


def _copy(
    connection: Connection,
    table: Table,
    target: Table,
    names: list[str],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """``rows`` into ``target`` by one ``COPY … FROM STDIN``, each value through the bind
    processing of ``table``'s column of its name; a driver error raised as SQLAlchemy raises
    an INSERT's."""
    dialect = connection.dialect
    processors = _bind_processors(table, tuple(names), dialect)
    # only the columns that have a bind processor go through one (a generator zipped with
    # every column's processor cost a resumption per value: 18 -> 13 us for an order's rows)
    processed = [(i, process) for i, process in enumerate(processors) if process is not None]
    columns = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
    sql = f"COPY {dialect.identifier_preparer.format_table(target)} ({columns}) FROM STDIN"
    raw = connection.connection
    cursor = raw.cursor()
    try:
        with cursor.copy(sql) as copy:
            for row in rows:
                values = [row[name] for name in names]
                for i, process in processed:
                    values[i] = process(values[i])
                copy.write_row(values)
    except dialect.loaded_dbapi.Error as exc:  # raised as SQLAlchemy raises an INSERT's error
        gone = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
        if gone:
            connection.invalidate(exc)
        error = dialect.loaded_dbapi.Error
        raise DBAPIError.instance(
            sql, None, exc, error, connection_invalidated=gone, dialect=dialect
        ) from exc
    finally:
        cursor.close()


@functools.cache
def _plain_insert(table: Table) -> Insert:
    """``insert(table)``, built once per table as the hot paths' prebuilt statements are."""
    return insert(table)


_PROCESSORS: dict[tuple[str, tuple[str, ...], str], list[Callable[[Any], Any] | None]] = {}


def _bind_processors(
    table: Table, names: tuple[str, ...], dialect: Dialect
) -> list[Callable[[Any], Any] | None]:
    key = (table.name, names, dialect.name)
    found = _PROCESSORS.get(key)
    if found is None:
        # COPY (and INSERT … SELECT) apply the database's defaults, not SQLAlchemy's: a
        # column whose default is Python's must be given, or it would be NULL here only
        missing = [c.name for c in table.c if c.default is not None
                   and c.server_default is None and c.name not in names]  # fmt: skip
        if missing:
            raise ValueError(f"rows of {table.name} without {', '.join(missing)}, whose "
                             "default SQLAlchemy applies and COPY would not")  # fmt: skip
        found = _PROCESSORS[key] = [
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
        ]
    return found


def rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE/DELETE (``Session.execute`` is typed as a plain ``Result``)."""
    return cast(CursorResult[Any], result).rowcount


#: ``pool_pre_ping`` (PostgreSQL) when ``ORDERSYNC_DB_POOL_PRE_PING`` is unset. A ping is one
#: more round trip per checkout, i.e. per transaction. Worker processes turn it off
#: (``workflows.celery_app``): a task whose connection died with the server fails with a
#: retryable error, SQLAlchemy drops the pool's stale connections, and the retry reconnects.
#: The web app and the CLI keep it, so no request fails after a database restart.
PRE_PING_DEFAULT = True

_engines: dict[tuple[str, bool | None], Engine] = {}
_lock = threading.Lock()


def _pre_ping() -> bool:
    configured = get_settings().db_pool_pre_ping
    return PRE_PING_DEFAULT if configured is None else configured


def set_pre_ping_default(value: bool) -> None:
    """Make ``value`` the pool's ping where ``ORDERSYNC_DB_POOL_PRE_PING`` is unset, for the
    engines made from now on *and* for the default engines made already (a worker's CLI
    checks the schema before Celery starts, so the process had an engine, with the ping,
    before ``worker_init``): those are disposed and forgotten, and made again on next use."""
    global PRE_PING_DEFAULT
    with _lock:
        PRE_PING_DEFAULT = value
        for key in [key for key in _engines if key[1] is None]:
            _engines.pop(key).dispose()
        _sessionmaker.cache_clear()


def get_engine(url: str | None = None, *, pre_ping: bool | None = None) -> Engine:
    """The process's engine for ``url`` (default: the configured database), made once.
    ``pre_ping`` overrides the pool's ping (PostgreSQL): a caller that retries a lost
    connection itself saves the round trip (``web.webhooks``); it gets a pool of its own.
    SQLite is never pinged: one engine per file."""
    url = url or get_settings().database_url
    key = (url, None if _is_sqlite(url) else pre_ping)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                options = {} if key[1] is None else {"pool_pre_ping": key[1]}
                engine = _engines[key] = make_engine(url, **options)
    return engine


def after_fork() -> None:
    """In a forked child: forget the parent's pooled connections without closing them (they
    are still the parent's); the child opens its own."""
    for engine in _engines.values():
        engine.dispose(close=False)


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """Sessions on ``url`` (default: the configured database, as it is configured now)."""
    return _sessionmaker(url or get_settings().database_url)


@functools.cache
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


#: what opens one transaction and yields its session, committing on success and rolling back on
#: error (``OrdersyncTask.transaction``, ``session_scope``): services that commit between steps
#: (before and after an outside call) take one
Transaction: TypeAlias = Callable[[], AbstractContextManager[Session]]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error."""
    with get_sessionmaker(url)() as session, session.begin():
        yield session
