"""Migrations match the models and run both ways, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.base import Base
from db.migrate import alembic_config
from db.session import make_engine


def test_upgrade_head_leaves_nothing_for_autogenerate_and_downgrade_base_empties(
    database_url: str,
) -> None:
    # given a migrated database
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "head")
    engine = make_engine(database_url)
    try:
        # when autogenerate compares it with the models
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            tables = set(sa.inspect(conn).get_table_names())
        # then there is nothing to generate, and every model table exists
        assert diff == []
        assert set(Base.metadata.tables) <= tables

        # when downgraded to base, only alembic's own table is left
        command.downgrade(cfg, "base")
        with engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) == {"alembic_version"}

        # and it upgrades again cleanly
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            assert set(Base.metadata.tables) <= set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_orders_from_before_fulfilled_by_marketplace_migrate_as_ours_to_ship(
    database_url: str,
) -> None:
    # given an order stored before the column existed
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "f21537e6fb6f")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO channel_accounts (name, channel, shop, credentials, "
                        "rate_limits, active) VALUES ('a', 'amazon', '', '{}', '{}', true)")
            )  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO orders (channel_account_id, channel, external_id, state, "
                    "currency, subtotal, tax_total, shipping_total, discount_total, total, "
                    "payment_collected_by_marketplace, external_updated_at, raw, version, "
                    "attempts) SELECT id, 'amazon', 'x-1', 'new', 'USD', 1, 0, 0, 0, 1, true, "
                    "CURRENT_TIMESTAMP, '{}', 1, 0 FROM channel_accounts"
                )
            )

        # when the migration adds fulfilled_by_marketplace
        command.upgrade(cfg, "head")

        # then the existing order has it, false: merchant-fulfilled as far as we knew
        with engine.connect() as conn:
            flags = conn.execute(sa.text("SELECT fulfilled_by_marketplace FROM orders")).all()
        assert [bool(f) for (f,) in flags] == [False]
    finally:
        engine.dispose()
