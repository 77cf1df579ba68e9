"""money that matches the marketplace: payment facts, line discounts, invoices per source with
their lines, invoice series per account, refunds of lines from the marketplace and staff

Revision ID: 9c1e7d2a4b60
Revises: 90ab721955b9
Create Date: 2026-12-02 17:50:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "9c1e7d2a4b60"
down_revision: str | None = "90ab721955b9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MONEY = db.base.Money(precision=18, scale=4)


def upgrade() -> None:
    with op.batch_alter_table("channel_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("invoice_series", sa.String(length=30), nullable=True))
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payment_facts", sa.JSON(), nullable=True))
    with op.batch_alter_table("order_lines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("discount", _MONEY, server_default="0", nullable=False))
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.alter_column("payment_id", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("external_id", existing_type=sa.String(length=255), nullable=True)
        batch_op.add_column(
            sa.Column("source", sa.String(length=20), server_default="provider", nullable=False)
        )
        batch_op.add_column(sa.Column("lines", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("shipping", _MONEY, server_default="0", nullable=False))
        batch_op.add_column(sa.Column("requested_by", sa.String(length=100), nullable=True))
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_key", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("lines", sa.JSON(), nullable=True))
    # what made each existing document: its order's one invoice, or its cancellation
    # (``\\:`` is a literal colon to ``text()``, not a bind parameter)
    op.execute(
        sa.text(
            "UPDATE invoices SET source_key = CASE kind WHEN 'invoice' THEN 'invoice\\:' "
            "|| CAST(order_id AS VARCHAR(20)) || '\\:1' ELSE 'credit\\:cancel\\:' "
            "|| CAST(order_id AS VARCHAR(20)) END"
        )
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.alter_column("source_key", existing_type=sa.String(length=120), nullable=False)
        batch_op.drop_constraint("uq_invoices_order_id_kind", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_invoices_source_key"), ["source_key"])
        batch_op.create_index(batch_op.f("ix_invoices_order_id"), ["order_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_order_id"))
        batch_op.drop_constraint(batch_op.f("uq_invoices_source_key"), type_="unique")
        batch_op.create_unique_constraint("uq_invoices_order_id_kind", ["order_id", "kind"])
        batch_op.drop_column("lines")
        batch_op.drop_column("source_key")
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("requested_by")
        batch_op.drop_column("shipping")
        batch_op.drop_column("lines")
        batch_op.drop_column("source")
        batch_op.alter_column("external_id", existing_type=sa.String(length=255), nullable=False)
        batch_op.alter_column("payment_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("order_lines", schema=None) as batch_op:
        batch_op.drop_column("discount")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("payment_facts")
    with op.batch_alter_table("channel_accounts", schema=None) as batch_op:
        batch_op.drop_column("invoice_series")
