"""Running one job: admission, claim, the Segmind call, storing images, recording the outcome.

This file is the whole of "what happens on a 406" and every other upstream answer; the
Celery task in ``worker/`` only calls :func:`run_job` with an id.

Order of one run: skip at once if the fleet is paused (park the job as waiting); claim
the row with a lease, which this process's lease keeper renews until the run ends; wait
for a fleet slot (concurrency and per-minute caps); call Segmind; free the slot; write the
outcome only while the lease is still ours. A worker told to stop (SIGTERM) finishes the
calls already on the wire and hands every other job back to the queue at once.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from relightq.batches.dispatch import BUDGET_SPENT, add_credits, budget_spent, settle
from relightq.batches.models import Batch
from relightq.db import session_scope, utcnow
from relightq.jobs.models import (
    FINAL_STATUSES,
    Job,
    JobAttempt,
    JobOutput,
    JobStatus,
    UpstreamState,
)
from relightq.jobs.service import JOB_LEASES, cancelled_values, output_key, publish_job
from relightq.leases import Lease, LeaseKeeper
from relightq.logs import bind, bound
from relightq.metrics import observe_upstream
from relightq.segmind.client import RelightResult, SegmindClient, SubjectUpload, sniff_image_type
from relightq.segmind.errors import (
    SegmindError,
    SegmindOutOfCredits,
    SegmindRateLimited,
    SegmindRejected,
    SegmindUnauthorized,
)
from relightq.segmind.params import EXTENSIONS, RelightParams
from relightq.settings import Settings
from relightq.storage import Storage, StorageError
from relightq.throttle.fleet import Admission, Fleet
from relightq.throttle.service import CREDIT_RESERVE, pause_fleet
from relightq.webhooks.events import emit_job_final

log = logging.getLogger(__name__)

RATE_LIMIT_FALLBACK_SECONDS = 10.0
SHUTTING_DOWN = "shutting_down"
SLOT_POLL_SECONDS = 0.004

# A call's outcome has happened upstream (credits spent); losing the record of it to a
# PostgreSQL restart would make the job run again. Keep trying for a while instead.
_outlive_db_restart = retry(
    retry=retry_if_exception_type(OperationalError),
    wait=wait_exponential_jitter(multiplier=0.5, max=5),
    stop=stop_after_delay(120),
    reraise=True,
)


@dataclass(frozen=True)
class Claim:
    """A job this worker now owns until its lease expires."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    token: uuid.UUID
    attempts: int
    priority: int
    params: dict[str, Any]
    subject_image: str
    batch_id: uuid.UUID | None = None
    output_template: str | None = None


@dataclass(frozen=True)
class RunnerDeps:
    """What running a job needs from outside; built once per worker process."""

    settings: Settings
    client: SegmindClient
    storage: Storage
    fleet: Fleet
    keeper: LeaseKeeper


@dataclass(frozen=True)
class CallRecord:
    """One upstream call, for the job's attempt log."""

    started_at: datetime
    http_status: int | None
    error: SegmindError | None = None


def claim(
    session: Session, job_id: uuid.UUID, lease_seconds: float, holder: str | None = None
) -> Claim | None:
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
            lease_holder=holder,
            started_at=now,
            updated_at=now,
            run_after=None,
            waiting_reason=None,
        )
        .returning(
            Job.tenant_id,
            Job.attempts,
            Job.priority,
            Job.params,
            Job.subject_image,
            Job.batch_id,
            Job.output_template,
        )
    ).one_or_none()
    if row is None:
        return None
    return Claim(
        job_id,
        row.tenant_id,
        token,
        row.attempts,
        row.priority,
        row.params,
        row.subject_image,
        row.batch_id,
        row.output_template,
    )


def park_for_pause(session: Session, job_id: uuid.UUID, reason: str) -> bool:
    """Mark a not-yet-running job as waiting for the fleet; resuming wakes it. No attempt used."""
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.WAITING]))
        .where(Job.run_after.is_(None))
        .values(status=JobStatus.WAITING, waiting_reason=reason, updated_at=utcnow())
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def _owned_update(claim_: Claim, **values: Any) -> Any:
    """An UPDATE that only lands while this worker still holds the lease."""
    return (
        update(Job)
        .where(
            Job.id == claim_.job_id,
            Job.lease_token == claim_.token,
            Job.status == JobStatus.RUNNING,
        )
        .values(
            updated_at=utcnow(),
            lease_token=None,
            lease_expires_at=None,
            lease_holder=None,
            **values,
        )
    )


