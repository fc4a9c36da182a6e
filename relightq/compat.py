"""Answering like Segmind: a relightq job's outcome in Segmind's response formats.

The Segmind-compatible endpoint runs each call as a high-priority job. Its v1 route waits
for it; its v2 routes (Segmind's async API) answer with a request id to poll. These
functions turn the fleet's state and the job's progress into what Segmind itself would
have answered (status code, image bytes or JSON, ``{"error": ...}``, x-remaining-credits).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relightq.credits.amounts import as_text
from relightq.jobs.models import CAP_REACHED, Job, JobStatus
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


def capped_answer(job: Job) -> SegmindAnswer | None:
    """A job parked by its tenant's monthly credit cap: for the caller on the line that is
    Segmind's 406 (no credit to spend), answered at once rather than after the wait."""
    if job.status == JobStatus.WAITING and (job.waiting_reason or "").startswith(CAP_REACHED):
        return error(406, OUT_OF_CREDITS)
    return None


def parked_by_pause(job: Job) -> bool:
    """The job waits for the fleet to resume (not for a time of its own)."""
    return job.status == JobStatus.WAITING and job.run_after is None


def _credits(job: Job) -> dict[str, str]:
    if job.remaining_credits is None:
        return {}
    return {"x-remaining-credits": as_text(job.remaining_credits)}


def final_answer(job: Job, storage: Storage) -> SegmindAnswer:
    """A final job as Segmind's answer: the image(s), or its error with Segmind's status."""
    if job.status == JobStatus.SUCCEEDED:
        credits = _credits(job)
        outputs = sorted(job.outputs, key=lambda o: o.index)
        if len(outputs) == 1:
            data = storage.get(outputs[0].uri)
            return SegmindAnswer(200, data, outputs[0].content_type, headers=credits)
        # v1's multi-image format is undocumented; this is the JSON relightq reads back.
        images = [base64.b64encode(storage.get(o.uri)).decode() for o in outputs]
        body = json.dumps({"images": images}).encode()
        return SegmindAnswer(200, body, "application/json", headers=credits)
    return failure(job)


def failure(job: Job) -> SegmindAnswer:
    """A failed or cancelled job as Segmind's error: its status code and words."""
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


# Segmind's v2 request states. A job parked while the fleet is paused stays QUEUED: it
# resumes by itself when the fleet does, as a request queued at Segmind would.
V2_STATES: dict[JobStatus, str] = {
    JobStatus.QUEUED: "QUEUED",
    JobStatus.WAITING: "QUEUED",
    JobStatus.RUNNING: "PROCESSING",
    JobStatus.SUCCEEDED: "COMPLETED",
    JobStatus.FAILED: "FAILED",
    JobStatus.CANCELLED: "FAILED",
}


def not_found(request_id: str) -> SegmindAnswer:
    """v2's answer for an id that is unknown, another tenant's, or not an id at all."""
    return error(404, f"Request {request_id} not found")


def metrics(job: Job) -> dict[str, float]:
    """v2's ``metrics`` of a final job, as Segmind reports them: seconds from the last start
    to the end (``inference_time``), from submission to that start (``queue_time``) and to
    the end (``total_time``); the credits used, and the balance after when it is known."""
    end = job.finished_at or job.updated_at
    started = job.started_at or end  # never started (cancelled while queued): no inference
    found = {
        "inference_time": _seconds(started, end),
        "queue_time": _seconds(job.created_at, started),
        "total_time": _seconds(job.created_at, end),
        "cost": float(job.credits_used),
    }
    if job.remaining_credits is not None:
        found["remaining_credits"] = float(job.remaining_credits)
    return found


def _seconds(start: datetime, end: datetime) -> float:
    return round(max((end - start).total_seconds(), 0.0), 3)


def _json(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> SegmindAnswer:
    return SegmindAnswer(status, json.dumps(body).encode(), headers=headers or {})


def request_state(job: Job, storage: Storage, *, output: bool) -> SegmindAnswer:
    """v2's answer about a request: its state; FAILED as a 422 with Segmind's error and the
    metrics; with ``output``, a COMPLETED one's presigned image URL(s) and metrics too."""
    state = V2_STATES[job.status]
    body: dict[str, Any] = {"request_id": str(job.id), "status": state}
    if state == "FAILED":
        body.update(error=failure(job).error, metrics=metrics(job))
        return _json(422, body)
    if state == "COMPLETED" and output:
        urls = [storage.url(o.uri) for o in sorted(job.outputs, key=lambda o: o.index)]
        body.update(output=urls[0] if len(urls) == 1 else urls, metrics=metrics(job))
        return _json(200, body, _credits(job))
    return _json(200, body)
