"""The staff gate without a database: what it refuses before any route (or query) runs.

Everything with a database (users, tokens, sessions, CSRF, roles, every route of the app) is
in tests/integration/test_staff_access.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner

from core.settings import get_settings
from web.app import create_app
from web.auth import COOKIE, _serializer, read_session


@pytest.fixture(autouse=True)
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ORDERSYNC_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("ORDERSYNC_SECRET_KEY", "unit-test-key")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_an_anonymous_staff_action_is_refused_before_it_reaches_the_database() -> None:
    client = TestClient(create_app(), base_url="http://ordersync.local")

    for headers in ({"Origin": "https://evil.example"}, {}):
        refused = client.post("/api/orders/1/retry", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/metrics").status_code == 401
    page = client.get("/orders?state=on_hold", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Forders%3Fstate%3Don_hold"


def test_static_files_are_public() -> None:
    client = TestClient(create_app(), base_url="http://ordersync.local")
    assert client.get("/static/dashboard.js").status_code == 200


def test_a_tampered_cookie_is_no_session() -> None:
    settings = get_settings()
    value = _serializer(settings).dumps({"u": 1, "v": 1, "c": "x", "s": time.time()})
    assert read_session(settings, value) is not None
    assert read_session(settings, value[:-3] + "abc") is None
    client = TestClient(create_app(), base_url="http://ordersync.local")
    client.cookies.set(COOKIE, value[:-3] + "abc")
    assert client.get("/api/summary").status_code == 401


def test_a_session_ends_after_the_idle_time_and_after_the_longest_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = get_settings()
    fresh = _serializer(settings).dumps({"u": 1, "v": 1, "c": "x", "s": time.time()})
    too_old = _serializer(settings).dumps(
        {"u": 1, "v": 1, "c": "x", "s": time.time() - settings.session_max_s - 1}
    )
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp",
                        lambda self: real(self) - settings.session_idle_s - 5)  # fmt: skip
    idle = _serializer(settings).dumps({"u": 1, "v": 1, "c": "x", "s": time.time()})
    monkeypatch.undo()

    assert read_session(settings, fresh) is not None
    assert read_session(settings, idle) is None  # signed longer ago than the idle time
    assert read_session(settings, too_old) is None  # re-signed, but started too long ago