def _load_subject(claim_: Claim, storage: Storage) -> str | SubjectUpload:
    """An http(s) URL goes to Segmind as is; stored bytes go as a multipart upload."""
    subject = claim_.subject_image
    if subject.startswith(("http://", "https://")):
        return subject
    data = storage.get(subject)
    content_type = sniff_image_type(data) or "application/octet-stream"
    return SubjectUpload(data, subject.rsplit("/", 1)[-1], content_type)


def pause_reason(fleet: Fleet) -> str | None:
    """Why the fleet is paused, or None when it is running."""
    state = fleet.state()
    if not state.paused:
        return None
    return f"fleet paused ({state.code}): {state.reason}"


def run_job(job_id: uuid.UUID, deps: RunnerDeps) -> None:
    """Run one job to its next state. Safe to call any number of times for the same id."""
    with bound(job_id=job_id):
        _run_job(job_id, deps)


def _run_job(job_id: uuid.UUID, deps: RunnerDeps) -> None:
    keeper = deps.keeper
    if keeper.draining.is_set():
        # Stopping: leave the job to a worker that goes on (its message must not be lost
        # with this one's ack).
        _publish_again(job_id)
        return
    reason = pause_reason(deps.fleet)
    if reason:
        # Parked once, not re-queued: a paused fleet must not spin messages.
        with session_scope() as session:
            park_for_pause(session, job_id, reason)
        return
    with session_scope() as session:
        claim_ = claim(session, job_id, keeper.lease_seconds, str(keeper.holder))
    if claim_ is None:
        log.info("job %s is not claimable (final, not due, leased, or missing); skipping", job_id)
        return
    bind(tenant_id=claim_.tenant_id, batch_id=claim_.batch_id)
    log.info("job %s claimed, attempt %d", job_id, claim_.attempts)
    with keeper.holding(JOB_LEASES, job_id, claim_.token) as lease:
        _run_claimed(claim_, lease, deps)


def _publish_again(job_id: uuid.UUID) -> None:
    with session_scope() as session:
        priority = session.scalar(
            select(Job.priority).where(Job.id == job_id, Job.status.not_in(FINAL_STATUSES))
        )
        if priority is not None:
            publish_job(session, job_id, priority)


def _run_claimed(claim_: Claim, lease: Lease, deps: RunnerDeps) -> None:
    try:
        subject = _load_subject(claim_, deps.storage)
    except (StorageError, ValueError) as exc:
        _finish(
            claim_,
            None,
            status=JobStatus.FAILED,
            code="input_unreadable",
            message=f"could not read subject_image: {exc}",
        )
        return
    params = RelightParams.model_validate(claim_.params)

    slot = str(uuid.uuid4())
    admission = wait_for_slot(
        deps.fleet, slot, deps.settings.slot_wait_seconds, stop=deps.keeper.draining.is_set
    )
    if not admission.admitted:
        _not_admitted(claim_, admission, deps)
        return
    # The batch is read once the slot is ours, just before the call: a cancel or a spent
    # budget while the item waited for its slot stops it here, so a cancelled batch makes
    # no more calls and a budget is overshot by at most the calls already in flight.
    gate = _batch_gate(claim_) if claim_.batch_id is not None else BatchGate()
    if gate.stop is not None:
        deps.fleet.release(slot)
        gate.stop()
        return
    # The last moment to give the job up without paying for a call.
    if lease.lost:
        deps.fleet.release(slot)
        log.warning("job %s: lease lost before the call; another worker has it", claim_.job_id)
        return
    if deps.keeper.draining.is_set():
        deps.fleet.release(slot)
        _hand_back(claim_)
        return
    started = utcnow()
    clock = time.monotonic()
    try:
        try:
            result = deps.client.relight(params, subject)
        except SegmindError as exc:
            observe_upstream(time.monotonic() - clock, exc.status, exc.code)
            # Held until handled: a 406's pause is recorded before the slot admits anyone.
            _handle_upstream_error(claim_, CallRecord(started, exc.status, exc), deps)
            return
        if not gate.budgeted:
            # Freed before the outputs are stored: the slot is Segmind's concurrency, and
            # storing takes tens of ms (4 % of throughput at a 1 s call). A budgeted item
            # keeps it until its credits are recorded, so the next item sees them.
            deps.fleet.release(slot)
        observe_upstream(time.monotonic() - clock, 200, None)
        _succeed(claim_, result, deps, CallRecord(started, 200))
    finally:
        # Whatever happens: a slot this process kept would be renewed by its heartbeat
        # forever and shrink the fleet's cap (releasing twice is harmless).
        deps.fleet.release(slot)


