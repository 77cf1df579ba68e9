"""outbox effects and attempts, split shipments, label voids

Every effect on a marketplace is an outbox row with its idempotency key (unique) and each try
at delivering it an ``outbox_attempts`` row; an order ships in one or more shipments
(``shipments.order_id`` no longer unique), each with its lines (``shipment_lines``, by the
line's marketplace id) and the location it leaves from; a label keeps the carrier's id and when
it was voided; a shipment when it was delivered, the carrier's last tracking status and when it
was asked for. The downgrade fails on a database where an order has more than one shipment
(the unique key cannot come back).

Revision ID: 90ab721955b9
Revises: 6a1eb24ec7d0
Create Date: 2026-12-02 17:16:10.663943+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "90ab721955b9"
down_revision: str | None = "6a1eb24ec7d0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shipment_lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shipment_id", sa.Integer(), nullable=False),
        sa.Column("line_external_id", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_shipment_lines_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["shipment_id"],
            ["shipments.id"],
            name=op.f("fk_shipment_lines_shipment_id_shipments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipment_lines")),
        sa.UniqueConstraint(
            "shipment_id",
            "line_external_id",
            name=op.f("uq_shipment_lines_shipment_id_line_external_id"),
        ),
    )
    op.create_table(
        "outbox_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("response_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column(
            "started_at",
            db.base.UTCDateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["outbox_messages.id"],
            name=op.f("fk_outbox_attempts_message_id_outbox_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_attempts")),
    )
    with op.batch_alter_table("outbox_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outbox_attempts_message_id"), ["message_id"], unique=False
        )

    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("external_id", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("voided_at", db.base.UTCDateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_reason", sa.String(length=500), nullable=True))

    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("payload", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("status", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("shipment_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("delivered_at", db.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_outbox_messages_idempotency_key"), ["idempotency_key"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_outbox_messages_shipment_id_shipments"),
            "shipments",
            ["shipment_id"],
            ["id"],
            ondelete="SET NULL",
        )

    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("delivered_at", db.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("tracking_status", sa.String(length=10), nullable=True))
        batch_op.add_column(
            sa.Column("tracked_at", db.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("location", sa.String(length=100), server_default="main", nullable=False)
        )
        batch_op.drop_constraint(batch_op.f("uq_shipments_order_id"), type_="unique")
        batch_op.create_index(batch_op.f("ix_shipments_order_id"), ["order_id"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shipments_order_id"))
        batch_op.create_unique_constraint(batch_op.f("uq_shipments_order_id"), ["order_id"])
        batch_op.drop_column("location")
        batch_op.drop_column("tracked_at")
        batch_op.drop_column("tracking_status")
        batch_op.drop_column("delivered_at")

    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_outbox_messages_shipment_id_shipments"), type_="foreignkey"
        )
        batch_op.drop_constraint(batch_op.f("uq_outbox_messages_idempotency_key"), type_="unique")
        batch_op.drop_column("delivered_at")
        batch_op.drop_column("last_error")
        batch_op.drop_column("shipment_id")
        batch_op.drop_column("status")
        batch_op.drop_column("payload")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("kind")

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("held_reason")

    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_column("voided_at")
        batch_op.drop_column("external_id")

    with op.batch_alter_table("outbox_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_attempts_message_id"))

    op.drop_table("outbox_attempts")
    op.drop_table("shipment_lines")
