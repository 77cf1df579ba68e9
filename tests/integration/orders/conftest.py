"""Every test here gets a ``shop``: a freshly migrated database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.shop import FakePayments, FollowUps, Shop


@pytest.fixture
def shop(migrated_url: str) -> Iterator[Shop]:
    shop = Shop(migrated_url)
    yield shop
    shop.engine.dispose()


@pytest.fixture
def provider() -> FakePayments:
    return FakePayments()


@pytest.fixture
def later() -> FollowUps:
    return FollowUps()
