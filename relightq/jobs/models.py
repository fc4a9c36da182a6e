"""A relight job and the images it produced."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
    or_,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from relightq.credits.amounts import ZERO, CreditAmount
from relightq.db import Base, UTCDateTime, utcnow

# JSONB on PostgreSQL, plain JSON on the demo's SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class JobStatus(StrEnum):
    """Where a job is; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# Jobs parked by their tenant's monthly cap wait with a reason starting so. Defined here,
# not in relightq.credits.budgets (which imports this module), so both can tell them apart.
CAP_REACHED = "tenant monthly credit cap reached"


def parked_by_cap() -> ColumnElement[bool]:
    """Jobs waiting for their tenant's monthly cap to be raised or the month to turn.

    A job waiting without a reason is not one of them, so ``~parked_by_cap()`` holds for it
    (a bare ``LIKE`` on NULL would make the negation NULL too)."""
    return and_(
        Job.status == JobStatus.WAITING,
        func.coalesce(Job.waiting_reason, "").startswith(CAP_REACHED),
    )


def parked_by_pause() -> ColumnElement[bool]:
    """Jobs waiting for the fleet to resume (no time of their own): the resume wakes them.

    Not those parked by their tenant's monthly cap: a resume changes nothing for them, they
    wait for the cap to be raised or the month to turn (relightq.credits.caps).
    """
    return and_(
        Job.status == JobStatus.WAITING,
        Job.run_after.is_(None),
        Job.dispatched_at.is_not(None),
        ~parked_by_cap(),
    )


def held_by_batch(jobs: Any = None) -> ColumnElement[bool]:
    """Batch items not yet handed to the broker: their batch releases them a window at a time.

    ``jobs``: the columns to say it of (the table's, for a Core statement built once), by
    default the model's. The statuses are compared one by one: an ``IN`` list would be
    re-rendered into the SQL at every execution of such a statement."""
    jobs = Job if jobs is None else jobs
    return and_(
        or_(jobs.status == JobStatus.QUEUED, jobs.status == JobStatus.WAITING),
        jobs.dispatched_at.is_(None),
    )


# Sent to the broker and not final: what counts against a batch's window.
IN_FLIGHT_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING)