@dataclass(frozen=True)
class BatchGate:
    """What the item's batch says just before the call."""

    stop: Callable[[], None] | None = None  # instead of the call: cancelled or budget spent
    budgeted: bool = False  # the batch has a credit budget


def _batch_gate(claim_: Claim) -> BatchGate:
    assert claim_.batch_id is not None
    with session_scope() as session:
        batch = session.get(Batch, claim_.batch_id)
        if batch is None:
            return BatchGate()
        cancelled = batch.cancelled_at is not None
        spent = budget_spent(batch)
        budgeted = batch.credit_budget is not None
    if cancelled:
        return BatchGate(lambda: _cancel_claimed(claim_))
    if spent:
        # Back to its batch, which releases nothing more until the budget is raised.
        return BatchGate(
            lambda: _finish(
                claim_,
                None,
                status=JobStatus.WAITING,
                refund=True,
                waiting_reason=BUDGET_SPENT,
                return_to_batch=True,
            )
        )
    return BatchGate(budgeted=budgeted)


def _cancel_claimed(claim_: Claim) -> None:
    """Cancel a job this worker holds but has not called Segmind for (its attempt refunded)."""
    values = cancelled_values(utcnow())
    del values["updated_at"]  # the owned update sets it
    with session_scope() as session:
        done = session.execute(_owned_update(claim_, attempts=Job.attempts - 1, **values))
        if done.rowcount and claim_.batch_id:  # type: ignore[attr-defined]
            settle(session, claim_.batch_id)
    log.info("job %s -> cancelled with its batch, before any call", claim_.job_id)


def wait_for_slot(
    fleet: Fleet,
    slot: str,
    max_wait: float,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
) -> Admission:
    """Ask the fleet for a slot until admitted, paused, ``stop()`` (the worker is shutting
    down), or ``max_wait`` seconds have passed."""
    deadline = time.monotonic() + max_wait
    while True:
        if stop():
            return Admission(False, SHUTTING_DOWN)
        admission = fleet.acquire(slot)
        remaining = deadline - time.monotonic()
        if admission.admitted or admission.reason == "paused" or remaining <= 0:
            return admission
        # Short jittered polls keep a freed slot busy within milliseconds without
        # stampeding Redis; known waits (a 429 hold, a full minute window) sleep longer.
        pause = admission.retry_after or SLOT_POLL_SECONDS * (1 + random.random())
        sleep(min(pause, remaining, 1.0))


def _hand_back(claim_: Claim) -> None:
    """Give a claimed job not yet calling back to the queue at once (the worker stops)."""
    _finish(claim_, None, status=JobStatus.QUEUED, refund=True, publish_after=0)


def _not_admitted(claim_: Claim, admission: Admission, deps: RunnerDeps) -> None:
    if admission.reason == SHUTTING_DOWN:
        _hand_back(claim_)
    elif admission.reason == "paused":
        _finish(
            claim_,
            None,
            status=JobStatus.WAITING,
            refund=True,
            waiting_reason=pause_reason(deps.fleet) or "fleet paused",
        )
    else:
        # The fleet is busy; hand the job back to the queue rather than hold a thread.
        _finish(
            claim_,
            None,
            status=JobStatus.QUEUED,
            refund=True,
            waiting_reason=f"waiting for an upstream slot ({admission.reason})",
            publish_after=admission.retry_after,
        )


