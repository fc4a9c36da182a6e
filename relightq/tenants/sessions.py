"""Dashboard sessions: log in with an API key, then a random cookie token stands for it."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from relightq.db import utcnow
from relightq.tenants.models import ApiKey, DashboardSession, Tenant
from relightq.tenants.service import authenticate_key

SESSION_HOURS = 12


@dataclass(frozen=True)
class LoggedIn:
    """Who a session cookie belongs to, and the CSRF token its forms must carry."""

    tenant: Tenant
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def log_in(session: Session, api_key: str) -> str | None:
    """A new session token for a valid API key, or None."""
    found = authenticate_key(session, api_key)
    if found is None:
        return None
    tenant, key = found
    token = secrets.token_urlsafe(32)
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at < utcnow()))
    session.add(
        DashboardSession(
            tenant_id=tenant.id,
            api_key_id=key.id,
            token_hash=_digest(token),
            csrf_token=secrets.token_urlsafe(32),
            expires_at=utcnow() + timedelta(hours=SESSION_HOURS),
        )
    )
    session.flush()
    return token


def current(session: Session, token: str | None) -> LoggedIn | None:
    """The tenant of a live session token, or None."""
    if not token:
        return None
    # Only while the key it was opened with is not revoked.
    row = session.scalar(
        select(DashboardSession)
        .join(ApiKey, ApiKey.id == DashboardSession.api_key_id)
        .where(
            DashboardSession.token_hash == _digest(token),
            DashboardSession.expires_at > utcnow(),
            ApiKey.revoked_at.is_(None),
        )
    )
    if row is None:
        return None
    tenant = session.get(Tenant, row.tenant_id)
    return LoggedIn(tenant, row.csrf_token) if tenant else None


def log_out(session: Session, token: str | None) -> None:
    """End a session."""
    if token:
        session.execute(
            delete(DashboardSession).where(DashboardSession.token_hash == _digest(token))
        )
