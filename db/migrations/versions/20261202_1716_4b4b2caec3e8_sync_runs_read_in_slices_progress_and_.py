"""sync runs read in slices: progress and resume token

Revision ID: 4b4b2caec3e8
Revises: 47ec921489de
Create Date: 2026-12-02 17:16:29.619957+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "4b4b2caec3e8"
down_revision: str | None = "47ec921489de"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pages", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("page_token", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("heartbeat_at", db.base.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("page_token")
        batch_op.drop_column("pages")
