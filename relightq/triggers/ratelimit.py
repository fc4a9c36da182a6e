"""Request rate limits per trigger: POST /v1/triggers/{name} carries no API key to count.

The same moving-window limiter and RATE_LIMIT as the per-key limit (shared through
Redis by every API process), counted under the trigger's name instead of a key.
"""

from __future__ import annotations

from relightq.errors import RelightqError
from relightq.settings import get_settings
from relightq.tenants import ratelimit


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
    # Its own namespace: a trigger's count never adds to an API key's, nor the other way.
    wait = ratelimit.retry_after("trigger", name)
    if wait is not None:
        raise TriggerRateLimited(get_settings().rate_limit, wait)
