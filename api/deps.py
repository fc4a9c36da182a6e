"""Request-scoped dependencies: a database session, the calling tenant, the store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from relightq.db import get_sessionmaker
from relightq.errors import Unauthorized
from relightq.logs import note
from relightq.storage import Storage, get_storage
from relightq.tenants.models import Tenant
from relightq.tenants.ratelimit import check_rate
from relightq.tenants.service import authenticate

_api_key_header = APIKeyHeader(name="x-api-key", auto_error=False, description="relightq API key")
_bearer = HTTPBearer(auto_error=False, description="relightq API key as a bearer token")


def get_session() -> Iterator[Session]:
    """A session for one request; routes that write commit it themselves before answering."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()  # anything the route did not commit is discarded
        session.close()


DbSession = Annotated[Session, Depends(get_session)]


def current_tenant(
    db: DbSession,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Tenant:
    """The tenant whose key came in ``Authorization: Bearer`` or ``x-api-key``."""
    return tenant_for_key(db, bearer.credentials if bearer else api_key)


def tenant_for_key(db: Session, key: str | None) -> Tenant:
    """The key's tenant, counted against its rate limit; Unauthorized or RateLimited."""
    tenant = authenticate(db, key) if key else None
    if tenant is None or key is None:
        raise Unauthorized
    check_rate(key)
    note(tenant_id=tenant.id)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
CurrentStorage = Annotated[Storage, Depends(get_storage)]
