"""Idempotency-Key with Stripe's semantics, kept in the request's own transaction.

The key row is inserted in the same transaction that stores the job or batch and its
answer, so: a request that fails (validation, crash) leaves no key and may be retried;
a concurrent request with the same key waits on the row's unique index until the first
commits, then gets its answer; the same key with a different request is a 422.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from relightq.db import utcnow
from relightq.errors import FieldProblem, IdempotencyKeyReused, InvalidInput
from relightq.idempotency.models import IdempotencyKey
from relightq.settings import get_settings

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
ALLOWED = "1 to 255 printable ASCII characters, e.g. a UUID"
# The key's format is fine when it is reused: what is allowed is about the request.
REUSE_ALLOWED = (
    "the same endpoint and body as the first request with this key, or a new key for a "
    "different request"
)


@dataclass(frozen=True)
class Replay:
    """The first answer given to a key."""

    status_code: int
    body: Any
    location: str | None


def fingerprint(request: Any) -> str:
    """SHA-256 of a request's canonical JSON form (keys sorted, files as their digests)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> None:
    """Refuse keys that are empty, too long or not printable ASCII."""
    if not (0 < len(key) <= MAX_KEY_LENGTH) or not all(32 <= ord(c) < 127 for c in key):
        raise InvalidInput([FieldProblem(HEADER, "is not a valid idempotency key", ALLOWED)])


def begin(
    session: Session, tenant_id: uuid.UUID, key: str, endpoint: str, request_hash: str
) -> Replay | None:
    """Claim ``key`` for this request (None), or the answer it already got (a Replay)."""
    check_key(key)
    now = utcnow()
    expired = (
        (IdempotencyKey.tenant_id == tenant_id)
        & (IdempotencyKey.key == key)
        & (IdempotencyKey.expires_at < now)
    )
    session.execute(delete(IdempotencyKey).where(expired))  # an expired key is new again
    ttl = timedelta(hours=get_settings().idempotency_ttl_hours)
    inserted = session.scalar(
        insert(IdempotencyKey)
        .values(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            key=key,
            endpoint=endpoint,
            request_hash=request_hash,
            created_at=now,
            expires_at=now + ttl,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
        .returning(IdempotencyKey.id)
    )
    if inserted is not None:
        return None
    first = session.scalars(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
        )
    ).one()
    if first.endpoint != endpoint or first.request_hash != request_hash:
        raise IdempotencyKeyReused(
            f"this {HEADER} was already used with a different request "
            f"({first.endpoint} at {first.created_at.isoformat()}); use a new key",
            [FieldProblem(HEADER, "was used with different parameters", REUSE_ALLOWED)],
        )
    assert first.status_code is not None  # stored in the same transaction as the key
    return Replay(first.status_code, first.response_body, first.location)


def complete(
    session: Session,
    tenant_id: uuid.UUID,
    key: str,
    status_code: int,
    body: Any,
    location: str | None,
) -> None:
    """Store the answer with the key, before the caller commits both."""
    row = session.scalars(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
        )
    ).one()
    row.status_code = status_code
    row.response_body = body
    row.location = location
    session.flush()


def forget_expired_keys(session: Session) -> int:
    """Delete keys past their time (the sweeper); returns how many."""
    done = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < utcnow()))
    return int(done.rowcount)  # type: ignore[attr-defined]
