"""Answering like Segmind: a relightq job's outcome in IC-Light v1's response format.

The Segmind-compatible endpoint runs each call as a high-priority job and waits for it;
these functions turn the fleet's state and the job's end into what Segmind itself would
have answered (status code, image bytes or ``{"error": ...}``, x-remaining-credits).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from relightq.jobs.models import Job, JobStatus
from relightq.segmind.errors import SegmindOutOfCredits, SegmindUnauthorized
from relightq.storage import Storage
from relightq.throttle.fleet import FleetState
from relightq.throttle.service import CREDIT_RESERVE

COMPAT_PRIORITY = 9  # a caller is waiting on the line: ahead of every queued job
OUT_OF_CREDITS = "Not enough credits"
PAUSED = "Service temporarily unavailable: upstream calls are paused"
PAUSED_RETRY_AFTER_SECONDS = 60


@dataclass(frozen=True)
class SegmindAnswer:
    """A response in Segmind's format."""

    status: int
    body: bytes | None = None
    media_type: str = "application/json"
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, **headers: str) -> SegmindAnswer:
    """``{"error": message}`` with ``status``."""
    return SegmindAnswer(status, error=message, headers=headers)


def paused_answer(state: FleetState) -> SegmindAnswer | None:
    """What to answer at once while the fleet is paused, or None to go ahead.

    Out of credits (or below the reserve) is Segmind's 406 and a key Segmind refused its
    401. Any other pause (an operator's, say) is not something Segmind says, but a caller
    blocked on the line must not hang until it lifts: 503, which Segmind answers when it
    is unavailable and clients already retry, with a Retry-After.
    """
    if not state.paused:
        return None
    if state.code == SegmindUnauthorized.code:
        return error(401, state.reason or "Invalid API key")
    if state.code in (SegmindOutOfCredits.code, CREDIT_RESERVE):
        return error(406, OUT_OF_CREDITS)
    return error(503, PAUSED, **{"Retry-After": str(PAUSED_RETRY_AFTER_SECONDS)})


def parked_by_pause(job: Job) -> bool:
    """The job waits for the fleet to resume (not for a time of its own)."""
    return job.status == JobStatus.WAITING and job.run_after is None


def final_answer(job: Job, storage: Storage) -> SegmindAnswer:
    """A final job as Segmind's answer: the image(s), or its error with Segmind's status."""
    credits = (
        {}
        if job.remaining_credits is None
        else {"x-remaining-credits": f"{job.remaining_credits:g}"}
    )
    if job.status == JobStatus.SUCCEEDED:
        outputs = sorted(job.outputs, key=lambda o: o.index)
        if len(outputs) == 1:
            data = storage.get(outputs[0].uri)
            return SegmindAnswer(200, data, outputs[0].content_type, headers=credits)
        # v1's multi-image format is undocumented; this is the JSON relightq reads back.
        images = [base64.b64encode(storage.get(o.uri)).decode() for o in outputs]
        body = json.dumps({"images": images}).encode()
        return SegmindAnswer(200, body, "application/json", headers=credits)
    # The upstream's own words for its refusals: the last call's message, not the job's
    # summary of it ("Segmind answered 422: ...").
    calls = [a for a in job.attempt_log if a.http_status]
    last = calls[-1] if calls else None
    if job.status == JobStatus.CANCELLED:
        return error(503, "The request was cancelled")
    if last is not None and last.http_status in (400, 404, 405, 406, 413, 422):
        return error(last.http_status, last.error_message or job.error_message or "")
    message = job.error_message or "The request failed"
    if job.error_code == "input_unreadable":
        return error(422, message)
    # Transient failures that outlived every retry: what Segmind last said, else a 502.
    status = last.http_status if last is not None and (last.http_status or 0) >= 500 else 502
    return error(status or 502, message)
