"""reconcile: mismatches flagged per run and per night

A full sync compares every order it sees with ours; what it cannot repair safely it flags for
staff: ``sync_runs.mismatches_flagged`` and the night's total ``reconcile_reports.flagged``.

Revision ID: c3d9e1f2a7b4
Revises: c4e8a1d2f5b7
Create Date: 2026-12-03 08:15:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3d9e1f2a7b4"
down_revision: str | None = "c4e8a1d2f5b7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_runs") as batch:
        batch.add_column(
            sa.Column("mismatches_flagged", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("reconcile_reports") as batch:
        batch.add_column(sa.Column("flagged", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("reconcile_reports") as batch:
        batch.drop_column("flagged")
    with op.batch_alter_table("sync_runs") as batch:
        batch.drop_column("mismatches_flagged")
