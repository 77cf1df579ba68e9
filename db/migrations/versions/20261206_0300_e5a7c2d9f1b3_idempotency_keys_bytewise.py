"""idempotency keys ordered byte by byte on PostgreSQL (``COLLATE "C"``): a key and the keys
under it (``label:7``, ``label:7:2``) become one range of the unique index, which
``orders.idempotency.family`` reads instead of a LIKE that read the whole table on every claim.
SQLite's default collation (BINARY) already orders them so: nothing to do there.

Revision ID: e5a7c2d9f1b3
Revises: b3f0a2c9d5e1
Create Date: 2026-12-06 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5a7c2d9f1b3"
down_revision: str | None = "b3f0a2c9d5e1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _collate(collation: str | None) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # the unique index is rebuilt in the new order
    op.alter_column("idempotency_keys", "key", existing_nullable=False,
                    type_=sa.String(length=255, collation=collation),
                    existing_type=sa.String(length=255))  # fmt: skip


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")
