"""idempotency key owner and last error

Revision ID: 5a5648fe9075
Revises: 81bf0c60670e
Create Date: 2026-11-22 01:25:37.515499+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base  # noqa: F401  (custom column types: UTCDateTime, Money)

revision: str = "5a5648fe9075"
down_revision: str | None = "81bf0c60670e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locked_by", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_column("last_error")
        batch_op.drop_column("locked_by")
