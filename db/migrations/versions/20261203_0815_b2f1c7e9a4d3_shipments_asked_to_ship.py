"""shipments asked to ship: the staff request that split chosen lines off, and who asked

Revision ID: b2f1c7e9a4d3
Revises: 7d6c614e86da
Create Date: 2026-12-03 08:15:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b2f1c7e9a4d3"
down_revision: str | None = "7d6c614e86da"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ship_request", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("ship_requested_by", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.drop_column("ship_requested_by")
        batch_op.drop_column("ship_request")
