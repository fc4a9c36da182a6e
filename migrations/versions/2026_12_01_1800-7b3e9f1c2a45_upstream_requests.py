"""jobs remember the Segmind v2 request they are waiting for

Revision ID: 7b3e9f1c2a45
Revises: 4e1a7c2b9d30
Create Date: 2026-12-01 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import relightq.db

revision: str = "7b3e9f1c2a45"
down_revision: str | None = "4e1a7c2b9d30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Never wait long behind a lock held by live traffic; fail and retry the deploy instead.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SET LOCAL lock_timeout = '4s'")
    # Nullable columns, and one with a constant default: added without rewriting the table.
    op.add_column("jobs", sa.Column("upstream_request_id", sa.String(length=200), nullable=True))
    op.add_column("jobs", sa.Column("upstream_status_url", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("upstream_response_url", sa.Text(), nullable=True))
    op.add_column(
        "jobs",
        sa.Column("upstream_submitted_at", relightq.db.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "jobs",
        sa.Column("upstream_resubmits", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "job_attempts", sa.Column("upstream_request_id", sa.String(length=200), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("job_attempts", "upstream_request_id")
    op.drop_column("jobs", "upstream_resubmits")
    op.drop_column("jobs", "upstream_submitted_at")
    op.drop_column("jobs", "upstream_response_url")
    op.drop_column("jobs", "upstream_status_url")
    op.drop_column("jobs", "upstream_request_id")
