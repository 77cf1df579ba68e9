"""the sweeper's searches read indexes of the rows still to do instead of every row: unfinished
idempotency keys, pending effects in the outbox, sync runs still reading, webhooks not
processed, work not published (partial indexes, on PostgreSQL and SQLite), and refunds by the
time they were recorded.

Revision ID: a8c4e2f6d1b9
Revises: e5a7c2d9f1b3
Create Date: 2026-12-06 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a8c4e2f6d1b9"
down_revision: str | None = "e5a7c2d9f1b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the predicates of db.models (UNFINISHED_KEY, PENDING_EFFECT, ACTIVE_RUN, RECEIVED_EVENT,
# UNPUBLISHED_WORK) as they were written
_PARTIAL = (
    ("ix_idempotency_keys_unfinished", "idempotency_keys",
     "recovery_point NOT IN ('finished', 'rejected')"),
    ("ix_outbox_messages_pending_effects", "outbox_messages",
     "kind IS NOT NULL AND status = 'pending'"),
    ("ix_sync_runs_active", "sync_runs", "status IN ('running', 'retrying')"),
    ("ix_inbox_events_received", "inbox_events", "status = 'received'"),
    ("ix_outbox_messages_unpublished_work", "outbox_messages",
     "kind IS NULL AND published_at IS NULL"),
)  # fmt: skip


def upgrade() -> None:
    for name, table, where in _PARTIAL:
        op.create_index(name, table, ["id"], postgresql_where=sa.text(where),
                        sqlite_where=sa.text(where))  # fmt: skip
    op.create_index("ix_refunds_created_at", "refunds", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_refunds_created_at", table_name="refunds")
    for name, table, _ in reversed(_PARTIAL):
        op.drop_index(name, table_name=table)
