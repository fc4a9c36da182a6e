"""Per-API-key request rate limits, shared by every API process through Redis.

Uses the ``limits`` library (the engine behind slowapi and Flask-Limiter): a moving
window in Redis, so the limit holds across API replicas and never resets in a burst at
a window boundary.
"""

from __future__ import annotations

import hashlib
import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from relightq.errors import RateLimited
from relightq.settings import get_settings


@lru_cache
def _limiter() -> tuple[MovingWindowRateLimiter, RateLimitItem] | None:
    settings = get_settings()
    if not settings.rate_limit:
        return None
    redis_url = settings.fleet_redis_url
    storage = storage_from_string(redis_url if redis_url else "memory://")
    return MovingWindowRateLimiter(storage), parse(settings.rate_limit)


def check_rate(api_key: str) -> None:
    """Count one request for ``api_key``; RateLimited (429 + Retry-After) past the limit."""
    limiter = _limiter()
    if limiter is None:
        return
    strategy, item = limiter
    # Identified by a digest, so the key itself is never written to Redis.
    identity = hashlib.sha256(api_key.encode()).hexdigest()[:32]
    if strategy.hit(item, "relightq", identity):
        return
    reset = strategy.get_window_stats(item, "relightq", identity).reset_time
    raise RateLimited(get_settings().rate_limit, max(1, math.ceil(reset - time.time())))
