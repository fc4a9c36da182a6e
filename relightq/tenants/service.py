"""Creating tenants and keys, and authenticating a presented key."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from relightq.tenants.models import ApiKey, Tenant

KEY_PREFIX = "rq_"


def hash_key(key: str) -> str:
    """SHA-256 of a key.

    Keys are 256 random bits, so a fast hash is enough: there is nothing to brute-force,
    and lookups stay one indexed equality (the scheme GitHub and Stripe tokens use).
    """
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant: Tenant) -> str:
    """Store a new key for ``tenant`` and return its plaintext, which is never kept."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, prefix=plaintext[:10], key_hash=hash_key(plaintext)))
    session.flush()
    return plaintext


def get_or_create_tenant(session: Session, name: str, *, operator: bool = False) -> Tenant:
    """The tenant called ``name``, created if new; ``operator`` grants fleet control."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, is_operator=operator)
        session.add(tenant)
    elif operator:
        tenant.is_operator = True
    session.flush()
    return tenant


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant owning an unrevoked ``key``, or None."""
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
