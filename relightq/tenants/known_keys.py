"""Keys an API process checked lately, so that a request need not look its key up again.

Each API process keeps the tenant of every key it authenticated (and the buckets granted
to it) for at most ``KEEP_SECONDS``, and only while the deployment's credentials
generation (a random value in Redis) is the one it read before the lookup. Revoking a
key, every change to a tenant's row (made operator, a monthly cap, a new callback secret)
and to its grants replaces that value once its transaction has committed, so every
process forgets what it knew at its next request: a revoked key is refused at once, as
before. One Redis GET per request replaces a PostgreSQL round trip and the loading of two
rows (py-spy put the lookup at a sixth of a submit's CPU). Without Redis (the demo), or
while it is unreachable, nothing is kept and every request looks its key up.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import redis
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from relightq.settings import get_settings
from relightq.tenants.models import Tenant

log = logging.getLogger(__name__)

# A random value, replaced at every change: a counter would start again at 0 after Redis
# lost it and make entries kept under an old 0 look current.
GENERATION_KEY = "relightq:credentials:generation"
# Where generation() keeps what it read, in the session's info.
_GENERATION_READ = "relightq.credentials_generation"
# A backstop for a bump that could not reach Redis (it was down when a key was revoked).
KEEP_SECONDS = 30.0
_TENANT_COLUMNS = [prop.key for prop in inspect(Tenant).column_attrs]


@dataclass(frozen=True)
class _Known:
    generation: bytes
    until: float
    value: Any


_known: dict[tuple[str, object], _Known] = {}
_lock = threading.Lock()


@lru_cache
def _redis() -> redis.Redis | None:
    url = get_settings().fleet_redis_url
    return redis.Redis.from_url(url, socket_timeout=2) if url else None


def generation(session: Session) -> bytes | None:
    """The credentials generation as ``session``'s unit of work read it (once: a submit
    asks for its key and then for its grants), or None when there is nothing to check it
    with. Read before anything it vouches for is looked up, so never too new."""
    if _GENERATION_READ not in session.info:
        session.info[_GENERATION_READ] = current_generation()
    read: bytes | None = session.info[_GENERATION_READ]
    return read


def current_generation() -> bytes | None:
    """The credentials generation in Redis now (drawn if missing), or None without Redis."""
    client = _redis()
    if client is None:
        return None
    try:
        value = cast(bytes | None, client.get(GENERATION_KEY))
        if value is None:
            # Never set, or Redis lost it (flushed, restarted without its AOF): a new
            # random one, so nothing kept under an earlier value is trusted again.
            client.set(GENERATION_KEY, uuid.uuid4().hex, nx=True)
            value = cast(bytes | None, client.get(GENERATION_KEY))
    except redis.RedisError as exc:
        log.warning(
            "credentials generation unreadable (%s): keys are looked up", type(exc).__name__
        )
        return None
    return value


def tenant_for(key_hash: str, current: bytes | None) -> Tenant | None:
    """The tenant of a key known under the ``current`` generation, or None."""
    values = _recall(("key", key_hash), current)
    return None if values is None else Tenant(**values)  # each request its own copy


def remember(key_hash: str, tenant: Tenant, read_before_lookup: bytes | None) -> None:
    """Keep a key's tenant under the generation read *before* it was looked up, so a
    change committed in between is never kept."""
    values = {name: getattr(tenant, name) for name in _TENANT_COLUMNS}
    _keep(("key", key_hash), values, read_before_lookup)


def grants_for(tenant_id: uuid.UUID, current: bytes | None) -> frozenset[str] | None:
    """The buckets granted to a tenant as known under the ``current`` generation."""
    grants: frozenset[str] | None = _recall(("grants", tenant_id), current)
    return grants


def remember_grants(
    tenant_id: uuid.UUID, grants: frozenset[str], read_before_lookup: bytes | None
) -> None:
    """Keep a tenant's grants under the generation read before they were looked up."""
    _keep(("grants", tenant_id), grants, read_before_lookup)


def _recall(what: tuple[str, object], current: bytes | None) -> Any:
    if current is None:
        return None
    with _lock:
        known = _known.get(what)
    if known is None or known.generation != current or known.until < time.monotonic():
        return None
    return known.value


def _keep(what: tuple[str, object], value: object, generation_read: bytes | None) -> None:
    if generation_read is None:
        return
    with _lock:
        if len(_known) > 10_000:  # keys are few; a flood of distinct ones is not kept
            _known.clear()
        _known[what] = _Known(generation_read, time.monotonic() + KEEP_SECONDS, value)


def changed_on_commit(session: Session) -> None:
    """Bump the generation once ``session``'s transaction commits (not before: a process
    could read the old rows under the new generation and keep them); nothing if it rolls
    back."""
    settled = False

    def committed(_session: Session) -> None:
        nonlocal settled
        if not settled:
            settled = True
            _bump()

    def rolled_back(_session: Session) -> None:
        nonlocal settled
        settled = True

    event.listen(session, "after_commit", committed)
    event.listen(session, "after_rollback", rolled_back)


def _bump() -> None:
    client = _redis()
    if client is None:
        return
    try:
        client.set(GENERATION_KEY, uuid.uuid4().hex)
    except redis.RedisError as exc:
        log.warning(
            "credentials generation not bumped (%s): API processes may accept the old "
            "credentials for up to %.0f s",
            type(exc).__name__,
            KEEP_SECONDS,
        )
