"""What the API accepts for a batch and what it shows of one."""

from __future__ import annotations

import string
import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from relightq.credits.amounts import Credits, PositiveCredits
from relightq.jobs.schemas import ALLOWED as JOB_ALLOWED
from relightq.jobs.schemas import JobOptions, check_callback_url

# Placeholders a key template may use; {index} and {ext} are filled per output image.
KEY_FIELDS = {
    "item": "the external_id, else the source key without its extension, else the row",
    "external_id": "the item's external_id",
    "row": "the item's row in the source",
    "source_key": "the source object's key below the listed prefix (S3 prefix batches)",
    "source_name": "the source file name without its extension",
    "job_id": "the item's job id",
    "batch_id": "the batch id",
    "index": "the output image's index, from 0",
    "ext": "the output format's extension: webp, jpg or png",
}
DEFAULT_KEY_TEMPLATE = "{item}/{index}.{ext}"
# Per-item fields a batch's defaults may not set: they name one item.
ITEM_ONLY_FIELDS = frozenset({"subject_image", "external_id"})

ALLOWED: dict[str, str] = {
    **JOB_ALLOWED,
    "items": "a non-empty list of item objects, each like a job (subject_image required)",
    "source": "an s3://bucket/prefix/ URI to list for images",
    "defaults": "a JSON object of job fields shared by every item",
    "output_prefix": "an s3://bucket/prefix/ URI where outputs go",
    "key_template": "a key below output_prefix using "
    + ", ".join("{" + name + "}" for name in KEY_FIELDS),
    "credit_budget": "a number of credits greater than 0 with at most 6 decimal places, "
    "or null for no budget",
    "skip_invalid": "true to run the valid rows and report the others",
    "name": "text up to 200 characters",
    "file": "a CSV (with a header row) or JSONL file of items",
    "format": "csv or jsonl",
    "columns": "subject_image, external_id, metadata, metadata.<key> and the job fields",
    "dry_run": "true to check the batch and answer what it would cost, storing nothing",
}


