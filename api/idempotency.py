"""Idempotency-Key for the routes that create things (docs/concepts/jobs.md, "Idempotent
submission")."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.deps import CurrentTenant, DbSession
from relightq.idempotency import service
from relightq.idempotency.service import ALLOWED, HEADER

REPLAYED_HEADER = "Idempotent-Replayed"
# The header as the OpenAPI documents it on every route that honours it (the routes read
# it from the request themselves, so FastAPI would not list it).
OPENAPI_PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Retrying with the same key and body replays the first answer "
    f"({REPLAYED_HEADER}: true) and creates nothing more; the same key with another body "
    f"is a 422 idempotency_key_reused. Kept at least 24 h, per tenant. {ALLOWED}.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def key_of(headers: Any) -> str | None:
    """The request's Idempotency-Key, if it sent one."""
    key: str | None = headers.get(HEADER)
    return key


async def replay_or_claim(
    db: Session, tenant_id: uuid.UUID, key: str | None, endpoint: str, request: Any
) -> JSONResponse | None:
    """The first answer to ``key`` if there was one; else claim the key for this request.

    In a worker thread: with a concurrent same-key request the INSERT waits for it.
    """
    if key is None:
        return None
    replay = await run_in_threadpool(
        service.begin, db, tenant_id, key, endpoint, service.fingerprint(request)
    )
    if replay is None:
        return None
    headers = {REPLAYED_HEADER: "true"}
    if replay.location:
        headers["Location"] = replay.location
    return JSONResponse(replay.body, status_code=replay.status_code, headers=headers)


def remember(
    db: Session,
    tenant_id: uuid.UUID,
    key: str | None,
    status_code: int,
    answer: BaseModel,
    location: str | None,
) -> None:
    """Keep the answer with the key (same transaction as what the request created)."""
    if key is not None:
        service.complete(db, tenant_id, key, status_code, answer.model_dump(mode="json"), location)


@dataclass
class Idempotency:
    """A create request's Idempotency-Key (if it sent one), bound to its tenant, session
    and endpoint: the route claims it with the request's content, then stores its answer."""

    db: Session
    tenant_id: uuid.UUID
    key: str | None
    endpoint: str

    async def replay_or_claim(self, request: Any) -> JSONResponse | None:
        """The first answer to the key, or None once the key is claimed for ``request``."""
        return await replay_or_claim(self.db, self.tenant_id, self.key, self.endpoint, request)

    def remember(self, status_code: int, answer: BaseModel, location: str | None) -> None:
        """Keep the answer with the key, in the transaction of what the request made."""
        remember(self.db, self.tenant_id, self.key, status_code, answer, location)


def idempotency_for(endpoint: str) -> Callable[..., Awaitable[Idempotency]]:
    """The dependency giving a create route on ``endpoint`` its Idempotency."""

    # Async: it only reads a header (a sync dependency costs a worker-thread hop).
    async def idempotency(request: Request, tenant: CurrentTenant, db: DbSession) -> Idempotency:
        return Idempotency(db, tenant.id, key_of(request.headers), endpoint)

    return idempotency
