"""What the API accepts for webhook endpoints and shows of events and deliveries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relightq.jobs.schemas import check_callback_url
from relightq.webhooks.models import DeliveryStatus, EventType

ALLOWED: dict[str, str] = {
    "url": "an http(s) URL on a public address (or one the operator allows)",
    "event_types": "a list of " + ", ".join(t.value for t in EventType) + "; empty for all",
    "description": "text up to 200 characters",
    "enabled": "true or false",
    "endpoint_id": "a webhook endpoint id (UUID)",
    "event_id": "an event id (UUID)",
    "delivery_id": "a delivery id (UUID)",
    "status": "pending, sending, delivered or failed",
    "type": "one of " + ", ".join(t.value for t in EventType),
    "limit": "an integer from 1 to 200",
    "cursor": "a next_cursor value from a previous page",
}


class EndpointCreate(BaseModel):
    """A URL to tell about some event types."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    event_types: list[EventType] = Field(default_factory=list)
    description: str | None = Field(default=None, max_length=200)

    @field_validator("url")
    @classmethod
    def _public_http(cls, value: str) -> str:
        return check_callback_url(value)


class EndpointUpdate(BaseModel):
    """Change an endpoint; enabling it again clears why it was disabled."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2048)
    event_types: list[EventType] | None = None
    description: str | None = Field(default=None, max_length=200)
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _public_http(cls, value: str | None) -> str | None:
        return None if value is None else check_callback_url(value)


class EndpointOut(BaseModel):
    """An endpoint (its secret only at creation and from /secret)."""

    id: uuid.UUID
    url: str
    event_types: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    secret: str | None = Field(
        default=None, description="the whsec_ signing secret; shown when the endpoint is created"
    )


class SecretOut(BaseModel):
    """A Standard Webhooks signing secret, for the receiver's verifier."""

    secret: str


class AttemptOut(BaseModel):
    """One HTTP try."""

    model_config = ConfigDict(from_attributes=True)

    started_at: datetime
    latency_ms: int
    http_status: int | None
    error_class: str | None
    error_message: str | None


class DeliveryOut(BaseModel):
    """One event to one target, with every try."""

    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    msg_id: str
    endpoint_id: uuid.UUID | None
    target: str
    url: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    attempt_log: list[AttemptOut]


class EventOut(BaseModel):
    """An event and where it went."""

    id: uuid.UUID
    msg_id: str
    type: str
    payload: dict[str, Any]
    created_at: datetime
    deliveries: list[DeliveryOut]


class EventPage(BaseModel):
    """A page of events, newest first."""

    items: list[EventOut]
    next_cursor: str | None


class DeliveryPage(BaseModel):
    """A page of deliveries, newest first."""

    items: list[DeliveryOut]
    next_cursor: str | None
