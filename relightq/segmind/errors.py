"""Every way a Segmind call can go wrong, one class per decision the worker makes.

Messages carry Segmind's own words but never the API key.
"""

from __future__ import annotations

from datetime import datetime


class SegmindError(Exception):
    """Base class; ``code`` is stable and lands in a job's ``error.code``."""

    code = "segmind_error"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class SegmindUnauthorized(SegmindError):
    """401: the key is missing or invalid; every call would fail, so the fleet pauses."""

    code = "segmind_unauthorized"


class SegmindOutOfCredits(SegmindError):
    """406 "not enough credits": the fleet pauses; the job waits without losing an attempt."""

    code = "segmind_out_of_credits"


class SegmindRejected(SegmindError):
    """404, 405, 422, a 406 about content type, or another 4xx: retrying cannot help."""

    code = "segmind_rejected"


class SegmindRateLimited(SegmindError):
    """429: wait until ``reset_at`` (when Segmind says) and call again; not a failure."""

    code = "segmind_rate_limited"

    def __init__(self, message: str, reset_at: datetime | None = None) -> None:
        super().__init__(message, 429)
        self.reset_at = reset_at


class SegmindUnavailable(SegmindError):
    """5xx, timeouts, connection errors or a garbled answer: transient, retry with backoff."""

    code = "segmind_unavailable"


class SegmindRequestLost(SegmindError):
    """v2: Segmind no longer knows the request id (404 on its status): submitted again once."""

    code = "segmind_request_lost"


class SegmindRequestFailed(SegmindError):
    """v2: the request reached FAILED (Segmind bills nothing for it); ``transient`` says
    whether its error is worth another attempt."""

    code = "segmind_request_failed"

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message, 422)
        self.transient = transient


# Words of a FAILED request's error that say the request itself was at fault (its image,
# its parameters, its content): another attempt would fail the same way.
_PERMANENT_WORDS = (
    "invalid",
    "mandatory",
    "must be",
    "required",
    "not supported",
    "unsupported",
    "could not fetch",
    "cannot fetch",
    "decode",
    "not an image",
    "nsfw",
    "safety",
    "too large",
    "too small",
)


def failure_is_transient(error: str | None) -> bool:
    """Whether a FAILED request's ``error`` is worth another attempt.

    Segmind publishes no error codes for FAILED, only text, and bills nothing for a
    failed request: an error that does not name the request's own fault (timeouts, out
    of memory, an internal error, or words never seen before) is retried, within
    RELIGHTQ_MAX_ATTEMPTS; one that does fails the job at once with Segmind's words.
    """
    text = (error or "").lower()
    return not any(word in text for word in _PERMANENT_WORDS)
