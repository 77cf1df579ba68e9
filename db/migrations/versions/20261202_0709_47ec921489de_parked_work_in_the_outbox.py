"""parked work in the outbox: what a parked retry needs to continue, and whose it is

Revision ID: 47ec921489de
Revises: 3a816ae59e28
Create Date: 2026-12-02 07:09:57.262165+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base  # noqa: F401  (custom column types: UTCDateTime, Money)

revision: str = "47ec921489de"
down_revision: str | None = "3a816ae59e28"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kwargs", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("options", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("order_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("channel_account_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            "ix_outbox_messages_channel_account_id", ["channel_account_id"], unique=False
        )
        batch_op.create_index("ix_outbox_messages_order_id", ["order_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_outbox_messages_channel_account_id_channel_accounts"),
            "channel_accounts",
            ["channel_account_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_outbox_messages_order_id_orders"),
            "orders",
            ["order_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_outbox_messages_order_id_orders"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_outbox_messages_channel_account_id_channel_accounts"), type_="foreignkey"
        )
        batch_op.drop_index("ix_outbox_messages_order_id")
        batch_op.drop_index("ix_outbox_messages_channel_account_id")
        batch_op.drop_column("channel_account_id")
        batch_op.drop_column("order_id")
        batch_op.drop_column("reason")
        batch_op.drop_column("options")
        batch_op.drop_column("kwargs")
