"""Endpoints a tenant registered, the events relightq emitted, and every delivery try."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from relightq.db import Base, UTCDateTime, utcnow
from relightq.jobs.models import JSONType


class EventType(StrEnum):
    """What a webhook can announce."""

    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    BATCH_COMPLETED = "batch.completed"
    THROTTLE_PAUSED = "throttle.paused"
    THROTTLE_RESUMED = "throttle.resumed"
    CREDITS_LOW = "credits.low"


class DeliveryStatus(StrEnum):
    """Where one event's delivery to one target is."""

    PENDING = "pending"  # due at next_attempt_at
    SENDING = "sending"  # a worker holds it until lease_expires_at
    DELIVERED = "delivered"
    FAILED = "failed"  # retries exhausted, 410, endpoint disabled or address blocked


class WebhookEndpoint(Base):
    """A URL a tenant registered for some event types, with its signing secret."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(200), default=None)
    # Empty: every event type.
    event_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # "whsec_" + base64: the Standard Webhooks secret format.
    secret: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class WebhookEvent(Base):
    """One thing that happened, for one tenant; its msg_id is the webhook-id header."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    # The body sent: {"type", "timestamp", "data"}.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def msg_id(self) -> str:
        """The webhook-id: the same on every retry, so receivers can deduplicate."""
        return f"msg_{self.id.hex}"


class WebhookDelivery(Base):
    """One event to one target (a registered endpoint or a job's callback_url)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # One delivery per event and target: emitting twice cannot send twice.
        UniqueConstraint("event_id", "target"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), default=None
    )
    # "endpoint:<id>" or "callback"
    target: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    # Tries in the current round; a redelivery by hand starts a new round.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # As a job's: the token tells the holder's writes apart from a later holder's, the
    # holder names the process (relightq.leases).
    lease_token: Mapped[uuid.UUID | None] = mapped_column(default=None)
    lease_holder: Mapped[str | None] = mapped_column(String(400), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class WebhookAttempt(Base):
    """One HTTP try of a delivery, with how it ended."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "started_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    latency_ms: Mapped[int] = mapped_column(Integer)
    http_status: Mapped[int | None] = mapped_column(Integer, default=None)
    # None on 2xx; else "http_status", "timeout", "connect_error", "blocked_address", ...
    error_class: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
