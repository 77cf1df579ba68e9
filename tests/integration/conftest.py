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
