"""Per-API-key request rate limits, shared by every API process through Redis.

Uses the ``limits`` library (the engine behind slowapi and Flask-Limiter): a moving
window in Redis, so the limit holds across API replicas and never resets in a burst at
a window boundary.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from relightq.errors import RateLimited
from relightq.settings import get_settings

log = logging.getLogger(__name__)


@lru_cache
def _limiter() -> tuple[MovingWindowRateLimiter, RateLimitItem] | None:
    settings = get_settings()
    if not settings.rate_limit:
        return None
    redis_url = settings.fleet_redis_url
    return limiter_for(redis_url or "memory://", settings.rate_limit)


def limiter_for(storage_url: str, limit: str) -> tuple[MovingWindowRateLimiter, RateLimitItem]:
    """A moving-window limiter on ``storage_url`` whose storage errors are StorageError."""
    storage = storage_from_string(storage_url, wrap_exceptions=True)
    return MovingWindowRateLimiter(storage), parse(limit)


def _retry_after(*identity: str) -> int | None:
    """Count one request for ``identity``: None while within RATE_LIMIT, else the seconds
    until the window lets it in again. Shared by every limit (keys, dashboards, triggers),
    each under its own identity."""
    limiter = _limiter()
    if limiter is None:
        return None
    strategy, item = limiter
    try:
        if strategy.hit(item, "relightq", *identity):
            return None
        reset = strategy.get_window_stats(item, "relightq", *identity).reset_time
    except StorageError as exc:
        # Fail open: PostgreSQL, not Redis, holds the jobs, so requests are still served
        # (and work published later by the sweeper) while Redis is away; /readyz says so.
        # Only the error's class is logged: its text may name the Redis URL.
        cause = type(exc.storage_error).__name__
        log.warning("rate limit not checked, Redis unavailable: %s", cause)
        return None
    return max(1, math.ceil(reset - time.time()))


def check_rate(api_key: str) -> None:
    """Count one request for ``api_key``; RateLimited (429 + Retry-After) past the limit."""
    # Identified by a digest, so the key itself is never written to Redis.
    wait = _retry_after(hashlib.sha256(api_key.encode()).hexdigest()[:32])
    if wait is not None:
        raise RateLimited(get_settings().rate_limit, wait)


def check_trigger_rate(name: str) -> None:
    """Count one request to trigger ``name`` (POST /v1/triggers/{name} carries no API key
    to count); RateLimited past RATE_LIMIT."""
    # Its own namespace: a trigger's count never adds to an API key's, nor the other way.
    wait = _retry_after("trigger", name)
    if wait is not None:
        raise RateLimited(get_settings().rate_limit, wait, per="trigger")
