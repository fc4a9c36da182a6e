"""A batch and the rows it turned away."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, true
from sqlalchemy.orm import Mapped, mapped_column

from relightq.credits.amounts import ZERO, CreditAmount
from relightq.db import Base, UTCDateTime, utcnow
from relightq.jobs.models import JSONType


class Batch(Base):
    """Many jobs submitted together: shared defaults, one output place, one credit budget.

    Its items are ordinary rows of ``jobs`` (``jobs.batch_id``); counts are read from
    them, so they can never drift from the jobs' own states.
    """

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    # "json", "csv", "jsonl", or the s3:// prefix that was listed.
    source: Mapped[str] = mapped_column(Text)
    defaults: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    output_prefix: Mapped[str | None] = mapped_column(Text, default=None)
    key_template: Mapped[str | None] = mapped_column(Text, default=None)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    total: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    credit_budget: Mapped[Decimal | None] = mapped_column(CreditAmount(), default=None)
    # False: every item is bought from Segmind even when an earlier picture would do.
    reuse: Mapped[bool] = mapped_column(default=True, server_default=true())
    # Told batch.completed, signed with the tenant's callback secret.
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    # The schedule run that created it, if any (its history links here).
    schedule_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("schedule_runs.id", ondelete="SET NULL"), default=None, index=True
    )
    # Kept by the workers as items succeed; the budget gate reads it.
    credits_used: Mapped[Decimal] = mapped_column(CreditAmount(), default=ZERO)
    # Items that copied an earlier picture instead of calling, and what that saved.
    reused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    credits_saved: Mapped[Decimal] = mapped_column(CreditAmount(), default=ZERO, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Set when no item is left to run; cleared again by retry-failed.
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class BatchReject(Base):
    """A row of a ``skip_invalid`` batch that failed validation, kept for the error manifest."""

    __tablename__ = "batch_rejects"
    __table_args__ = (Index("ix_batch_rejects_batch_row", "batch_id", "row"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    row: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str | None] = mapped_column(Text, default=None)
    subject_image: Mapped[str | None] = mapped_column(Text, default=None)
    # [{"field", "message", "allowed"}, ...]
    problems: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
