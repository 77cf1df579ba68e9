"""On a fresh install nothing but the webhooks answers without a login, so `ordersync up` and
the login page say how to create the first user, until one exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings
from db.session import get_sessionmaker
from ordersync.cli import _first_user_hint
from tests.support.staff import new_user
from web.app import create_app


def test_up_and_the_login_page_say_how_to_create_the_first_user_until_one_exists(
    migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("ORDERSYNC_DATABASE_URL", migrated_url)
    monkeypatch.setenv("ORDERSYNC_VAR_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        client = TestClient(create_app(), base_url="http://ordersync.local")
        _first_user_hint()
        assert "ordersync users add NAME --role admin" in capsys.readouterr().err
        assert 'id="first-start"' in client.get("/login").text
        assert client.get("/api/orders").status_code == 401  # and nothing is open meanwhile

        new_user(get_sessionmaker(migrated_url), "admin")

        _first_user_hint()
        assert "users add" not in capsys.readouterr().err
        assert 'id="first-start"' not in client.get("/login").text
    finally:
        get_settings.cache_clear()
