"""leases name their holder; deliveries carry a lease token

Revision ID: 4e1a7c2b9d30
Revises: a129bb635a13
Create Date: 2026-12-01 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4e1a7c2b9d30"
down_revision: str | None = "a129bb635a13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Never wait long behind a lock held by live traffic; fail and retry the deploy instead.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SET LOCAL lock_timeout = '4s'")
    # Nullable columns without defaults: added without rewriting the tables.
    op.add_column("jobs", sa.Column("lease_holder", sa.String(length=400), nullable=True))
    op.add_column("webhook_deliveries", sa.Column("lease_token", sa.Uuid(), nullable=True))
    op.add_column(
        "webhook_deliveries", sa.Column("lease_holder", sa.String(length=400), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("webhook_deliveries", "lease_holder")
    op.drop_column("webhook_deliveries", "lease_token")
    op.drop_column("jobs", "lease_holder")
