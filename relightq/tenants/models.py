"""Tenants and their API keys."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Date, ForeignKey, String, false
from sqlalchemy.orm import Mapped, mapped_column

from relightq.credits.amounts import ZERO, CreditAmount
from relightq.db import Base, UTCDateTime, utcnow


class Tenant(Base):
    """A customer; every job belongs to exactly one."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Operators may pause and resume the whole fleet, which affects every tenant.
    is_operator: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Signs deliveries to callback_url (registered endpoints have their own secrets).
    callback_secret: Mapped[str | None] = mapped_column(String(128), default=None)
    # Credits the tenant may spend per calendar month (UTC), set by an operator; None: no cap.
    monthly_credit_cap: Mapped[Decimal | None] = mapped_column(CreditAmount(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """A client credential, stored only as its SHA-256 hash."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The first characters, shown in listings so an operator can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class DashboardSession(Base):
    """A browser logged in to the dashboard with an API key; the cookie holds a random
    token, stored here only as its SHA-256, never the API key itself."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The key it was opened with: revoking that key ends the session too.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), default=None
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Every form carries it: a page of another site cannot post on the user's behalf.
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BucketGrant(Base):
    """A bucket (other than relightq's own) a tenant may read subjects from and write
    outputs to with relightq's credentials; granted by an operator, per tenant."""

    __tablename__ = "bucket_grants"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[str] = mapped_column(String(63), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TenantCreditMonth(Base):
    """What a tenant spent in one calendar month (UTC): the monthly cap's ledger, kept by
    the workers as jobs succeed (one row per tenant and month)."""

    __tablename__ = "tenant_credit_months"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[date] = mapped_column(Date, primary_key=True)  # its first day
    credits_used: Mapped[Decimal] = mapped_column(CreditAmount(), default=ZERO)
