"""A schedule, each run it made, and the objects an incremental prefix run has seen."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from relightq.db import Base, UTCDateTime, utcnow
from relightq.jobs.models import JSONType


class Overlap(StrEnum):
    """What a due run does while the previous run is still going."""

    SKIP = "skip"  # record it as skipped
    QUEUE = "queue"  # start it when the previous run is done (at most one waits)


class RunStatus(StrEnum):
    """Where a run is."""

    QUEUED = "queued"  # waiting for the previous run (overlap: queue)
    RUNNING = "running"  # its batches are not all completed
    SUCCEEDED = "succeeded"  # every batch it created completed (see their counts)
    CANCELLED = "cancelled"  # a batch it created was cancelled before it completed
    FAILED = "failed"  # the action could not start (see error)
    SKIPPED = "skipped"  # overlap: skip, or a run was already queued


class Schedule(Base):
    """A cron expression in a time zone and an action to run at each of its times."""

    __tablename__ = "schedules"
    __table_args__ = (
        Index("ix_schedules_due", "enabled", "next_run_at"),
        Index("ix_schedules_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    # {"type": "rerun_batch" | "reprocess_prefix" | "retry_failed", ...}
    action: Mapped[dict[str, Any]] = mapped_column(JSONType)
    overlap: Mapped[Overlap] = mapped_column(String(8), default=Overlap.SKIP)
    enabled: Mapped[bool] = mapped_column(default=True)
    # The next cron time, in UTC; None while paused.
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ScheduleRun(Base):
    """One firing of a schedule (or a run by hand), with what it created."""

    __tablename__ = "schedule_runs"
    __table_args__ = (
        # A cron time fires once, however many schedulers race for it.
        UniqueConstraint("schedule_id", "scheduled_for"),
        Index("ix_schedule_runs_schedule_created", "schedule_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    schedule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime())
    manual: Mapped[bool] = mapped_column(default=False)
    status: Mapped[RunStatus] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # What the action did: {"items": n, "skipped_unchanged": n, "jobs": n, ...}
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ScheduleObject(Base):
    """An object a prefix schedule already sent, by ETag: unchanged ones are skipped."""

    __tablename__ = "schedule_objects"

    schedule_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("schedules.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    etag: Mapped[str] = mapped_column(String(128))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The job it became: one that failed or was cancelled does not make the object "seen".
    # No foreign key: jobs are never deleted by relightq, and a missing one counts as done.
    job_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
