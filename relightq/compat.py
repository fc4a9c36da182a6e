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
    """What Segmind would answer while the fleet is paused, or None to go ahead.

    Out of credits (or below the reserve) is Segmind's 406; a key Segmind refused is its
    401. An operator's pause is not something Segmind says; the call waits like any job.
    """
    if not state.paused:
        return None
    if state.code == SegmindUnauthorized.code:
        return error(401, state.reason or "Invalid API key")
    if state.code in (SegmindOutOfCredits.code, CREDIT_RESERVE):
        return error(406, OUT_OF_CREDITS)
    return None


def waiting_for_credits(job: Job) -> bool:
    """The job is parked because the fleet ran out of credits (Segmind would have said 406)."""
    reason = (job.waiting_reason or "").lower()
    return job.status == JobStatus.WAITING and "credit" in reason


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
    message = job.error_message or "The request failed"
    statuses = [a.http_status for a in job.attempt_log if a.http_status]
    last = statuses[-1] if statuses else None
    if job.status == JobStatus.CANCELLED:
        return error(503, "The request was cancelled")
    if last in (400, 404, 405, 406, 413, 422):
        return error(last, message)
    if job.error_code == "input_unreadable":
        return error(422, message)
    # Transient failures that outlived every retry: what Segmind last said, else a 502.
    return error(last if last and last >= 500 else 502, message)