def _handle_upstream_error(claim_: Claim, call: CallRecord, deps: RunnerDeps) -> None:
    exc = call.error
    assert exc is not None
    settings = deps.settings
    if isinstance(exc, SegmindRejected):
        _finish(
            claim_,
            call,
            status=JobStatus.FAILED,
            code=exc.code,
            # Refused by Segmind (with its status), or by relightq about Segmind's answer.
            message=(
                f"Segmind answered {exc.status}: {exc.message}"
                if exc.status is not None
                else exc.message
            ),
        )
    elif isinstance(exc, SegmindOutOfCredits | SegmindUnauthorized):
        # Not the job's fault: the whole fleet pauses and the job waits for the resume.
        pause_fleet(deps.fleet, exc.code, exc.message)
        _finish(
            claim_,
            call,
            status=JobStatus.WAITING,
            refund=True,
            waiting_reason=pause_reason(deps.fleet) or exc.message,
        )
    elif isinstance(exc, SegmindRateLimited):
        delay = RATE_LIMIT_FALLBACK_SECONDS
        if exc.reset_at is not None:
            delay = max(0.5, (exc.reset_at - utcnow()).total_seconds())
        deps.fleet.hold_until(time.time() + delay)
        _finish(
            claim_,
            call,
            status=JobStatus.WAITING,
            refund=True,
            waiting_reason="segmind_rate_limited",
            publish_after=delay,
        )
    elif claim_.attempts >= settings.max_attempts:
        _finish(
            claim_,
            call,
            status=JobStatus.FAILED,
            code=exc.code,
            message=f"gave up after {claim_.attempts} attempts: {exc.message}",
        )
    else:
        _finish(
            claim_,
            call,
            status=JobStatus.QUEUED,
            waiting_reason=f"retrying after {exc.code}: {exc.message}",
            publish_after=retry_delay(claim_.attempts, settings),
        )


def output_uri(claim_: Claim, index: int, content_type: str, bucket: str) -> str:
    """Where the ``index``-th image goes: the batch's key template, else relightq's own key."""
    extension = EXTENSIONS.get(content_type, "bin")
    if claim_.output_template:
        return claim_.output_template.format(index=index, ext=extension)
    return f"s3://{bucket}/{output_key(claim_.tenant_id, claim_.job_id, index, content_type)}"


def _attempt_row(claim_: Claim, call: CallRecord, *, outcome: str, counted: bool) -> JobAttempt:
    # Numbered by its place in the log: the attempt counter repeats (a retry resets it,
    # a 406 or 429 refunds it). Only the lease holder writes a job's attempts.
    earlier = select(func.count()).select_from(JobAttempt).where(JobAttempt.job_id == claim_.job_id)
    return JobAttempt(
        job_id=claim_.job_id,
        number=earlier.scalar_subquery() + 1,
        counted=counted,
        outcome=outcome,
        http_status=call.http_status,
        error_code=call.error.code if call.error else None,
        error_message=call.error.message[:2000] if call.error else None,
        started_at=call.started_at,
        finished_at=utcnow(),
    )


@_outlive_db_restart
def _finish(
    claim_: Claim,
    call: CallRecord | None,
    *,
    status: JobStatus,
    refund: bool = False,
    code: str | None = None,
    message: str | None = None,
    waiting_reason: str | None = None,
    publish_after: float | None = None,
    return_to_batch: bool = False,
) -> None:
    """Record any outcome but success; ``publish_after`` schedules the next run."""
    values: dict[str, Any] = {"status": status, "waiting_reason": waiting_reason}
    if return_to_batch:
        values["dispatched_at"] = None
    if refund:
        values["attempts"] = Job.attempts - 1
    if status == JobStatus.FAILED:
        values.update(error_code=code, error_message=message, finished_at=utcnow())
    if publish_after is not None:
        values["run_after"] = utcnow() + timedelta(seconds=publish_after)
    with session_scope() as session:
        done = session.execute(_owned_update(claim_, **values))
        if call is not None:
            outcome = {JobStatus.FAILED: "failed", JobStatus.QUEUED: "retry"}.get(status, "waiting")
            session.add(_attempt_row(claim_, call, outcome=outcome, counted=not refund))
        if done.rowcount and publish_after is not None:  # type: ignore[attr-defined]
            publish_job(session, claim_.job_id, claim_.priority, countdown=publish_after)
        if done.rowcount and status == JobStatus.FAILED:  # type: ignore[attr-defined]
            emit_job_final(session, claim_.job_id)
        if done.rowcount and claim_.batch_id and status in FINAL_STATUSES:  # type: ignore[attr-defined]
            settle(session, claim_.batch_id)
    log.info("job %s -> %s %s", claim_.job_id, status.value, code or waiting_reason or "")


