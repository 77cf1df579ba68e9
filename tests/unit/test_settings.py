"""Settings: embedded defaults, env overrides, secrets masked in `ordersync config`."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings, mask_url


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ORDERSYNC_DATABASE_URL", raising=False)
    monkeypatch.delenv("ORDERSYNC_REDIS_URL", raising=False)
    monkeypatch.setenv("ORDERSYNC_VAR_DIR", str(tmp_path))

    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'ordersync.db'}"
    assert settings.redis_url is None
    assert settings.masked()["redis_url"].startswith("(embedded")


def test_environment_overrides_and_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSYNC_DATABASE_URL", "postgresql+psycopg://app:hunter2@db/orders")
    monkeypatch.setenv("ORDERSYNC_REDIS_URL", "redis://:s3cret@cache:6379/0")
    monkeypatch.setenv("ORDERSYNC_PAYMENTS_API_KEY", "sk_live_abc")

    shown = Settings(_env_file=None).masked()  # type: ignore[call-arg]

    assert shown["database_url"] == "postgresql+psycopg://app:***@db/orders"
    assert shown["redis_url"] == "redis://:***@cache:6379/0"
    assert shown["payments_api_key"] == "********"
    assert "hunter2" not in str(shown) and "s3cret" not in str(shown)


def test_mask_url_leaves_urls_without_password_alone() -> None:
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_park_bound_must_leave_a_countdown_and_a_run_inside_the_visibility_timeout() -> None:
    fits = Settings(_env_file=None, park_after_s=300, task_time_limit_s=600,  # type: ignore[call-arg]
                    visibility_timeout_s=3600)  # fmt: skip
    assert fits.park_after_s == 300

    with pytest.raises(ValueError, match=r"ORDERSYNC_PARK_AFTER_S .*VISIBILITY_TIMEOUT_S"):
        Settings(_env_file=None, park_after_s=3000, task_time_limit_s=600,  # type: ignore[call-arg]
                 visibility_timeout_s=3600)  # fmt: skip
