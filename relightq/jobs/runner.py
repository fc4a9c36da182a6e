"""Running one job: claim it, call Segmind, store the images, record the outcome.

This is the whole of "what happens on a 406" and every other upstream answer; the
Celery task in ``worker/`` only calls :func:`run_job` with an id.
"""

from __future__ import annotations

import hashlib
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, update
from sqlalchemy.orm import Session

from relightq.broker import Queue, TaskName, enqueue_after_commit
from relightq.db import session_scope, utcnow
from relightq.jobs.models import Job, JobOutput, JobStatus, UpstreamState
from relightq.jobs.service import output_key
from relightq.segmind.client import RelightResult, SegmindClient, SubjectUpload, sniff_image_type
from relightq.segmind.errors import (
    SegmindError,
    SegmindOutOfCredits,
    SegmindRateLimited,
    SegmindRejected,
    SegmindUnauthorized,
)
from relightq.segmind.params import RelightParams
from relightq.settings import Settings
from relightq.storage import Storage, StorageError

log = logging.getLogger(__name__)

RATE_LIMIT_FALLBACK_SECONDS = 10.0


@dataclass(frozen=True)
class Claim:
    """A job this worker now owns until its lease expires."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    token: uuid.UUID
    attempts: int
    params: dict[str, Any]
    subject_image: str


@dataclass(frozen=True)
class RunnerDeps:
    """What running a job needs from outside; built once per worker process."""

    settings: Settings
    client: SegmindClient
    storage: Storage


def claim(session: Session, job_id: uuid.UUID, lease_seconds: int) -> Claim | None:
    """Take a job atomically, or None if it is final, due later, or leased to a live worker.

    One conditional UPDATE decides, so two deliveries of the same message can never both
    win, and a job whose worker died is taken over only after its lease has expired.
    """
    now = utcnow()
    token = uuid.uuid4()
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status.in_([JobStatus.QUEUED, JobStatus.WAITING]),
                (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now),
            ),
            or_(Job.run_after.is_(None), Job.run_after <= now + timedelta(seconds=1)),
        )
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            updated_at=now,
            run_after=None,
            waiting_reason=None,
        )
        .returning(Job.tenant_id, Job.attempts, Job.params, Job.subject_image)
    ).one_or_none()
    if row is None:
        return None
    return Claim(job_id, row.tenant_id, token, row.attempts, row.params, row.subject_image)


def _owned_update(claim_: Claim, **values: Any) -> Any:
    """An UPDATE that only lands while this worker still holds the lease."""
    return (
        update(Job)
        .where(
            Job.id == claim_.job_id,
            Job.lease_token == claim_.token,
            Job.status == JobStatus.RUNNING,
        )
        .values(updated_at=utcnow(), lease_token=None, lease_expires_at=None, **values)
    )


def _load_subject(claim_: Claim, storage: Storage) -> str | SubjectUpload:
    """An http(s) URL goes to Segmind as is; stored bytes go as a multipart upload."""
    subject = claim_.subject_image
    if subject.startswith(("http://", "https://")):
        return subject
    data = storage.get(subject)
    content_type = sniff_image_type(data) or "application/octet-stream"
    return SubjectUpload(data, subject.rsplit("/", 1)[-1], content_type)


def run_job(job_id: uuid.UUID, deps: RunnerDeps) -> None:
    """Run one job to its next state. Safe to call any number of times for the same id."""
    with session_scope() as session:
        claim_ = claim(session, job_id, deps.settings.job_lease_seconds)
    if claim_ is None:
        log.info("job %s is not claimable (final, not due, leased, or missing); skipping", job_id)
        return
    log.info("job %s claimed, attempt %d", job_id, claim_.attempts)
    try:
        subject = _load_subject(claim_, deps.storage)
    except (StorageError, ValueError) as exc:
        _fail(claim_, "input_unreadable", f"could not read subject_image: {exc}")
        return
    params = RelightParams.model_validate(claim_.params)
    try:
        result = deps.client.relight(params, subject)
    except SegmindError as exc:
        _handle_upstream_error(claim_, exc, deps.settings)
        return
    _succeed(claim_, result, deps)


def _succeed(claim_: Claim, result: RelightResult, deps: RunnerDeps) -> None:
    # Objects first, at deterministic keys: a crash before the commit below leaves the
    # job to be reclaimed, and the rerun overwrites the same keys instead of adding more.
    outputs = []
    for index, image in enumerate(result.images):
        key = output_key(claim_.tenant_id, claim_.job_id, index, image.content_type)
        uri = deps.storage.put(key, image.data, image.content_type)
        digest = hashlib.sha256(image.data).hexdigest()
        outputs.append(
            JobOutput(
                job_id=claim_.job_id,
                index=index,
                uri=uri,
                content_type=image.content_type,
                bytes=len(image.data),
                sha256=digest,
            )
        )
    now = utcnow()
    credits = deps.settings.segmind_credits_per_image * len(result.images)
    with session_scope() as session:
        done = session.execute(
            _owned_update(
                claim_,
                status=JobStatus.SUCCEEDED,
                finished_at=now,
                credits_used=credits,
                remaining_credits=result.remaining_credits,
                error_code=None,
                error_message=None,
                waiting_reason=None,
            )
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("job %s lost its lease before finishing; outcome discarded", claim_.job_id)
            return
        session.execute(delete(JobOutput).where(JobOutput.job_id == claim_.job_id))
        session.add_all(outputs)
        if result.remaining_credits is not None:
            record_credits(session, result.remaining_credits, now)
    log.info("job %s succeeded with %d image(s)", claim_.job_id, len(outputs))


def record_credits(session: Session, remaining: float, seen_at: datetime) -> None:
    """Remember the balance Segmind last reported, keeping the newest report."""
    state = session.get(UpstreamState, 1, with_for_update=True)
    if state is None:
        session.add(UpstreamState(id=1, remaining_credits=remaining, credits_seen_at=seen_at))
    elif state.credits_seen_at is None or state.credits_seen_at <= seen_at:
        state.remaining_credits = remaining
        state.credits_seen_at = seen_at


def _fail(claim_: Claim, code: str, message: str) -> None:
    with session_scope() as session:
        session.execute(
            _owned_update(
                claim_,
                status=JobStatus.FAILED,
                finished_at=utcnow(),
                error_code=code,
                error_message=message,
            )
        )
    log.info("job %s failed: %s", claim_.job_id, code)


def _requeue(claim_: Claim, delay: float, *, refund: bool, status: JobStatus, reason: str) -> None:
    """Put the job back to run again after ``delay`` seconds, and schedule its wake-up."""
    run_after = utcnow() + timedelta(seconds=delay)
    with session_scope() as session:
        session.execute(
            _owned_update(
                claim_,
                status=status,
                run_after=run_after,
                waiting_reason=reason,
                attempts=Job.attempts - 1 if refund else Job.attempts,
            )
        )
        enqueue_after_commit(
            session, TaskName.RELIGHT_RUN, str(claim_.job_id), queue=Queue.RELIGHT, countdown=delay
        )
    log.info("job %s will run again in %.1fs: %s", claim_.job_id, delay, reason)


def retry_delay(attempt: int, settings: Settings) -> float:
    """Exponential backoff with full jitter, the AWS Architecture Blog scheme.

    Celery's get_exponential_backoff_interval does the same but only in whole seconds,
    and tests need sub-second delays; the formula is two lines, so it lives here.
    """
    ceiling = min(
        settings.retry_max_delay_seconds, settings.retry_base_delay_seconds * 2 ** (attempt - 1)
    )
    return random.uniform(0, ceiling)


def _handle_upstream_error(claim_: Claim, exc: SegmindError, settings: Settings) -> None:
    if isinstance(exc, SegmindRejected):
        _fail(claim_, exc.code, f"Segmind answered {exc.status}: {exc.message}")
    elif isinstance(exc, SegmindOutOfCredits | SegmindUnauthorized):
        # Not the job's fault: it waits without losing an attempt.
        _requeue(
            claim_,
            settings.pause_recheck_seconds,
            refund=True,
            status=JobStatus.WAITING,
            reason=f"{exc.code}: {exc.message}",
        )
    elif isinstance(exc, SegmindRateLimited):
        delay = RATE_LIMIT_FALLBACK_SECONDS
        if exc.reset_at is not None:
            delay = max(0.5, (exc.reset_at - utcnow()).total_seconds())
        _requeue(
            claim_, delay, refund=True, status=JobStatus.WAITING, reason="segmind_rate_limited"
        )
    elif claim_.attempts >= settings.max_attempts:
        _fail(claim_, exc.code, f"gave up after {claim_.attempts} attempts: {exc.message}")
    else:
        _requeue(
            claim_,
            retry_delay(claim_.attempts, settings),
            refund=False,
            status=JobStatus.QUEUED,
            reason=f"retrying after {exc.code}: {exc.message}",
        )
