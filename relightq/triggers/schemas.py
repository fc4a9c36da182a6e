"""What a trigger is made of, and what the sender gets back."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from relightq.batches.schemas import ITEM_ONLY_FIELDS, validate_defaults
from relightq.jobs.schemas import JobOptions

MAX_IMAGES_PER_EVENT = 100

ALLOWED: dict[str, str] = {
    "name": "2 to 64 lowercase letters, digits, - or _ (it is the URL: /v1/triggers/{name})",
    "scheme": "standard-webhooks or hmac-sha256",
    "secret": "the signing secret (required for hmac-sha256; made for you otherwise)",
    "mapping": "JMESPath expressions: images (required), external_id, fields.<job field>",
    "job": "a JSON object of job fields every created job starts from",
    "tolerance_seconds": (
        "an integer from 1 to 86400 (default 300 for standard-webhooks, 21600 for hmac-sha256)"
    ),
}


class SignatureScheme(StrEnum):
    """How a sender signs its events."""

    # webhook-id / webhook-timestamp / webhook-signature, verified by the reference library.
    STANDARD_WEBHOOKS = "standard-webhooks"
    # base64(HMAC-SHA256(secret, raw body)) in one header, as Shopify sends it.
    HMAC_SHA256 = "hmac-sha256"


# How far an event's timestamp may be from now. Standard Webhooks senders sign every try
# afresh, so the reference libraries' 5 minutes suffice. Shopify resends the original
# X-Shopify-Triggered-At on each of its retries (8 over 4 hours), so 5 minutes would
# refuse every retry after an outage; 6 hours covers that window. That header is not
# signed, so it never guarded against replay anyway: the body's digest does (a body a
# trigger has seen is a duplicate at any age; trigger_events rows are never deleted),
# and the tolerance only turns away a sender's honestly stale deliveries.
DEFAULT_TOLERANCE_SECONDS: dict[SignatureScheme, int] = {
    SignatureScheme.STANDARD_WEBHOOKS: 300,
    SignatureScheme.HMAC_SHA256: 6 * 3600,
}


class TriggerMapping(BaseModel):
    """Where in the event's JSON the images and job fields are (JMESPath)."""

    model_config = ConfigDict(extra="forbid")

    images: str = Field(description="a string or a list of image URLs, e.g. images[].src")
    external_id: str | None = Field(default=None, description="e.g. to_string(id)")
    fields: dict[str, str] = Field(
        default_factory=dict, description='job fields, e.g. {"prompt": "title"}'
    )

    @field_validator("images", "external_id")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value

    @field_validator("fields")
    @classmethod
    def _fields_compile(cls, value: dict[str, str]) -> dict[str, str]:
        per_item = sorted(ITEM_ONLY_FIELDS & value.keys())
        if per_item:
            raise ValueError(f"{', '.join(per_item)} come from images and external_id")
        unknown = sorted(value.keys() - JobOptions.model_fields.keys())
        if unknown:
            raise ValueError(f"jobs have no field {', '.join(unknown)}")
        for expression in value.values():
            _compile(expression)
        return value


def _compile(expression: str) -> None:
    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(f"is not a JMESPath expression: {exc}") from exc


class TriggerCreate(BaseModel):
    """A signed entry point that turns another system's events into jobs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,63}$")
    scheme: SignatureScheme
    secret: str | None = Field(default=None, min_length=16, max_length=512)
    signature_header: str = Field(default="X-Shopify-Hmac-Sha256", max_length=128)
    event_id_header: str = Field(default="X-Shopify-Event-Id", max_length=128)
    timestamp_header: str | None = Field(default="X-Shopify-Triggered-At", max_length=128)
    tolerance_seconds: int | None = Field(
        default=None,
        ge=1,
        le=86400,
        description="seconds an event's timestamp may be from now; "
        "default 300 for standard-webhooks, 21600 for hmac-sha256",
    )
    mapping: TriggerMapping
    job: dict[str, Any] = Field(default_factory=dict)

    @field_validator("job")
    @classmethod
    def _job_is_a_template(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        per_item = sorted(ITEM_ONLY_FIELDS & value.keys())
        if per_item:
            raise ValueError(f"{', '.join(per_item)} come from the event")
        validate_defaults(value)
        # Caught now, not as a 422 on every event the sender delivers (and retries).
        mapping = info.data.get("mapping")
        if "prompt" not in value and mapping is not None and "prompt" not in mapping.fields:
            raise ValueError("needs a prompt, unless mapping.fields maps one")
        return value


class TriggerOut(BaseModel):
    """A trigger; its secret is shown only when it is created."""

    id: uuid.UUID
    name: str
    url: str
    scheme: SignatureScheme
    signature_header: str | None
    event_id_header: str | None
    timestamp_header: str | None
    tolerance_seconds: int
    mapping: dict[str, Any]
    job: dict[str, Any]
    created_at: datetime
    secret: str | None = None


class TriggerAccepted(BaseModel):
    """What the sender gets: the jobs its event made (the same ones on a repeat)."""

    event_id: str
    duplicate: bool
    jobs: list[uuid.UUID]
