"""What the API accepts for a job and what it shows of one."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field, field_validator

from relightq.credits.amounts import Credits
from relightq.jobs.models import JobStatus
from relightq.netguard import BlockedAddress, check_url
from relightq.segmind.params import ALLOWED as PARAM_ALLOWED
from relightq.segmind.params import RelightParams

MAX_METADATA_BYTES = 16 * 1024

ALLOWED: dict[str, str] = {
    **PARAM_ALLOWED,
    "external_id": "text up to 256 characters, e.g. the SKU",
    "metadata": f"a JSON object up to {MAX_METADATA_BYTES // 1024} KiB",
    "callback_url": "an http(s) URL on a public address",
    "priority": "an integer from 0 (lowest) to 9 (highest)",
    "reuse": "true (copy an identical earlier picture instead of paying again) or false",
    "job_id": "a job id (UUID)",
    "batch_id": "a batch id (UUID)",
    "status": "one of " + ", ".join(s.value for s in JobStatus),
    "limit": "an integer from 1 to 200",
    "cursor": "a next_cursor value from a previous page",
}


def check_http_url(value: str) -> str:
    """Accept only absolute http(s) URLs with a host."""
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


def check_callback_url(value: str) -> str:
    """An http(s) URL relightq may call (not private, loopback or link-local)."""
    check_http_url(value)
    try:
        check_url(value, cached=True)
    except BlockedAddress as exc:
        raise ValueError(str(exc)) from exc
    return value


class JobOptions(RelightParams):
    """Everything in a job request except the subject image."""

    external_id: str | None = Field(default=None, max_length=256)
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = Field(default=None, max_length=2048)
    priority: int = Field(default=5, ge=0, le=9)
    # Result reuse: an earlier picture of the same content and parameters is copied
    # instead of bought again; false buys a new one (a null seed never reuses).
    reuse: bool = True

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise ValueError(f"must serialise to at most {MAX_METADATA_BYTES} bytes")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_is_http(cls, value: str | None) -> str | None:
        return None if value is None else check_callback_url(value)

    def relight_params(self) -> RelightParams:
        """The upstream fields alone."""
        return RelightParams.model_validate(
            self.model_dump(include=set(RelightParams.model_fields))
        )


class JobCreate(JobOptions):
    """A JSON job request: the subject is an http(s) URL or an s3:// URI."""

    subject_image: str = Field(max_length=4096)

    @field_validator("subject_image")
    @classmethod
    def _subject_is_url_or_s3(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme == "s3":
            if not parsed.netloc or not parsed.path.strip("/"):
                raise ValueError("an s3:// URI must name a bucket and a key")
            return value
        if parsed.scheme in ("http", "https") and parsed.hostname:
            return value
        raise ValueError("must be an http(s) URL or an s3://bucket/key URI")


class ErrorOut(BaseModel):
    """Why a job failed."""

    code: str
    message: str


class OutputOut(BaseModel):
    """One relit image."""

    index: int
    s3_uri: str
    url: str
    content_type: str
    bytes: int
    sha256: str


class AttemptOut(BaseModel):
    """One upstream call; ``counted`` is false for calls that used no attempt (401, 406, 429)."""

    number: int = Field(description="the call's place in the job's log, from 1, oldest first")
    counted: bool
    outcome: str
    http_status: int | None
    error_code: str | None
    error_message: str | None
    upstream_request_id: str | None = Field(
        default=None, description="Segmind v2: the request this call submitted or polled"
    )
    started_at: datetime
    finished_at: datetime


class JobOut(BaseModel):
    """A job as clients see it."""

    id: uuid.UUID
    status: JobStatus
    params: dict[str, Any]
    subject_image: str
    attempts: int
    attempt_log: list[AttemptOut]
    error: ErrorOut | None
    waiting_reason: str | None
    upstream_request_id: str | None = Field(
        default=None,
        description="Segmind v2: the request submitted for this job and not yet collected "
        "(the receipt any worker collects it with)",
    )
    outputs: list[OutputOut]
    credits_used: Credits = Field(description="credits paid to Segmind for this job")
    reuse: bool = Field(
        default=True, description="false: the client asked for a new picture whatever exists"
    )
    reused_from: uuid.UUID | None = Field(
        default=None,
        description="the earlier job whose outputs were copied instead of calling Segmind",
    )
    credits_saved: Credits = Field(
        default=Decimal(0), description="what the copied outputs would have cost"
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    batch_id: uuid.UUID | None
    external_id: str | None
    metadata: dict[str, Any]
    callback_url: str | None
    priority: int


class JobPage(BaseModel):
    """One page of a job listing; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[JobOut]
    next_cursor: str | None
