"""stock out to the channels: listings with identifiers, buffer rules and versions (the dirty
mark), drift rows, nightly checks, the account's buffer default and its flusher lease

Revision ID: 7d6c614e86da
Revises: 9c1e7d2a4b60
Create Date: 2026-12-02 16:33:47.213328+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "7d6c614e86da"
down_revision: str | None = "9c1e7d2a4b60"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stock_checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel_account_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("listings_checked", sa.Integer(), nullable=False),
        sa.Column("drifted", sa.Integer(), nullable=False),
        sa.Column("missing_on_channel", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "started_at",
            db.base.UTCDateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("finished_at", db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["channel_account_id"],
            ["channel_accounts.id"],
            name=op.f("fk_stock_checks_channel_account_id_channel_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_checks")),
    )
    with op.batch_alter_table("stock_checks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stock_checks_channel_account_id"), ["channel_account_id"], unique=False
        )

    op.create_table(
        "stock_drifts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("listing_id", sa.Integer(), nullable=False),
        sa.Column(
            "found_at",
            db.base.UTCDateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("found_by", sa.String(length=20), nullable=False),
        sa.Column("channel_qty", sa.Integer(), nullable=False),
        sa.Column("expected_qty", sa.Integer(), nullable=True),
        sa.Column("repaired_at", db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["listing_id"],
            ["listings.id"],
            name=op.f("fk_stock_drifts_listing_id_listings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_drifts")),
    )
    with op.batch_alter_table("stock_drifts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stock_drifts_listing_id"), ["listing_id"], unique=False
        )

    with op.batch_alter_table("channel_accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("stock_keep_percent", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("stock_max_quantity", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("stock_zero_at_or_below", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("stock_flush_owner", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("stock_flush_until", db.base.UTCDateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("stock_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("counted_by", sa.String(length=100), nullable=True))

    with op.batch_alter_table("listings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("external_parent_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("external_location_id", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column(
                "fulfilled_by_marketplace", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("want_version", sa.Integer(), server_default="1", nullable=False)
        )
        batch_op.add_column(
            sa.Column("pushed_version", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("dirty_at", db.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "created_at",
                db.base.UTCDateTime(timezone=True),
                server_default=sa.text("(CURRENT_TIMESTAMP)"),
                nullable=False,
            )
        )
        batch_op.alter_column(
            "external_id",
            existing_type=sa.VARCHAR(length=64),
            type_=sa.String(length=255),
            existing_nullable=True,
        )
        batch_op.alter_column("buffer_percent", existing_type=sa.INTEGER(), nullable=True)
        batch_op.alter_column("zero_at_or_below", existing_type=sa.INTEGER(), nullable=True)
        batch_op.create_check_constraint(
            op.f("ck_listings_buffer_percent_range"), "buffer_percent BETWEEN 0 AND 100"
        )
        batch_op.create_index("ix_listings_dirty", ["channel_account_id", "dirty_at"], unique=False)
        batch_op.create_index("ix_listings_sku", ["sku"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("listings", schema=None) as batch_op:
        batch_op.drop_index("ix_listings_sku")
        batch_op.drop_constraint(op.f("ck_listings_buffer_percent_range"), type_="check")
        batch_op.drop_index("ix_listings_dirty")
        batch_op.alter_column("zero_at_or_below", existing_type=sa.INTEGER(), nullable=False)
        batch_op.alter_column("buffer_percent", existing_type=sa.INTEGER(), nullable=False)
        batch_op.alter_column(
            "external_id",
            existing_type=sa.String(length=255),
            type_=sa.VARCHAR(length=64),
            existing_nullable=True,
        )
        batch_op.drop_column("created_at")
        batch_op.drop_column("last_error")
        batch_op.drop_column("dirty_at")
        batch_op.drop_column("pushed_version")
        batch_op.drop_column("want_version")
        batch_op.drop_column("fulfilled_by_marketplace")
        batch_op.drop_column("external_location_id")
        batch_op.drop_column("external_parent_id")

    with op.batch_alter_table("stock_items", schema=None) as batch_op:
        batch_op.drop_column("counted_by")

    with op.batch_alter_table("channel_accounts", schema=None) as batch_op:
        batch_op.drop_column("stock_flush_until")
        batch_op.drop_column("stock_flush_owner")
        batch_op.drop_column("stock_zero_at_or_below")
        batch_op.drop_column("stock_max_quantity")
        batch_op.drop_column("stock_keep_percent")

    with op.batch_alter_table("stock_drifts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stock_drifts_listing_id"))

    op.drop_table("stock_drifts")
    with op.batch_alter_table("stock_checks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stock_checks_channel_account_id"))

    op.drop_table("stock_checks")
