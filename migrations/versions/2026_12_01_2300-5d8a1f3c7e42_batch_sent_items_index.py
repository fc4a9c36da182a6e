"""a batch's sent items by row: with the held ones' index, manifests page through a batch

Revision ID: 5d8a1f3c7e42
Revises: 9c4d2e7f1b08
Create Date: 2026-12-01 23:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d8a1f3c7e42"
down_revision: str | None = "9c4d2e7f1b08"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Disjoint from ix_jobs_batch_held (dispatched_at IS NULL): the release's query for held
# items can never take this one and step over every item already sent.
SENT_BATCH_ITEMS = sa.text("batch_id IS NOT NULL AND dispatched_at IS NOT NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Built without blocking writes to a big jobs table (outside the transaction).
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_jobs_batch_sent",
                "jobs",
                ["batch_id", "batch_row"],
                postgresql_where=SENT_BATCH_ITEMS,
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index(
            "ix_jobs_batch_sent", "jobs", ["batch_id", "batch_row"], sqlite_where=SENT_BATCH_ITEMS
        )


def downgrade() -> None:
    op.drop_index("ix_jobs_batch_sent", table_name="jobs")
