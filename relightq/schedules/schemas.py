"""What a schedule is made of and what the API shows of it and its runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from relightq.batches.schemas import (
    ITEM_ONLY_FIELDS,
    BatchSettings,
    check_s3_prefix,
    validate_defaults,
)
from relightq.jobs.schemas import JobOptions
from relightq.schedules.models import Overlap, RunStatus

ALLOWED: dict[str, str] = {
    "cron": "five cron fields, e.g. 0 3 * * * (03:00 daily) or */15 * * * *",
    "timezone": "an IANA time zone, e.g. Europe/Paris or UTC",
    "action": "rerun_batch, reprocess_prefix or retry_failed (see the docs)",
    "overlap": "skip or queue",
    "source": "s3://bucket/prefix/ in your bucket, or under your own inputs/ or outputs/",
    "name": "text up to 200 characters",
}


def check_cron(value: str) -> str:
    """A five-field cron expression cronsim can step through."""
    # cronsim also reads a sixth field as seconds: "0 0 3 * * *" would fire every minute
    # of 03:00 instead of once, so only the standard five fields are taken.
    if len(value.split()) != 5:
        raise ValueError("must have five fields: minute hour day-of-month month day-of-week")
    try:
        CronSim(value, datetime.now(UTC))
    except (CronSimError, ValueError) as exc:
        raise ValueError(f"is not a cron expression: {exc}") from exc
    return value


def check_timezone(value: str) -> str:
    """An IANA zone name (not the host's own "localtime" or tzdata's "posixrules")."""
    if value in ("localtime", "posixrules"):
        raise ValueError("is not an IANA time zone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("is not an IANA time zone") from exc
    return value


def job_field_problems(fields: dict[str, Any]) -> list[str]:
    """What is wrong with ``fields`` as a whole job's options, one "field: why" each."""
    try:
        JobOptions.model_validate(fields)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def _job_fields(value: dict[str, Any]) -> dict[str, Any]:
    per_item = sorted(ITEM_ONLY_FIELDS & value.keys())
    if per_item:
        raise ValueError(f"{', '.join(per_item)} belong to each item")
    validate_defaults(value)
    return value


class RerunBatch(BaseModel):
    """Run a batch's items again as a new batch, optionally with new job fields."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["rerun_batch"]
    batch_id: uuid.UUID
    overrides: dict[str, Any] = Field(default_factory=dict, description="e.g. a new prompt")
    reuse: bool = Field(
        default=True,
        description="copy pictures already made (same image content and parameters) instead "
        "of buying them again; false buys every item anew",
    )

    _overrides_are_job_fields = field_validator("overrides")(_job_fields)


class ReprocessPrefix(BatchSettings):
    """Relight the images below a prefix that are new or changed (by ETag) since last run."""

    type: Literal["reprocess_prefix"]
    source: str = Field(max_length=2048)
    skip_invalid: bool = True

    @field_validator("source")
    @classmethod
    def _source_is_s3(cls, value: str) -> str:
        return check_s3_prefix(value)

    @field_validator("defaults")
    @classmethod
    def _defaults_make_whole_jobs(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Objects below a prefix bring only their image: the prompt and every other field
        # come from here, so what would fail every run fails now instead.
        problems = job_field_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value


class RetryFailed(BaseModel):
    """Retry the tenant's jobs that failed in the last ``window_hours`` (of one batch)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["retry_failed"]
    window_hours: float = Field(gt=0, le=24 * 31)
    batch_id: uuid.UUID | None = None


Action = Annotated[RerunBatch | ReprocessPrefix | RetryFailed, Field(discriminator="type")]


class ScheduleCreate(BaseModel):
    """A cron expression in a time zone, and what to do at each of its times."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200)
    cron: str = Field(max_length=200)
    timezone: str = Field(default="UTC", max_length=64)
    action: Action
    overlap: Overlap = Overlap.SKIP
    enabled: bool = True

    _cron = field_validator("cron")(check_cron)
    _timezone = field_validator("timezone")(check_timezone)


class ScheduleUpdate(BaseModel):
    """Change any part of a schedule; the next run time follows."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    cron: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(default=None, max_length=64)
    action: Action | None = None
    overlap: Overlap | None = None

    @field_validator("name", "cron", "timezone", "action", "overlap", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Leaving a field out keeps it; null would otherwise read as "keep" too, quietly.
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep it")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)


class RunBatch(BaseModel):
    """A batch a run created, with how far it is."""

    id: uuid.UUID
    status: str
    total: int
    progress: float


class RunOut(BaseModel):
    """One run of a schedule."""

    id: uuid.UUID
    schedule_id: uuid.UUID
    scheduled_for: datetime
    manual: bool
    status: RunStatus
    error: str | None
    summary: dict[str, Any]
    started_at: datetime | None
    created_at: datetime
    batches: list[RunBatch]


class ScheduleOut(BaseModel):
    """A schedule with its next run time and latest run."""

    id: uuid.UUID
    name: str
    cron: str
    timezone: str
    action: dict[str, Any]
    overlap: Overlap
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    last_run: RunOut | None


class RunPage(BaseModel):
    """A page of runs, newest first."""

    items: list[RunOut]
    next_cursor: str | None
