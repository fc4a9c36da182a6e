"""credits as exact decimals; result reuse; reservations for budgets and monthly caps

Revision ID: 9c4d2e7f1b08
Revises: 7b3e9f1c2a45
Create Date: 2026-12-01 20:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import relightq.credits.amounts
import relightq.db

revision: str = "9c4d2e7f1b08"
down_revision: str | None = "7b3e9f1c2a45"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AMOUNT = sa.Numeric(18, 6)
# (table, column) of every amount that was a float.
AMOUNTS = [
    ("jobs", "credits_used"),
    ("jobs", "remaining_credits"),
    ("batches", "credits_used"),
    ("batches", "credit_budget"),
    ("upstream_state", "remaining_credits"),
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        # Never wait long behind a lock held by live traffic; fail and retry the deploy
        # instead. Changing a column's type rewrites the table: run this in a quiet hour
        # on a big jobs table (docs/operations/index.md, Upgrading).
        op.execute("SET LOCAL lock_timeout = '4s'")
        for table, column in AMOUNTS:
            # A float's shortest text is what was meant (0.037, not 0.0369999...).
            op.alter_column(
                table,
                column,
                type_=AMOUNT,
                postgresql_using=f"round({column}::numeric, 6)",
            )
    # SQLite (the demo) has no decimal type: its columns stay REAL, read back to 6 places.
    amount = relightq.credits.amounts.CreditAmount()
    op.add_column(
        "jobs", sa.Column("reuse", sa.Boolean(), server_default=sa.true(), nullable=False)
    )
    op.add_column("jobs", sa.Column("reuse_key", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("subject_locator", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("reused_from", sa.Uuid(), nullable=True))
    op.add_column("jobs", sa.Column("credits_saved", amount, server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("credits_reserved", amount, server_default="0", nullable=False))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.create_foreign_key(
            op.f("fk_jobs_reused_from_jobs"), "jobs", ["reused_from"], ["id"], ondelete="SET NULL"
        )
    op.create_index(
        "ix_jobs_tenant_reuse_key",
        "jobs",
        ["tenant_id", "reuse_key"],
        postgresql_where=sa.text("reuse_key IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_tenant_subject_locator",
        "jobs",
        ["tenant_id", "subject_locator"],
        postgresql_where=sa.text("subject_locator IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_batch_reserved",
        "jobs",
        ["batch_id"],
        postgresql_where=sa.text("credits_reserved > 0"),
    )
    op.create_index(
        "ix_jobs_tenant_reserved",
        "jobs",
        ["tenant_id"],
        postgresql_where=sa.text("credits_reserved > 0"),
    )
    op.add_column(
        "batches", sa.Column("reuse", sa.Boolean(), server_default=sa.true(), nullable=False)
    )
    op.add_column("batches", sa.Column("reused", sa.Integer(), server_default="0", nullable=False))
    op.add_column("batches", sa.Column("credits_saved", amount, server_default="0", nullable=False))
    op.add_column("tenants", sa.Column("monthly_credit_cap", amount, nullable=True))
    op.create_table(
        "tenant_credit_months",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("credits_used", amount, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_credit_months_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "month", name=op.f("pk_tenant_credit_months")),
    )
    op.add_column(
        "upstream_state",
        sa.Column("credits_low_since", relightq.db.UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("upstream_state", "credits_low_since")
    op.drop_table("tenant_credit_months")
    op.drop_column("tenants", "monthly_credit_cap")
    op.drop_column("batches", "credits_saved")
    op.drop_column("batches", "reused")
    op.drop_column("batches", "reuse")
    op.drop_index("ix_jobs_tenant_reserved", table_name="jobs")
    op.drop_index("ix_jobs_batch_reserved", table_name="jobs")
    op.drop_index("ix_jobs_tenant_subject_locator", table_name="jobs")
    op.drop_index("ix_jobs_tenant_reuse_key", table_name="jobs")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("fk_jobs_reused_from_jobs"), type_="foreignkey")
    for column in ("credits_reserved", "credits_saved", "reused_from", "subject_locator"):
        op.drop_column("jobs", column)
    op.drop_column("jobs", "reuse_key")
    op.drop_column("jobs", "reuse")
    if op.get_bind().dialect.name == "postgresql":
        for table, column in AMOUNTS:
            op.alter_column(
                table,
                column,
                type_=sa.Float(),
                postgresql_using=f"{column}::double precision",
            )
