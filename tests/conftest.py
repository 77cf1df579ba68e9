"""Shared fixtures: a fresh database per test on SQLite *and* PostgreSQL, and a real Redis.

- PostgreSQL comes from ``ORDERSYNC_TEST_POSTGRES_URL`` (default: the local server, database
  ``test``); each test gets its own new database, dropped afterwards. Where no server answers,
  the PostgreSQL half is skipped on a laptop but FAILS under CI (``CI=true``): CI must count it.
- Redis comes from ``ORDERSYNC_TEST_REDIS_URL``; without it the tests start the embedded
  redis-server (the same code path as a fresh laptop).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.embedded_redis import EmbeddedRedis
from db.migrate import upgrade
from tests.fixtures.official import OFFICIAL
from tests.support.world import unavailable

# anything that falls back to the default settings writes to a scratch dir, never to ./var
os.environ.setdefault("ORDERSYNC_VAR_DIR", tempfile.mkdtemp(prefix="ordersync-tests-"))

POSTGRES_URL = os.environ.get(
    "ORDERSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FIXTURES = OFFICIAL


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        unavailable(f"no PostgreSQL at {make_url(POSTGRES_URL).render_as_string()}: {exc.orig}")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"ordersync_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ordersync.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per run, that ``migrated_url`` copies."""
    path = tmp_path_factory.mktemp("template") / "ordersync.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_admin_url: str) -> Iterator[str]:
    """A PostgreSQL database migrated to head once per run, that ``migrated_url`` copies
    (``CREATE DATABASE … TEMPLATE``: a file copy, a tenth of the migrations' time)."""
    name = f"ordersync_tpl_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(make_url(postgres_admin_url).set(database=name).render_as_string(False))
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def migrated_url(request: pytest.FixtureRequest, database_url: str) -> str:
    """``database_url`` at the migrations' head: a copy of the run's migrated template (the
    migrations themselves are tested in ``tests/integration/test_migrations.py``)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        shutil.copyfile(request.getfixturevalue("sqlite_template"), url.database)
        return database_url
    template = request.getfixturevalue("postgres_template")
    admin = sa.create_engine(request.getfixturevalue("postgres_admin_url"),
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{url.database}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{url.database}" TEMPLATE "{template}"'))
    finally:
        admin.dispose()
    return database_url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("ORDERSYNC_TEST_REDIS_URL")
    if explicit:
        client = redis.Redis.from_url(explicit)
        client.flushdb()  # this database index is the test suite's own
        client.close()
        yield explicit
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-var"))
    yield server.ensure()
    server.stop()


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