class Job(Base):
    """One relight request: its parameters, its progress and its outcome."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The listing's order and cursor: newest first within a tenant.
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_batch_status", "batch_id", "status"),
        # A batch's items sent to the broker, by row. With ix_jobs_batch_held (the held
        # ones) it covers a batch row by row for manifests; the two never overlap, so the
        # release's query for held items can only take the held one, however stale the
        # statistics (this one would have it step over every item already sent).
        Index(
            "ix_jobs_batch_sent",
            "batch_id",
            "batch_row",
            postgresql_where=text("batch_id IS NOT NULL AND dispatched_at IS NOT NULL"),
        ),
        # The batch's held items in submission order: what the dispatcher releases next.
        Index(
            "ix_jobs_batch_held",
            "batch_id",
            "batch_row",
            postgresql_where=text("dispatched_at IS NULL"),
        ),
        # Earlier pictures of the tenant, found by what they are (result reuse).
        Index(
            "ix_jobs_tenant_reuse_key",
            "tenant_id",
            "reuse_key",
            postgresql_where=text("reuse_key IS NOT NULL"),
        ),
        Index(
            "ix_jobs_tenant_subject_locator",
            "tenant_id",
            "subject_locator",
            postgresql_where=text("subject_locator IS NOT NULL"),
        ),
        # Reservations held: summed on every reservation, so only the few held are indexed.
        Index("ix_jobs_batch_reserved", "batch_id", postgresql_where=text("credits_reserved > 0")),
        Index(
            "ix_jobs_tenant_reserved", "tenant_id", postgresql_where=text("credits_reserved > 0")
        ),
        # The copies of a job, found when it is deleted (the foreign key's SET NULL).
        Index(
            "ix_jobs_reused_from", "reused_from", postgresql_where=text("reused_from IS NOT NULL")
        ),
        # A batch's items in the broker or running: counted on every release.
        Index(
            "ix_jobs_batch_in_flight",
            "batch_id",
            postgresql_where=text(
                "dispatched_at IS NOT NULL AND status IN ('queued', 'running', 'waiting')"
            ),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), default=None
    )
    # The item's row in its batch's source (1-based line of a CSV/JSONL, index of a JSON item).
    batch_row: Mapped[int | None] = mapped_column(Integer, default=None)
    # When a wake-up was last handed to the broker; None while its batch still holds it.
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)
    # Where outputs go when not under relightq's own prefix: an s3:// URI with the
    # placeholders {index} and {ext} left to fill in (other braces are doubled).
    output_template: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[JobStatus] = mapped_column(String(16), default=JobStatus.QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # What the user gave: an http(s) URL, or an s3:// / file:// URI of stored bytes.
    subject_image: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(256), default=None)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    priority: Mapped[int] = mapped_column(Integer, default=5)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    waiting_reason: Mapped[str | None] = mapped_column(Text, default=None)
    credits_used: Mapped[Decimal] = mapped_column(CreditAmount(), default=ZERO)
    remaining_credits: Mapped[Decimal | None] = mapped_column(CreditAmount(), default=None)
    # Result reuse (relightq.credits.reuse): off only when the client asked.
    reuse: Mapped[bool] = mapped_column(default=True, server_default=true())
    # What the picture is: the subject's content and every parameter, hashed; set by the
    # run that learned the content (None: not reusable, e.g. a random seed).
    reuse_key: Mapped[str | None] = mapped_column(String(64), default=None)
    # Where the subject was and the validator it had (URL + strong ETag, S3 key + ETag):
    # lets a dry run predict reuse without reading the image.
    subject_locator: Mapped[str | None] = mapped_column(String(64), default=None)
    # The job whose outputs this one copied instead of calling Segmind.
    reused_from: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), default=None
    )
    # What the copied outputs would have cost.
    credits_saved: Mapped[Decimal] = mapped_column(CreditAmount(), default=ZERO, server_default="0")
    # Held against the batch budget and the tenant's monthly cap while the call is out;
    # settled on success, released on any other end (relightq.credits.budgets).
    credits_reserved: Mapped[Decimal] = mapped_column(
        CreditAmount(), default=ZERO, server_default="0"
    )

    # A worker owns a running job until lease_expires_at; the token tells its writes
    # apart from those of a worker that reclaimed the job after the lease ran out.
    lease_token: Mapped[uuid.UUID | None] = mapped_column(default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Which process holds the lease (relightq.leases.Holder), so a worker starting on the
    # same host can tell its dead predecessor's jobs and take them over at once.
    lease_holder: Mapped[str | None] = mapped_column(String(400), default=None)
    run_after: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Segmind v2: the request this job has paid for and waits on, committed as soon as the
    # submit answers, so whichever worker runs the job next polls it instead of paying again.
    upstream_request_id: Mapped[str | None] = mapped_column(String(200), default=None)
    upstream_status_url: Mapped[str | None] = mapped_column(Text, default=None)
    upstream_response_url: Mapped[str | None] = mapped_column(Text, default=None)
    upstream_submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Requests Segmind forgot (404 on status) that were submitted again: at most one.
    upstream_resubmits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    outputs: Mapped[list[JobOutput]] = relationship(
        lazy="raise", order_by="JobOutput.index", cascade="all, delete-orphan"
    )
    attempt_log: Mapped[list[JobAttempt]] = relationship(
        lazy="raise", order_by="JobAttempt.started_at", cascade="all, delete-orphan"
    )


class JobOutput(Base):
    """One stored image of a succeeded job, at a deterministic key."""

    __tablename__ = "job_outputs"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UpstreamState(Base):
    """Fleet-wide facts learned from Segmind (one row, id 1)."""

    __tablename__ = "upstream_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    remaining_credits: Mapped[Decimal | None] = mapped_column(CreditAmount(), default=None)
    credits_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Set when the balance fell below RELIGHTQ_CREDIT_WARN_BELOW (credits.low sent once),
    # cleared when a report is at or above it again.
    credits_low_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class JobAttempt(Base):
    """One upstream call made for a job, with how it ended (every call, counted or not)."""

    __tablename__ = "job_attempts"
    __table_args__ = (Index("ix_job_attempts_job", "job_id", "started_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    # False for calls that do not use up an attempt: 401, 406 credits, 429.
    counted: Mapped[bool] = mapped_column(default=True)
    outcome: Mapped[str] = mapped_column(String(16))  # succeeded | failed | retry | waiting
    http_status: Mapped[int | None] = mapped_column(Integer, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    # Segmind v2: the request this attempt submitted or polled.
    upstream_request_id: Mapped[str | None] = mapped_column(String(200), default=None)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
