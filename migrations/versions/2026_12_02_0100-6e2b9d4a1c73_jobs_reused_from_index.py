"""jobs.reused_from indexed: deleting jobs no longer scans the table once per deleted job

Revision ID: 6e2b9d4a1c73
Revises: 5d8a1f3c7e42
Create Date: 2026-12-02 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "6e2b9d4a1c73"
down_revision: str | None = "5d8a1f3c7e42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The foreign key reused_from -> jobs.id (ON DELETE SET NULL) makes PostgreSQL look for the
# jobs that copied each deleted one; only copies have it set, so only they are indexed.
REUSED = sa.text("reused_from IS NOT NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Built without blocking writes to a big jobs table (outside the transaction).
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_jobs_reused_from",
                "jobs",
                ["reused_from"],
                postgresql_where=REUSED,
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index("ix_jobs_reused_from", "jobs", ["reused_from"], sqlite_where=REUSED)


def downgrade() -> None:
    op.drop_index("ix_jobs_reused_from", table_name="jobs")