def _succeed(claim_: Claim, result: RelightResult, deps: RunnerDeps, call: CallRecord) -> None:
    # Objects first, at deterministic keys: a crash before the commit below leaves the
    # job to be reclaimed, and the rerun overwrites the same keys instead of adding more.
    outputs = []
    for index, image in enumerate(result.images):
        uri = output_uri(claim_, index, image.content_type, deps.storage.bucket)
        deps.storage.put_uri(uri, image.data, image.content_type)
        outputs.append(
            JobOutput(
                job_id=claim_.job_id,
                index=index,
                uri=uri,
                content_type=image.content_type,
                bytes=len(image.data),
                sha256=hashlib.sha256(image.data).hexdigest(),
            )
        )
    credits = deps.settings.segmind_credits_per_image * len(result.images)
    _record_success(claim_, outputs, credits, result.remaining_credits, call)
    if result.remaining_credits is not None:
        deps.fleet.record_credits(result.remaining_credits)
        reserve = deps.settings.credit_reserve
        if reserve and result.remaining_credits < reserve:
            pause_fleet(
                deps.fleet,
                CREDIT_RESERVE,
                f"{result.remaining_credits:.3f} credits left, below the reserve of {reserve}",
            )


@_outlive_db_restart
def _record_success(
    claim_: Claim,
    outputs: list[JobOutput],
    credits: float,
    remaining: float | None,
    call: CallRecord,
) -> None:
    now = utcnow()
    with session_scope() as session:
        done = session.execute(
            _owned_update(
                claim_,
                status=JobStatus.SUCCEEDED,
                finished_at=now,
                credits_used=credits,
                remaining_credits=remaining,
                error_code=None,
                error_message=None,
                waiting_reason=None,
            )
        )
        session.add(_attempt_row(claim_, call, outcome="succeeded", counted=True))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("job %s lost its lease before finishing; outcome discarded", claim_.job_id)
            return
        session.query(JobOutput).filter(JobOutput.job_id == claim_.job_id).delete()
        session.add_all(outputs)
        session.flush()
        emit_job_final(session, claim_.job_id)
        if remaining is not None:
            record_credits(session, remaining, now)
        if claim_.batch_id is not None:
            add_credits(session, claim_.batch_id, credits)
            settle(session, claim_.batch_id)
    log.info("job %s succeeded with %d image(s)", claim_.job_id, len(outputs))


def record_credits(session: Session, remaining: float, seen_at: datetime) -> None:
    """Remember the balance Segmind last reported, keeping the newest report."""
    # One conditional UPDATE of the row the migration seeded: no lock, no insert race,
    # and an older report never overwrites a newer one.
    session.execute(
        update(UpstreamState)
        .where(UpstreamState.id == 1)
        .where(
            or_(UpstreamState.credits_seen_at.is_(None), UpstreamState.credits_seen_at <= seen_at)
        )
        .values(remaining_credits=remaining, credits_seen_at=seen_at)
    )


def retry_delay(attempt: int, settings: Settings) -> float:
    """Exponential backoff with full jitter, the AWS Architecture Blog scheme.

    Celery's get_exponential_backoff_interval does the same but only in whole seconds,
    and tests need sub-second delays; the formula is two lines, so it lives here.
    """
    ceiling = min(
        settings.retry_max_delay_seconds, settings.retry_base_delay_seconds * 2 ** (attempt - 1)
    )
    return random.uniform(0, ceiling)
