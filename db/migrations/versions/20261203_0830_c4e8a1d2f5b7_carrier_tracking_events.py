"""carrier tracking events: the carrier's tracking webhooks, stored raw before we answer

Revision ID: c4e8a1d2f5b7
Revises: b2f1c7e9a4d3
Create Date: 2026-12-03 08:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "c4e8a1d2f5b7"
down_revision: str | None = "b2f1c7e9a4d3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "carrier_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("carrier", sa.String(length=50), nullable=False),
        sa.Column("dedupe_key", sa.String(length=64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("shipment_id", sa.Integer(), nullable=True),
        sa.Column(
            "received_at",
            db.base.UTCDateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("processed_at", db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["shipment_id"],
            ["shipments.id"],
            name=op.f("fk_carrier_events_shipment_id_shipments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_carrier_events")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_carrier_events_dedupe_key")),
    )
    with op.batch_alter_table("carrier_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_carrier_events_status_received_at", ["status", "received_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("carrier_events", schema=None) as batch_op:
        batch_op.drop_index("ix_carrier_events_status_received_at")
    op.drop_table("carrier_events")
