"""Request rate limits per trigger: POST /v1/triggers/{name} carries no API key to count.

The same moving-window limiter and RATE_LIMIT as the per-key limit (shared through
Redis by every API process), counted under the trigger's name instead of a key.
"""

from __future__ import annotations

import logging
import math
import time

from limits.errors import StorageError

from relightq.errors import RelightqError
from relightq.settings import get_settings
from relightq.tenants import ratelimit

log = logging.getLogger(__name__)

# Its own namespace: a trigger's count never adds to an API key's, nor the other way.
NAMESPACE = ("relightq", "trigger")


class TriggerRateLimited(RelightqError):
    """429: too many requests to one trigger; Retry-After says when to come back."""

    def __init__(self, limit: str, retry_after: int) -> None:
        super().__init__(
            f"rate limit of {limit} per trigger exceeded; retry in {retry_after} s",
            429,
            "rate_limited",
            headers={"Retry-After": str(retry_after)},
        )


def check_trigger_rate(name: str) -> None:
    """Count one request to trigger ``name``; TriggerRateLimited past RATE_LIMIT."""
    # Looked up through the module, so whatever limiter the key limit uses (and tests
    # replace) is the one counted here.
    limiter = ratelimit._limiter()
    if limiter is None:
        return
    strategy, item = limiter
    try:
        if strategy.hit(item, *NAMESPACE, name):
            return
        reset = strategy.get_window_stats(item, *NAMESPACE, name).reset_time
    except StorageError as exc:
        # Fail open, as the key limit does: PostgreSQL, not Redis, holds the events. Only
        # the error's class is logged: its text may name the Redis URL.
        cause = type(exc.storage_error).__name__
        log.warning("trigger rate limit not checked, Redis unavailable: %s", cause)
        return
    raise TriggerRateLimited(get_settings().rate_limit, max(1, math.ceil(reset - time.time())))
