"""Creating tenants and keys, and authenticating a presented key."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from relightq.db import utcnow
from relightq.errors import FieldProblem
from relightq.settings import get_settings
from relightq.tenants import known_keys
from relightq.tenants.models import ApiKey, BucketGrant, Tenant

KEY_PREFIX = "rq_"
# Where usable_buckets() keeps what it read, in the session's info.
_GRANTS_SEEN = "relightq.usable_buckets"
# Characters of a key kept in clear to tell keys apart in listings and to revoke by.
PREFIX_LENGTH = 10


def hash_key(key: str) -> str:
    """SHA-256 of a key.

    Keys are 256 random bits, so a fast hash is enough: there is nothing to brute-force,
    and lookups stay one indexed equality (the scheme GitHub and Stripe tokens use).
    """
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant: Tenant) -> str:
    """Store a new key for ``tenant`` and return its plaintext, which is never kept."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(tenant_id=tenant.id, prefix=plaintext[:PREFIX_LENGTH], key_hash=hash_key(plaintext))
    )
    session.flush()
    return plaintext


def get_or_create_tenant(session: Session, name: str, *, operator: bool = False) -> Tenant:
    """The tenant called ``name``, created if new; ``operator`` grants fleet control."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, is_operator=operator)
        session.add(tenant)
    elif operator and not tenant.is_operator:
        tenant.is_operator = True
        known_keys.changed_on_commit(session)
    session.flush()
    return tenant


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant owning an unrevoked ``key``, or None; a key this process checked under
    the current credentials generation is not looked up again (relightq.tenants.known_keys)."""
    key_hash = hash_key(key)
    current = known_keys.generation(session)
    tenant = known_keys.tenant_for(key_hash, current)
    if tenant is not None:
        return tenant
    found = authenticate_key(session, key)
    if found is None:
        return None
    known_keys.remember(key_hash, found[0], current)
    return found[0]


def authenticate_key(session: Session, key: str) -> tuple[Tenant, ApiKey] | None:
    """The tenant and key row of an unrevoked ``key``, or None."""
    row = session.execute(
        select(Tenant, ApiKey)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    return (row[0], row[1]) if row else None


def revoke_key(session: Session, key_or_prefix: str) -> list[ApiKey]:
    """Revoke the key given whole, or every unrevoked key shown with that prefix (as
    `relightq keys list` prints it); returns the keys revoked. Dashboard sessions opened
    with them end at once."""
    if len(key_or_prefix) > PREFIX_LENGTH:
        where = ApiKey.key_hash == hash_key(key_or_prefix)
    else:
        where = ApiKey.prefix == key_or_prefix
    keys = list(session.scalars(select(ApiKey).where(where, ApiKey.revoked_at.is_(None))))
    for key in keys:
        key.revoked_at = utcnow()
    session.flush()
    if keys:
        known_keys.changed_on_commit(session)
    return keys


def list_keys(session: Session) -> list[tuple[str, ApiKey]]:
    """Every key's tenant name and row (never the key itself), by tenant, newest first."""
    rows = session.execute(
        select(Tenant.name, ApiKey)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .order_by(Tenant.name, ApiKey.created_at.desc())
    )
    return [(name, key) for name, key in rows]


def usable_buckets(session: Session, tenant_id: uuid.UUID) -> frozenset[str] | None:
    """The buckets besides relightq's own that ``tenant_id`` may name, or None for any
    (RELIGHTQ_REQUIRE_BUCKET_GRANTS=false). Read once per session: a batch asks for
    every row, a trigger event for every image."""
    if not get_settings().require_bucket_grants:
        return None
    known: dict[uuid.UUID, frozenset[str]] = session.info.setdefault(_GRANTS_SEEN, {})
    if tenant_id not in known:
        current = known_keys.generation(session)  # and kept by the process (known_keys)
        grants = known_keys.grants_for(tenant_id, current)
        if grants is None:
            grants = granted_buckets(session, tenant_id)
            known_keys.remember_grants(tenant_id, grants, current)
        known[tenant_id] = grants
    return known[tenant_id]


def ungranted_bucket_problem(
    session: Session, tenant_id: uuid.UUID, field: str, bucket: str, allowed: str
) -> FieldProblem | None:
    """A problem when ``bucket`` (not relightq's own) was not granted to the tenant."""
    granted = usable_buckets(session, tenant_id)
    if granted is None or bucket in granted:
        return None
    return FieldProblem(
        field,
        f"names bucket {bucket}, which is not granted to you (an operator grants it: "
        f"relightq buckets grant <tenant> {bucket})",
        allowed,
    )


def granted_buckets(session: Session, tenant_id: uuid.UUID) -> frozenset[str]:
    """The buckets besides relightq's own that ``tenant_id`` may use."""
    return frozenset(
        session.scalars(select(BucketGrant.bucket).where(BucketGrant.tenant_id == tenant_id))
    )


def grant_bucket(session: Session, tenant: Tenant, bucket: str) -> None:
    """Let ``tenant`` read subjects from and write outputs to ``bucket`` (idempotent)."""
    session.info.pop(_GRANTS_SEEN, None)
    session.execute(
        insert(BucketGrant)
        .values(tenant_id=tenant.id, bucket=bucket, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    known_keys.changed_on_commit(session)


def revoke_bucket(session: Session, tenant: Tenant, bucket: str) -> bool:
    """Take ``bucket`` back from ``tenant``; False if it had no such grant."""
    session.info.pop(_GRANTS_SEEN, None)
    done = session.execute(
        delete(BucketGrant).where(BucketGrant.tenant_id == tenant.id, BucketGrant.bucket == bucket)
    )
    known_keys.changed_on_commit(session)
    return bool(getattr(done, "rowcount", 0))


def list_grants(session: Session) -> list[tuple[str, str]]:
    """Every (tenant name, bucket) grant, by tenant then bucket."""
    rows = session.execute(
        select(Tenant.name, BucketGrant.bucket)
        .join(BucketGrant, BucketGrant.tenant_id == Tenant.id)
        .order_by(Tenant.name, BucketGrant.bucket)
    )
    return [(name, bucket) for name, bucket in rows]