class BatchSettings(BaseModel):
    """Everything about a batch except where its items come from."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    defaults: dict[str, Any] = Field(default_factory=dict)
    output_prefix: str | None = Field(default=None, max_length=1024)
    key_template: str | None = Field(default=None, max_length=1024)
    credit_budget: PositiveCredits | None = None
    # False: every item is bought anew (items may also say reuse: false one by one).
    reuse: bool = True
    skip_invalid: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Told batch.completed (signed like every relightq webhook).
    callback_url: str | None = Field(default=None, max_length=2048)

    @field_validator("callback_url")
    @classmethod
    def _callback_is_public_http(cls, value: str | None) -> str | None:
        return None if value is None else check_callback_url(value)

    @field_validator("output_prefix")
    @classmethod
    def _prefix_is_s3(cls, value: str | None) -> str | None:
        return None if value is None else check_s3_prefix(value)

    @field_validator("key_template")
    @classmethod
    def _template_uses_known_fields(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value)]
        except ValueError as exc:
            raise ValueError(f"is not a valid template: {exc}") from exc
        names = [name for name, _, _ in parts if name is not None]
        unknown = sorted({name for name in names if name not in KEY_FIELDS})
        if unknown:
            raise ValueError(f"uses unknown placeholders: {', '.join(unknown) or '{}'}")
        if any(spec or conv for _, spec, conv in parts):
            raise ValueError("placeholders take no format specs or conversions")
        if value.startswith("/"):
            raise ValueError("must be relative to output_prefix (no leading /)")
        return value

    @field_validator("defaults")
    @classmethod
    def _defaults_are_shared_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        per_item = sorted(ITEM_ONLY_FIELDS & value.keys())
        if per_item:
            raise ValueError(f"{', '.join(per_item)} belong to each item, not the defaults")
        return value


class BatchCreate(BatchSettings):
    """A JSON batch request: ``items`` inline, or a ``source`` prefix to list."""

    items: list[Any] | None = None
    source: str | None = Field(default=None, max_length=2048)
    # Validate everything and answer a BatchEstimate; nothing is stored.
    dry_run: bool = False

    @field_validator("source")
    @classmethod
    def _source_is_s3(cls, value: str | None) -> str | None:
        return None if value is None else check_s3_prefix(value)

    @model_validator(mode="after")
    def _one_source(self) -> BatchCreate:
        if (self.items is None) == (self.source is None):
            raise ValueError("give exactly one of items or source")
        return self


def check_s3_prefix(value: str) -> str:
    """Accept ``s3://bucket/`` and ``s3://bucket/prefix/``; a prefix given without its
    closing slash is read as the folder (``s3://b/2026`` is ``s3://b/2026/``), so it
    neither lists the sibling ``2026-old/`` nor makes keys start with a slash."""
    if not value.startswith("s3://") or len(value) <= 5 or value[5] == "/":
        raise ValueError("must be an s3://bucket/prefix/ URI")
    return value if value.endswith("/") else value + "/"


def validate_defaults(defaults: dict[str, Any]) -> JobOptions:
    """The defaults as job options (a placeholder prompt stands in when items give it)."""
    return JobOptions.model_validate({"prompt": "-", **defaults})


class BatchStatus(StrEnum):
    """Where a batch is, as a whole."""

    QUEUED = "queued"  # nothing started yet
    RUNNING = "running"
    WAITING = "waiting"  # see waiting_reason: the credit budget is spent
    COMPLETED = "completed"  # every item is final
    CANCELLED = "cancelled"


class BatchCounts(BaseModel):
    """Items per job status."""

    queued: int = 0
    running: int = 0
    waiting: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class BatchOut(BaseModel):
    """A batch as clients see it."""

    id: uuid.UUID
    name: str | None
    status: BatchStatus
    waiting_reason: str | None
    source: str
    total: int
    rejected: int
    counts: BatchCounts
    progress: float = Field(description="final items / total, from 0 to 1")
    credits_used: Credits
    credit_budget: Credits | None
    reuse: bool = True
    reused: int = Field(default=0, description="items that copied an earlier picture")
    credits_saved: Credits = Field(
        default=Decimal(0), description="what the reused items would have cost"
    )
    eta_seconds: float | None = Field(
        description="estimated seconds until every item is final, from the recent pace"
    )
    items_per_minute: float | None
    defaults: dict[str, Any]
    output_prefix: str | None
    key_template: str | None
    metadata: dict[str, Any]
    callback_url: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    cancelled_at: datetime | None
    results_url: str
    errors_url: str


ESTIMATE_NOTE = (
    "would_reuse is a prediction from the pictures already made for you and the subjects' "
    "validators (ETags) now; each item checks again when it runs, so the credits it costs "
    "may differ."
)


class BatchEstimate(BaseModel):
    """What a batch would be and cost (``dry_run``): nothing was stored or sent."""

    dry_run: bool = True
    items: int = Field(description="valid items: the jobs the batch would run")
    rejected: int = Field(description="invalid rows skip_invalid would skip")
    would_reuse: int = Field(
        description="items predicted to copy a picture already made for you (0 credits)"
    )
    calls: int = Field(description="items predicted to call Segmind: items - would_reuse")
    credits: Credits = Field(description="what the calls would cost: images x price per image")
    credits_saved: Credits = Field(description="what the reused items would have cost")
    max_calls_per_minute: int = Field(description="the fleet's per-minute cap on calls")
    estimated_seconds: float = Field(
        description="calls / max_calls_per_minute x 60: the least time the calls take at the cap"
    )
    note: str = ESTIMATE_NOTE


class BatchPage(BaseModel):
    """One page of a batch listing; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[BatchOut]
    next_cursor: str | None


class BatchUpdate(BaseModel):
    """What can change on a running batch."""

    model_config = ConfigDict(extra="forbid")

    credit_budget: PositiveCredits | None
