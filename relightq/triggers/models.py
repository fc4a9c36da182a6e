"""Inbound triggers and the events they already turned into jobs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from relightq.db import Base, UTCDateTime, utcnow
from relightq.jobs.models import JSONType


class Trigger(Base):
    """A named, signed entry point (POST /v1/triggers/{name}) that makes jobs from events."""

    __tablename__ = "triggers"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # In the URL senders call, which carries no API key: unique across tenants.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    scheme: Mapped[str] = mapped_column(String(32))
    secret: Mapped[str] = mapped_column(Text)
    # How the HMAC scheme finds its signature, event id and timestamp.
    signature_header: Mapped[str | None] = mapped_column(String(128), default=None)
    event_id_header: Mapped[str | None] = mapped_column(String(128), default=None)
    timestamp_header: Mapped[str | None] = mapped_column(String(128), default=None)
    tolerance_seconds: Mapped[int] = mapped_column(Integer, default=300)
    # JMESPath expressions: images, external_id, and job fields.
    mapping: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # Job fields every created job starts from.
    job_template: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TriggerEvent(Base):
    """An event id a trigger has seen, with the jobs it made: a repeat makes none."""

    __tablename__ = "trigger_events"
    __table_args__ = (
        UniqueConstraint("trigger_id", "event_id"),
        Index("ix_trigger_events_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    trigger_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("triggers.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(255))
    job_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
