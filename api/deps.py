"""Request-scoped dependencies: a database session, the calling tenant, the store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, Security
from fastapi.concurrency import run_in_threadpool
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


async def get_session() -> AsyncIterator[Session]:
    """A session for one request, and the one place its transaction is committed.

    The route runs and its answer is built; then this commits, before the answer is sent
    (``scope="function"`` below). A commit that fails raises from here into the error
    handlers, so the client gets a 503 or 500, never a 2xx for writes that were lost. An
    exception from the route rolls everything back. Tasks queued with
    ``enqueue_after_commit`` are sent by this commit and dropped by the rollback.
    Routes commit themselves only where an answer must wait on committed work
    (``Prefer: wait``).

    Async, with the commit and close in one worker-thread hop: a sync generator costs a
    hop to open (a session connects only at its first statement) and another to close.
    """
    session = get_sessionmaker()()
    try:
        yield session
    except BaseException:
        await run_in_threadpool(_roll_back_and_close, session)
        raise
    await run_in_threadpool(_commit_and_close, session)


def _commit_and_close(session: Session) -> None:
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _roll_back_and_close(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


# scope="function": the exit code runs as soon as the route has returned, before the
# response is sent (the default, "request", runs it after the response is sent).
DbSession = Annotated[Session, Depends(get_session, scope="function")]


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


def get_explicit_session() -> Iterator[Session]:
    """A session the route commits itself, for a route that must commit mid-request and
    answers failures without raising (the Segmind-compatible call, which waits for the
    job): whatever it did not commit is rolled back."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


ExplicitSession = Annotated[Session, Depends(get_explicit_session, scope="function")]
CurrentTenant = Annotated[Tenant, Depends(current_tenant)]


async def current_storage() -> Storage:
    """The process's store (built once; async: no worker-thread hop to read a cache)."""
    return get_storage()


CurrentStorage = Annotated[Storage, Depends(current_storage)]
