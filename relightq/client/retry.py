"""When the client retries a request, and how long it waits (tenacity).

Only requests that are safe to send twice are retried: GETs, and POSTs that carry an
``Idempotency-Key`` (the API answers a repeat with the first answer and creates nothing
more). They are retried on the answers that mean "come back later" - 429 (rate limited),
503 (the API's database or Redis is down), 502 and 504 (a gateway while the API behind it
restarts) - and on transport errors (refused or dropped connections, timeouts).
``Retry-After`` is honoured, between 0.5 and 60 s; without it the wait backs off
exponentially, 1, 2, 4 ... 30 s, jittered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

# Answers that mean "come back later": rate limited, the API's own 503 (database or Redis
# down), and a gateway's 502/504 while the API behind it restarts.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Transport failures of an API that is restarting or overloaded; not e.g. a bad URL scheme.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.NetworkError,
    httpx.TimeoutException,
    httpx.RemoteProtocolError,
)
# Retry-After is honoured up to this: a client that goes silent for longer looks hung.
RETRY_AFTER_MAX = 60.0
# ...and from this, so a server answering Retry-After: 0 is not hammered in a loop.
RETRY_AFTER_MIN = 0.5
# Backoff when no Retry-After is given (a refused connection): 1, 2, 4 ... 30 s, jittered.
FALLBACK_WAIT = wait_exponential_jitter(max=30)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: the fallback backoff applies
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def is_transient(error: BaseException | None) -> bool:
    """Whether ``error`` means "try again later": a RETRY_STATUSES answer or a transport
    failure."""
    from relightq.client.errors import RelightqAPIError

    if isinstance(error, RelightqAPIError):
        return error.status in RETRY_STATUSES
    return isinstance(error, TRANSIENT_ERRORS)


class wait_retry_after(wait_base):
    """Wait what the API's Retry-After asked (bounded), else back off as ``fallback``."""

    def __init__(self, fallback: wait_base, most: float = RETRY_AFTER_MAX) -> None:
        self.fallback = fallback
        self.most = most

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, float | int):
            return float(min(max(retry_after, RETRY_AFTER_MIN), self.most))
        return self.fallback(retry_state)


@dataclass(frozen=True)
class RetryEvent:
    """A retry about to happen: what failed, the wait before the next attempt (seconds),
    which attempt failed (from 1) and seconds since the first one started."""

    error: BaseException
    delay: float
    attempt: int
    elapsed: float


@dataclass(frozen=True)
class RetryPolicy:
    """How an idempotent request is retried.

    ``max_attempts`` caps the attempts (1: never retry; None: no cap); ``max_seconds``
    stops retrying once this long has passed since the first attempt (None: no limit).
    Both may be given: whichever comes first ends the retries, and the last error is
    raised. ``on_retry`` is told before each wait (e.g. to log it), ``on_recovered``
    after a request that needed retries succeeds (attempts, seconds).
    """

    max_attempts: int | None = 5
    max_seconds: float | None = 120.0
    retry_after_max: float = RETRY_AFTER_MAX
    on_retry: Callable[[RetryEvent], None] | None = field(default=None, compare=False)
    on_recovered: Callable[[int, float], None] | None = field(default=None, compare=False)

    @classmethod
    def never(cls) -> RetryPolicy:
        """No retries at all: every error is raised at once."""
        return cls(max_attempts=1, max_seconds=None)

    def stop(self) -> stop_base:
        """The tenacity stop condition of this policy."""
        stops: list[stop_base] = []
        if self.max_attempts is not None:
            stops.append(stop_after_attempt(self.max_attempts))
        if self.max_seconds is not None:
            stops.append(stop_after_delay(self.max_seconds))
        if not stops:
            return stop_never
        combined = stops[0]
        for more in stops[1:]:
            combined = combined | more
        return combined

    def tenacity_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for tenacity's ``Retrying`` / ``AsyncRetrying``."""
        return {
            "retry": retry_if_exception(is_transient),
            "wait": wait_retry_after(FALLBACK_WAIT, self.retry_after_max),
            "stop": self.stop(),
            "before_sleep": self._before_sleep,
            "reraise": True,
        }

    def _before_sleep(self, state: RetryCallState) -> None:
        if self.on_retry is None or state.outcome is None:
            return
        error = state.outcome.exception()
        if error is None:
            return
        delay = state.next_action.sleep if state.next_action else 0.0
        self.on_retry(
            RetryEvent(error, delay, state.attempt_number, state.seconds_since_start or 0.0)
        )

    def recovered(self, state: RetryCallState) -> None:
        """Tell ``on_recovered`` when the attempt that succeeded was not the first."""
        if self.on_recovered is not None and state.attempt_number > 1:
            self.on_recovered(state.attempt_number, state.seconds_since_start or 0.0)
