"""Fixtures of the integration tests that run tasks in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def settings_for(
    migrated_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The process's settings pointed at the test's migrated database and Redis (as a worker's
    environment would be), for tasks run in-process; the migrated database's URL."""
    from core.settings import get_settings

    monkeypatch.setenv("ORDERSYNC_DATABASE_URL", migrated_url)
    monkeypatch.setenv("ORDERSYNC_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield migrated_url
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(params=["staged", "inserted"])
def new_rows_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways ``db.session.insert_new_rows`` writes on PostgreSQL, whatever the number of
    rows: through its staging table (COPY) and by multi-row INSERTs (SQLite has only these)."""
    import db.session

    staged = request.param == "staged"
    monkeypatch.setattr(db.session, "STAGE_FROM_ROWS", 1 if staged else 1_000_000)
    return str(request.param)
