"""Run the Alembic migrations from code (``ordersync db upgrade``, the demo, the tests)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc

from core.settings import ConfigError, get_settings, mask_url

__all__ = ["DatabaseNotReady", "alembic_config", "check_ready", "downgrade", "upgrade"]


class DatabaseNotReady(ConfigError):
    """The database cannot be reached, or its schema is not the one this code needs."""


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    # a literal "%" in a URL (an encoded password) would be read as interpolation
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "-1") -> None:
    command.downgrade(alembic_config(url), revision)


def check_ready(url: str | None = None) -> None:
    """Before a long-running process starts (web, worker, Beat): the database answers and is
    at the code's migration head; else ``DatabaseNotReady`` says which, in one line."""
    from db.session import get_engine

    url = url or get_settings().database_url
    alembic_log = logging.getLogger("alembic")
    level, alembic_log.level = alembic_log.level, logging.WARNING  # a check, not a migration
    try:
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        with get_engine(url).connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except sa_exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise DatabaseNotReady(f"database not reachable ({mask_url(url)}): {first}") from None
    finally:
        alembic_log.setLevel(level)
    if current != head:
        raise DatabaseNotReady(
            f"database {mask_url(url)} is at migration {current or 'none'}, this code needs "
            f"{head}: run `ordersync db upgrade`"
        )
