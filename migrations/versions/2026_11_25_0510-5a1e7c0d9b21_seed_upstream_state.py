"""seed upstream_state

Revision ID: 5a1e7c0d9b21
Revises: 3c279596804b
Create Date: 2026-11-25 05:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5a1e7c0d9b21"
down_revision: str | None = "3c279596804b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Workers only UPDATE this single row, so concurrent first reports cannot race to insert.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SET LOCAL lock_timeout = '4s'")
    state = sa.table("upstream_state", sa.column("id", sa.Integer))
    op.execute(
        sa.insert(state).from_select(
            ["id"], sa.select(sa.literal(1)).where(~sa.exists().where(state.c.id == 1))
        )
    )


def downgrade() -> None:
    op.execute("DELETE FROM upstream_state WHERE id = 1")
