"""Running one job: admission, claim, the Segmind call, storing images, recording the outcome.

This file is the whole of "what happens on a 406" and every other upstream answer; the
Celery task in ``worker/`` only calls :func:`run_job` with an id.

Order of one run: skip at once if the fleet is paused (park the job as waiting); claim
the row with a lease, which this process's lease keeper renews until the run ends; wait
for a fleet slot (concurrency and per-minute caps); call Segmind; free the slot; write the
outcome only while the lease is still ours. A worker told to stop (SIGTERM) finishes the
calls already on the wire and hands every other job back to the queue at once.

With Segmind's v2 API (RELIGHTQ_SEGMIND_API_VERSION=v2) the call is a submit that answers
a request id at once. The id is committed before anything else; from then on the job is
never submitted again: the process's poller polls it (no thread waits), and if the worker
dies or stops, whichever worker claims the job next resumes polling the same request.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from relightq.batches.dispatch import add_credits, settle
from relightq.batches.models import Batch
from relightq.credits import budgets, reuse
from relightq.credits.amounts import ZERO
from relightq.credits.balance import record_balance, report_balance
from relightq.credits.budgets import BUDGET_SPENT, Refusal, add_to_month, reserve
from relightq.db import one_statement, session_scope, table_of, typed_param, utcnow
from relightq.jobs.models import (
    FINAL_STATUSES,
    Job,
    JobAttempt,
    JobOutput,
    JobStatus,
)
from relightq.jobs.polling import Poller, PollSchedule
from relightq.jobs.service import JOB_LEASES, cancelled_values, output_key, publish_job
from relightq.leases import Lease, LeaseKeeper
from relightq.logs import bind, bound
from relightq.metrics import (
    CREDITS_SAVED,
    CREDITS_SPENT,
    JOBS_REUSED,
    UPSTREAM_POLLS,
    UPSTREAM_RECEIPT_SECONDS,
    observe_upstream,
)
from relightq.segmind.client import (
    RelightResult,
    SegmindClient,
    SubjectUpload,
    UpstreamRequest,
    sniff_image_type,
)
from relightq.segmind.errors import (
    SegmindError,
    SegmindOutOfCredits,
    SegmindRateLimited,
    SegmindRejected,
    SegmindRequestFailed,
    SegmindRequestLost,
    SegmindUnauthorized,
)
from relightq.segmind.params import EXTENSIONS, RelightParams
from relightq.settings import Settings
from relightq.storage import Storage, StorageError
from relightq.tenants.models import Tenant
from relightq.throttle.fleet import Admission, Fleet
from relightq.throttle.service import CREDIT_RESERVE, pause_fleet
from relightq.throttle.waiters import SlotWaiters
from relightq.webhooks.events import emit_job_final, listened_to

# The hot path writes with Core statements on the tables: the ORM's bulk-update and
# unit-of-work machinery cost more CPU per job than the statements themselves (py-spy,
# bench.overhead), and these writes need none of it (no objects are loaded).
JOBS = table_of(Job)
OUTPUTS = table_of(JobOutput)
ATTEMPTS = table_of(JobAttempt)

log = logging.getLogger(__name__)

RATE_LIMIT_FALLBACK_SECONDS = 10.0
# v2: polls failing in a row (Segmind unreachable, outputs not downloadable) before the
# attempt counts as failed: ~10 minutes at FAILED_POLL_RETRY_SECONDS apart.
MAX_FAILED_POLLS = 30
FAILED_POLL_RETRY_SECONDS = 20.0
SHUTTING_DOWN = "shutting_down"
SLOT_POLL_SECONDS = 0.004
SLOT_POLL_MAX_SECONDS = 0.05
# How often a job outranked by a more urgent one waiting for a slot looks again.
OUTRANKED_POLL_SECONDS = 0.01

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
    # v2: the request an earlier run submitted, to poll instead of submitting again.
    request: UpstreamRequest | None = None
    submitted_at: datetime | None = None
    resubmits: int = 0
    # Result reuse: allowed for this job; what its picture is, once a run learned it.
    reuse: bool = True
    reuse_key: str | None = None
    subject_locator: str | None = None
    # The tenant had a monthly credit cap when the job was claimed.
    capped: bool = True


@dataclass(frozen=True)
class RunnerDeps:
    """What running a job needs from outside; built once per worker process."""

    settings: Settings
    client: SegmindClient
    storage: Storage
    fleet: Fleet
    keeper: LeaseKeeper
    poller: Poller = field(default_factory=Poller)
    slot_waiters: SlotWaiters = field(default_factory=SlotWaiters)

    @cached_property
    def poll_schedule(self) -> PollSchedule:
        """This process's poll timing, shared by its jobs (it learns how long requests take)."""
        return PollSchedule(
            self.settings.segmind_poll_min_seconds, self.settings.segmind_poll_max_seconds
        )

    @property
    def uses_v2(self) -> bool:
        """Jobs are submitted to Segmind's v2 queue and polled."""
        return self.settings.segmind_api_version == "v2"


@dataclass(frozen=True)
class CallRecord:
    """One upstream call, for the job's attempt log."""

    started_at: datetime
    http_status: int | None
    error: SegmindError | None = None
    request_id: str | None = None


# Built once: building it and its cache key for every job cost more CPU than running it.
_CLAIM = (
    update(JOBS)
    .where(
        JOBS.c.id == typed_param("job_id", JOBS.c.id),
        or_(
            # Not IN (...): an IN list is re-rendered into the SQL at every execution.
            JOBS.c.status == JobStatus.QUEUED,
            JOBS.c.status == JobStatus.WAITING,
            (JOBS.c.status == JobStatus.RUNNING)
            & (JOBS.c.lease_expires_at < typed_param("now", JOBS.c.started_at)),
        ),
        or_(JOBS.c.run_after.is_(None), JOBS.c.run_after <= typed_param("due", JOBS.c.run_after)),
    )
    .values(
        status=JobStatus.RUNNING,
        # Resuming the poll of a request already paid for is not another attempt.
        attempts=case(
            (JOBS.c.upstream_request_id.is_(None), JOBS.c.attempts + 1), else_=JOBS.c.attempts
        ),
        lease_token=typed_param("token", JOBS.c.lease_token),
        lease_expires_at=typed_param("expires", JOBS.c.lease_expires_at),
        lease_holder=typed_param("holder", JOBS.c.lease_holder),
        started_at=typed_param("now", JOBS.c.started_at),
        updated_at=typed_param("now", JOBS.c.started_at),
        run_after=None,
        waiting_reason=None,
    )
    .returning(
        JOBS.c.tenant_id,
        JOBS.c.attempts,
        JOBS.c.priority,
        JOBS.c.params,
        JOBS.c.subject_image,
        JOBS.c.batch_id,
        JOBS.c.output_template,
        JOBS.c.upstream_request_id,
        JOBS.c.upstream_status_url,
        JOBS.c.upstream_response_url,
        JOBS.c.upstream_submitted_at,
        JOBS.c.upstream_resubmits,
        JOBS.c.reuse,
        JOBS.c.reuse_key,
        JOBS.c.subject_locator,
        exists()
        .where(Tenant.id == JOBS.c.tenant_id, Tenant.monthly_credit_cap.is_not(None))
        .label("capped"),
    )
)


def claim(
    session: Session | Connection,
    job_id: uuid.UUID,
    lease_seconds: float,
    holder: str | None = None,
) -> Claim | None:
    """Take a job atomically, or None if it is final, due later, or leased to a live worker.

    One conditional UPDATE decides, so two deliveries of the same message can never both
    win, and a job whose worker died is taken over only after its lease has expired.
    """
    now = utcnow()
    token = uuid.uuid4()
    row = session.execute(
        _CLAIM,
        {
            "job_id": job_id,
            "now": now,
            "due": now + timedelta(seconds=1),
            "token": token,
            "expires": now + timedelta(seconds=lease_seconds),
            "holder": holder,
        },
    ).one_or_none()
    if row is None:
        return None
    request = None
    if row.upstream_request_id is not None:
        request = UpstreamRequest(
            row.upstream_request_id, row.upstream_status_url, row.upstream_response_url
        )
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
        request,
        row.upstream_submitted_at,
        row.upstream_resubmits,
        row.reuse,
        row.reuse_key,
        row.subject_locator,
        row.capped,
    )


def park_for_pause(session: Session, job_id: uuid.UUID, reason: str) -> bool:
    """Mark a not-yet-running job as waiting for the fleet; resuming wakes it. No attempt used.

    A job with a v2 request already submitted is not parked: its request runs at Segmind
    whatever the fleet's state, and polling it costs nothing.
    """
    done = session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.status.in_([JobStatus.QUEUED, JobStatus.WAITING]))
        .where(JOBS.c.run_after.is_(None), JOBS.c.upstream_request_id.is_(None))
        .values(status=JobStatus.WAITING, waiting_reason=reason, updated_at=utcnow())
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


_NO_REQUEST = {
    "upstream_request_id": None,
    "upstream_status_url": None,
    "upstream_response_url": None,
    "upstream_submitted_at": None,
}
# What every owned update writes: the lease ends with it.
_LEASE_ENDED = {"lease_token": None, "lease_expires_at": None, "lease_holder": None}


def _still_ours(claim_: Claim) -> ColumnElement[bool]:
    """The job's row while this worker still holds its lease."""
    return and_(
        JOBS.c.id == claim_.job_id,
        JOBS.c.lease_token == claim_.token,
        JOBS.c.status == JobStatus.RUNNING,
    )


def _owned_update(claim_: Claim, *, keep_request: bool = False, **values: Any) -> Any:
    """An UPDATE that only lands while this worker still holds the lease; it ends the
    lease, and forgets the job's v2 request and releases its credit reservation unless
    ``keep_request`` (a request still to collect, which Segmind will bill)."""
    if not keep_request:
        values = {**_NO_REQUEST, "credits_reserved": ZERO, **values}
    return (
        update(JOBS)
        .where(_still_ours(claim_))
        .values(updated_at=utcnow(), **_LEASE_ENDED, **values)
    )


@dataclass(frozen=True)
class Subject:
    """The subject as Segmind gets it, and what it is, if known (for result reuse)."""

    upstream: str | SubjectUpload
    identity: reuse.SubjectIdentity | None


def _load_subject(claim_: Claim, storage: Storage) -> Subject:
    """An http(s) URL goes to Segmind as is; stored bytes go as a multipart upload."""
    subject = claim_.subject_image
    if subject.startswith(("http://", "https://")):
        etag = reuse.strong_etag(subject)
        return Subject(subject, reuse.url_identity(subject, etag) if etag else None)
    blob = storage.read(subject)
    content_type = sniff_image_type(blob.data) or "application/octet-stream"
    upload = SubjectUpload(blob.data, subject.rsplit("/", 1)[-1], content_type)
    return Subject(upload, reuse.stored_identity(subject, blob.data, blob.etag))


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
            parked = park_for_pause(session, job_id, reason)
        if parked:
            return
        # Not parked: final, leased, not due, or a v2 request to go on polling; the
        # claim tells them apart, and a job with nothing submitted waits at the slot.
    with one_statement() as connection:
        claim_ = claim(connection, job_id, keeper.lease_seconds, str(keeper.holder))
    if claim_ is None:
        log.info("job %s is not claimable (final, not due, leased, or missing); skipping", job_id)
        return
    bind(tenant_id=claim_.tenant_id, batch_id=claim_.batch_id)
    log.info("job %s claimed, attempt %d", job_id, claim_.attempts)
    if deps.uses_v2 or claim_.request is not None:
        # Also after a switch back to v1: a request already paid for is collected.
        _run_v2(claim_, deps)
        return
    with keeper.holding(JOB_LEASES, job_id, claim_.token) as lease:
        _run_claimed(claim_, lease, deps)


def _publish_again(job_id: uuid.UUID) -> None:
    with session_scope() as session:
        priority = session.scalar(
            select(Job.priority).where(Job.id == job_id, Job.status.not_in(FINAL_STATUSES))
        )
        if priority is not None:
            publish_job(session, job_id, priority)


@dataclass(frozen=True)
class Cleared:
    """A claimed job holding a fleet slot (and its credits reserved), with nothing left
    to stop its call."""

    claim: Claim
    subject: str | SubjectUpload
    params: RelightParams


def _cleared_for_call(
    claim_: Claim, lease: Lease, slot: str, deps: RunnerDeps, slot_ttl: float | None = None
) -> Cleared | None:
    """Read the subject, reuse an earlier picture if there is one, wait for a slot,
    reserve the call's credits; None when the job was given up or done (its outcome
    recorded) instead of calling."""
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
        return None
    params = RelightParams.model_validate(claim_.params)
    key = reuse.reuse_key(subject.identity, params) if subject.identity else None
    if key is not None and subject.identity is not None:
        # Known even when this job asked for a new picture: the new one is then offered
        # to later jobs that do reuse.
        claim_ = replace(claim_, reuse_key=key, subject_locator=subject.identity.locator)
        if claim_.reuse and _reused(claim_, deps):
            return None

    admission = wait_for_slot(
        deps.fleet,
        slot,
        deps.settings.slot_wait_seconds,
        stop=deps.keeper.draining.is_set,
        ttl_seconds=slot_ttl,
        waiters=deps.slot_waiters,
        priority=claim_.priority,
    )
    if not admission.admitted:
        _not_admitted(claim_, admission, deps)
        return None
    # The batch and the credits are settled once the slot is ours, just before the call:
    # a cancel while the item waited stops it here, and the reservation is held only by
    # calls about to start (never by jobs queueing for a slot).
    try:
        stop = _reserve_or_stop(claim_, params, deps)
    except BaseException:
        # PostgreSQL unreachable (or a bug): no call is made, and the slot must not stay
        # held, renewed by this process's heartbeat, shrinking the fleet's cap.
        deps.fleet.release(slot)
        raise
    if stop is not None:
        deps.fleet.release(slot)
        stop()
        return None
    # The last moment to give the job up without paying for a call.
    if lease.lost:
        deps.fleet.release(slot)
        log.warning("job %s: lease lost before the call; another worker has it", claim_.job_id)
        return None
    if deps.keeper.draining.is_set():
        deps.fleet.release(slot)
        _hand_back(claim_)
        return None
    return Cleared(claim_, subject.upstream, params)


def _reused(claim_: Claim, deps: RunnerDeps) -> bool:
    """Copy an earlier identical picture, or wait for the job making it now; False when
    this job is the one to make it (its reuse_key is then recorded)."""
    assert claim_.reuse_key is not None
    with session_scope() as session:
        found = reuse.find_or_mark(
            session,
            claim_.job_id,
            claim_.tenant_id,
            claim_.reuse_key,
            update(JOBS)
            .where(_still_ours(claim_))
            .values(reuse_key=claim_.reuse_key, subject_locator=claim_.subject_locator),
        )
    if isinstance(found, reuse.Twin):
        _finish(
            claim_,
            None,
            status=JobStatus.QUEUED,
            refund=True,
            waiting_reason=f"waiting for job {found.job_id}, which is making the same picture",
            publish_after=reuse.TWIN_WAIT_SECONDS,
        )
        return True
    if isinstance(found, reuse.Source):
        return _copy_outputs(claim_, found, deps)
    return False


def _copy_outputs(claim_: Claim, source: reuse.Source, deps: RunnerDeps) -> bool:
    """Succeed with the source's pictures copied to this job's own keys (so manifests,
    templates and deletes stay independent); False if they cannot be copied (deleted
    meanwhile): the job then pays for its own."""
    outputs = []
    try:
        for output in source.outputs:
            uri = output_uri(claim_, output.index, output.content_type, deps.storage.bucket)
            deps.storage.copy(output.uri, uri)
            outputs.append(
                JobOutput(
                    job_id=claim_.job_id,
                    index=output.index,
                    uri=uri,
                    content_type=output.content_type,
                    bytes=output.bytes,
                    sha256=output.sha256,
                )
            )
    except StorageError as exc:
        log.warning(
            "job %s: outputs of job %s could not be copied (%s); calling Segmind instead",
            claim_.job_id,
            source.job_id,
            exc,
        )
        return False
    saved = reuse.value_of(outputs, deps.settings.segmind_credits_per_image)
    _record_reuse(claim_, outputs, source.job_id, saved)
    return True


@_outlive_db_restart
def _record_reuse(
    claim_: Claim, outputs: list[JobOutput], source_id: uuid.UUID, saved: Decimal
) -> None:
    now = utcnow()
    with session_scope() as session:
        stored = _store_success(
            session,
            claim_,
            outputs,
            None,
            # No call was made: the claim's attempt is given back.
            refund=1,
            credits_used=ZERO,
            credits_saved=saved,
            reused_from=source_id,
        )
        if stored and claim_.batch_id is not None:
            session.execute(
                update(Batch)
                .where(Batch.id == claim_.batch_id)
                .values(
                    reused=Batch.reused + 1,
                    credits_saved=Batch.credits_saved + saved,
                    updated_at=now,
                )
            )
            settle(session, claim_.batch_id)
    if stored:
        JOBS_REUSED.inc()
        CREDITS_SAVED.inc(float(saved))
        log.info("job %s succeeded by reusing job %s (%s saved)", claim_.job_id, source_id, saved)


# What _owned_update writes for a success, built once (see _CLAIM).
_SUCCEEDED = (
    update(JOBS)
    .where(
        JOBS.c.id == typed_param("job_id", JOBS.c.id),
        JOBS.c.lease_token == typed_param("token", JOBS.c.lease_token),
        JOBS.c.status == JobStatus.RUNNING,
    )
    .values(
        status=JobStatus.SUCCEEDED,
        finished_at=typed_param("now", JOBS.c.finished_at),
        updated_at=typed_param("now", JOBS.c.finished_at),
        error_code=None,
        error_message=None,
        waiting_reason=None,
        credits_reserved=ZERO,
        reuse_key=typed_param("reuse_key", JOBS.c.reuse_key),
        subject_locator=typed_param("subject_locator", JOBS.c.subject_locator),
        attempts=JOBS.c.attempts - bindparam("refund", type_=Integer),
        credits_used=typed_param("credits_used", JOBS.c.credits_used),
        credits_saved=typed_param("credits_saved", JOBS.c.credits_saved),
        reused_from=typed_param("reused_from", JOBS.c.reused_from),
        remaining_credits=typed_param("remaining_credits", JOBS.c.remaining_credits),
        **_LEASE_ENDED,
        **_NO_REQUEST,
    )
    .returning(JOBS.c.callback_url, listened_to(JOBS.c.tenant_id))
)
_DELETE_OUTPUTS = delete(OUTPUTS).where(OUTPUTS.c.job_id == typed_param("job_id", OUTPUTS.c.job_id))


def _store_success(
    session: Session,
    claim_: Claim,
    outputs: list[JobOutput],
    call: CallRecord | None,
    *,
    credits_used: Decimal,
    refund: int = 0,
    credits_saved: Decimal = ZERO,
    reused_from: uuid.UUID | None = None,
    remaining_credits: Decimal | None = None,
) -> bool:
    """Mark the job succeeded with ``outputs`` (if this worker still holds it) and emit
    job.succeeded; the picture's identity goes with it, for later jobs to reuse."""
    done = session.execute(
        _SUCCEEDED,
        {
            "job_id": claim_.job_id,
            "token": claim_.token,
            "now": utcnow(),
            "reuse_key": claim_.reuse_key,
            "subject_locator": claim_.subject_locator,
            "refund": refund,
            "credits_used": credits_used,
            "credits_saved": credits_saved,
            "reused_from": reused_from,
            "remaining_credits": remaining_credits,
        },
    ).one_or_none()
    if call is not None:
        _add_attempt(session, claim_, call, outcome="succeeded", counted=True)
    if done is None:
        log.warning("job %s lost its lease before finishing; outcome discarded", claim_.job_id)
        return False
    session.execute(_DELETE_OUTPUTS, {"job_id": claim_.job_id})
    session.execute(insert(OUTPUTS), [_output_row(output) for output in outputs])
    if done.callback_url or done.listened:
        # The event's payload is read back only when someone will receive it.
        emit_job_final(session, claim_.job_id)
    return True


def _output_row(output: JobOutput) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "job_id": output.job_id,
        "index": output.index,
        "uri": output.uri,
        "content_type": output.content_type,
        "bytes": output.bytes,
        "sha256": output.sha256,
        "created_at": utcnow(),
    }


def _run_claimed(claim_: Claim, lease: Lease, deps: RunnerDeps) -> None:
    slot = str(uuid.uuid4())
    cleared = _cleared_for_call(claim_, lease, slot, deps)
    if cleared is None:
        return
    claim_ = cleared.claim
    started = utcnow()
    clock = time.monotonic()
    try:
        try:
            result = deps.client.relight(cleared.params, cleared.subject)
        except SegmindError as exc:
            observe_upstream(time.monotonic() - clock, exc.status, exc.code)
            # Held until handled: a 406's pause is recorded before the slot admits anyone.
            _handle_upstream_error(claim_, CallRecord(started, exc.status, exc), deps)
            return
        # Freed before the outputs are stored: the slot is Segmind's concurrency, and
        # storing takes tens of ms (4 % of throughput at a 1 s call). Budgets need no
        # slot: the call's credits stay reserved until its success is recorded.
        deps.fleet.release(slot)
        observe_upstream(time.monotonic() - clock, 200, None)
        _succeed(claim_, result, deps, CallRecord(started, 200))
    finally:
        # Whatever happens: a slot this process kept would be renewed by its heartbeat
        # forever and shrink the fleet's cap (releasing twice is harmless).
        deps.fleet.release(slot)


@dataclass
class PolledRequest:
    """A v2 request this process polls for its job, holding the job's lease."""

    claim: Claim
    lease: Lease
    slot: str
    request: UpstreamRequest
    submitted_at: datetime
    started_at: datetime
    failed_polls: int = 0  # in a row


def _run_v2(claim_: Claim, deps: RunnerDeps) -> None:
    """Submit the job (unless an earlier run did) and leave its request to the poller;
    the task's thread is free again as soon as the request id is committed."""
    keeper = deps.keeper
    lease = keeper.hold(JOB_LEASES, claim_.job_id, claim_.token)
    # One slot per job, whoever holds it: a request taken over from a dead worker goes on
    # counting once, under the same token, instead of twice until the dead entry expires.
    slot = f"request:{claim_.job_id}"
    slot_ttl = 2 * keeper.lease_seconds
    polled: PolledRequest | None
    try:
        if claim_.request is not None:
            deps.fleet.keep(slot, slot_ttl)
            submitted = claim_.submitted_at or utcnow()
            polled = PolledRequest(
                claim_,
                lease,
                slot,
                claim_.request,
                submitted,
                utcnow(),
            )
            log.info("job %s: polling request %s again", claim_.job_id, claim_.request.request_id)
        else:
            polled = _submit(claim_, lease, slot, slot_ttl, deps)
    except BaseException:
        # PostgreSQL gone past the retries, or a bug: stop renewing, so the lease runs out
        # and another run takes the job (a request not yet recorded is the one window in
        # which a job pays twice). The slot counts on until its TTL: a request may be out.
        keeper.drop(lease)
        deps.fleet.let_go(slot)
        raise
    if polled is None:
        keeper.drop(lease)
        return
    if keeper.draining.is_set():
        # Stopping, and the hand-back of the polled requests may have run already: this
        # one goes back on its own (request kept) for another worker to poll.
        deps.fleet.let_go(slot)
        keeper.abandon([lease])  # which also stops renewing it
        return
    deps.poller.track(lease, lambda: _poll(polled, deps), _next_poll(polled, deps))


def _submit(
    claim_: Claim, lease: Lease, slot: str, slot_ttl: float, deps: RunnerDeps
) -> PolledRequest | None:
    cleared = _cleared_for_call(claim_, lease, slot, deps, slot_ttl)
    if cleared is None:
        return None
    claim_ = cleared.claim
    started = utcnow()
    clock = time.monotonic()
    try:
        request = deps.client.submit(cleared.params, cleared.subject)
    except SegmindError as exc:
        observe_upstream(time.monotonic() - clock, exc.status, exc.code)
        # Nothing was queued upstream: the same decisions as a v1 call's answer.
        try:
            _handle_upstream_error(claim_, CallRecord(started, exc.status, exc), deps)
        finally:
            deps.fleet.release(slot)
        return None
    except BaseException:
        # A bug, not an answer: a slot kept would be renewed forever and shrink the cap.
        deps.fleet.release(slot)
        raise
    answered = time.monotonic()
    observe_upstream(answered - clock, 200, None)
    # The receipt first: until this commits, a crash would lose a paid request. Measured
    # from sending the submit: Segmind accepts it somewhere on the way, so that is a bound
    # on the window in which a crash can still make the job pay twice.
    recorded = _record_submitted(claim_, request)
    UPSTREAM_RECEIPT_SECONDS.observe(time.monotonic() - clock)
    if not recorded:
        deps.fleet.release(slot)
        log.error(
            "job %s: lease lost while submitting; request %s is Segmind's and nobody's",
            claim_.job_id,
            request.request_id,
        )
        return None
    if request.remaining_credits is not None:
        # In a transaction of its own, not the receipt's: every report writes the one
        # upstream_state row, and holding its lock in receipts would serialise them.
        _note_balance(request.remaining_credits, deps)
    log.info("job %s: submitted request %s", claim_.job_id, request.request_id)
    return PolledRequest(claim_, lease, slot, request, utcnow(), started)


@_outlive_db_restart
def _record_submitted(claim_: Claim, request: UpstreamRequest) -> bool:
    now = utcnow()
    with session_scope() as session:
        done = session.execute(
            update(JOBS)
            .where(_still_ours(claim_))
            .values(
                upstream_request_id=request.request_id,
                upstream_status_url=request.status_url,
                upstream_response_url=request.response_url,
                upstream_submitted_at=now,
                updated_at=now,
            )
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]


def _age(polled: PolledRequest) -> float:
    return (utcnow() - polled.submitted_at).total_seconds()


def _next_poll(polled: PolledRequest, deps: RunnerDeps) -> float:
    return deps.poll_schedule.next_delay(_age(polled))


def _poll(polled: PolledRequest, deps: RunnerDeps) -> float | None:
    """One poll of a v2 request; the seconds until the next, or None when it is over."""
    claim_, lease = polled.claim, polled.lease
    if lease.lost:
        # Taken over (this process could not renew in time, or handed it back on stop):
        # the new holder keeps counting the request under the job's slot.
        deps.fleet.let_go(polled.slot)
        deps.keeper.drop(lease)
        return None
    try:
        state = deps.client.status(polled.request)
        UPSTREAM_POLLS.labels(state.status).inc()
        if not state.done:
            polled.failed_polls = 0
            return _next_poll(polled, deps)
        deps.poll_schedule.observe(_age(polled))
        # Done at Segmind: its slot is free for the next request while this one's outputs
        # are fetched and stored (as a v1 call frees it before storing).
        deps.fleet.release(polled.slot)
        result = deps.client.result(polled.request)
    except SegmindRateLimited as exc:
        UPSTREAM_POLLS.labels("rate_limited").inc()
        delay = _rate_limit_delay(exc)
        deps.fleet.hold_until(time.time() + delay)
        return delay
    except (SegmindOutOfCredits, SegmindUnauthorized) as exc:
        # The key stopped working mid-request: the fleet pauses; the job waits, keeping its
        # request, and the resume wakes it to poll again (no second submit).
        UPSTREAM_POLLS.labels("unauthorized").inc()
        pause_fleet(deps.fleet, exc.code, exc.message)
        deps.fleet.let_go(polled.slot)
        _finish(
            claim_,
            None,
            status=JobStatus.WAITING,
            waiting_reason=pause_reason(deps.fleet) or exc.message,
            keep_request=True,
        )
        deps.keeper.drop(lease)
        return None
    except SegmindRequestLost as exc:
        UPSTREAM_POLLS.labels("lost").inc()
        _request_lost(polled, exc, deps)
        return None
    except (SegmindRequestFailed, SegmindRejected) as exc:
        # FAILED (under 422), or an answer relightq refuses to act on (an output URL it
        # may not fetch): decided as a v1 call's answer would be.
        UPSTREAM_POLLS.labels("FAILED" if isinstance(exc, SegmindRequestFailed) else "error").inc()
        _end_attempt(polled, exc, deps)
        return None
    except SegmindError as exc:
        # 5xx, a timeout, a garbled answer, an output not downloadable yet: a poll is free
        # and safe to repeat, for a while. Past that the attempt has failed (its outputs
        # are out of reach) and takes the usual path: backoff, within max_attempts.
        UPSTREAM_POLLS.labels("error").inc()
        polled.failed_polls += 1
        if polled.failed_polls < MAX_FAILED_POLLS:
            log.info("job %s: poll failed (%s); polling again", claim_.job_id, exc.code)
            return min(_next_poll(polled, deps), FAILED_POLL_RETRY_SECONDS)
        _end_attempt(polled, exc, deps)
        return None
    _succeed(claim_, result, deps, _call(polled, 200))
    deps.keeper.drop(lease)
    return None


def _call(
    polled: PolledRequest, http_status: int | None, exc: SegmindError | None = None
) -> CallRecord:
    """The attempt row of a polled request: when it was submitted, and how it ended."""
    return CallRecord(polled.started_at, http_status, exc, polled.request.request_id)


def _end_attempt(polled: PolledRequest, exc: SegmindError, deps: RunnerDeps) -> None:
    """The request is over without images: its slot and lease go, and its end is decided
    as a v1 call's answer (fail, or retry with backoff within max_attempts)."""
    deps.fleet.release(polled.slot)
    _handle_upstream_error(polled.claim, _call(polled, exc.status, exc), deps)
    deps.keeper.drop(polled.lease)


def _request_lost(polled: PolledRequest, exc: SegmindRequestLost, deps: RunnerDeps) -> None:
    """Segmind forgot the request (its records expire): submit once more, never twice."""
    claim_ = polled.claim
    call = _call(polled, 404, exc)
    deps.fleet.release(polled.slot)
    if claim_.resubmits >= 1:
        _finish(
            claim_,
            call,
            status=JobStatus.FAILED,
            code=SegmindRequestLost.code,
            message="Segmind lost this job's request twice (404 on its status); not submitted "
            "a third time",
        )
    else:
        _finish(
            claim_,
            call,
            status=JobStatus.QUEUED,
            refund=True,
            waiting_reason="Segmind lost the request (404 on its status); submitting it again",
            publish_after=0,
            extra={"upstream_resubmits": JOBS.c.upstream_resubmits + 1},
        )
    deps.keeper.drop(polled.lease)


def hand_back_requests(deps: RunnerDeps) -> int:
    """A stopping worker: end the leases of the requests it polls, at once, so another
    worker resumes polling them (the requests themselves run on at Segmind)."""
    handed = deps.keeper.abandon(deps.poller.leases())
    deps.poller.poll_all_now()  # each sees its lease lost and lets its slot go
    return handed


def _rate_limit_delay(exc: SegmindRateLimited) -> float:
    if exc.reset_at is None:
        return RATE_LIMIT_FALLBACK_SECONDS
    return max(0.5, (exc.reset_at - utcnow()).total_seconds())


def _note_balance(remaining: Decimal, deps: RunnerDeps, *, recorded: bool = False) -> None:
    """Remember the balance Segmind reported (and warn when it crossed
    RELIGHTQ_CREDIT_WARN_BELOW, unless ``recorded`` already); below the reserve, pause."""
    deps.fleet.record_credits(remaining)
    if not recorded:
        report_balance(remaining, deps.settings)
    credit_reserve = deps.settings.credit_reserve
    if credit_reserve and remaining < credit_reserve:
        pause_fleet(
            deps.fleet,
            CREDIT_RESERVE,
            f"{remaining:.3f} credits left, below the reserve of {credit_reserve}",
        )


def _reserve_or_stop(
    claim_: Claim, params: RelightParams, deps: RunnerDeps
) -> Callable[[], None] | None:
    """Reserve the call's credits against the batch budget and the tenant's monthly cap;
    what to do instead of calling (cancelled batch, budget spent, cap reached), or None."""
    if claim_.batch_id is None and not claim_.capped:
        # Nothing can stop a single job's call here: no batch to be cancelled or to
        # budget for, and its tenant had no cap when the job was claimed (a cap applies
        # to jobs claimed after it is set). One transaction less per job.
        return None
    amount = deps.settings.segmind_credits_per_image * params.number_of_images
    with one_statement() as connection:
        known = budgets.limits(connection, claim_.tenant_id, claim_.batch_id)
    if known.batch_cancelled:
        return lambda: _cancel_claimed(claim_)
    if known.budget is None and known.monthly_cap is None:
        return None  # nothing to reserve against: no transaction
    with session_scope() as session:
        refusal = reserve(
            session,
            _still_ours(claim_),
            claim_.job_id,
            claim_.tenant_id,
            claim_.batch_id,
            amount,
            known,
        )
        if refusal is not None:
            session.rollback()  # nothing reserved
    if refusal is None:
        return None
    return lambda: _refused(claim_, refusal)


def _refused(claim_: Claim, refusal: Refusal) -> None:
    if refusal.cap:
        # Parked until the cap is raised or the month turns (relightq.credits.caps).
        _finish(claim_, None, status=JobStatus.WAITING, refund=True, waiting_reason=refusal.reason)
    else:
        # Back to its batch, which goes on when the budget is raised.
        _finish(
            claim_,
            None,
            status=JobStatus.WAITING,
            refund=True,
            waiting_reason=BUDGET_SPENT,
            return_to_batch=True,
        )


def _cancel_claimed(claim_: Claim) -> None:
    """Cancel a job this worker holds but has not called Segmind for (its attempt refunded)."""
    values = cancelled_values(utcnow())
    del values["updated_at"]  # the owned update sets it
    with session_scope() as session:
        done = session.execute(_owned_update(claim_, attempts=JOBS.c.attempts - 1, **values))
        if done.rowcount and claim_.batch_id:  # type: ignore[attr-defined]
            settle(session, claim_.batch_id)
    log.info("job %s -> cancelled with its batch, before any call", claim_.job_id)


def wait_for_slot(
    fleet: Fleet,
    slot: str,
    max_wait: float,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
    ttl_seconds: float | None = None,
    waiters: SlotWaiters | None = None,
    priority: int = 0,
) -> Admission:
    """Ask the fleet for a slot until admitted, paused, ``stop()`` (the worker is shutting
    down), or ``max_wait`` seconds have passed; while a more urgent job of this process
    (``waiters``) waits too, let it go first."""
    deadline = time.monotonic() + max_wait
    poll = SLOT_POLL_SECONDS
    with waiters.waiting(priority) if waiters is not None else nullcontext():
        while True:
            if stop():
                return Admission(False, SHUTTING_DOWN)
            if waiters is not None and waiters.outranked(priority):
                # Not on the fleet's release signal, which wakes one waiter: the urgent one.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Admission(False, "concurrency")
                sleep(min(OUTRANKED_POLL_SECONDS, remaining))
                continue
            admission = fleet.acquire(slot, ttl_seconds)
            remaining = deadline - time.monotonic()
            if admission.admitted or admission.reason == "paused" or remaining <= 0:
                return admission
            if admission.retry_after:
                # A known wait (a 429 hold, a full minute window, the fleet warming up).
                sleep(min(admission.retry_after, remaining, 1.0))
                continue
            # Every slot taken: a slot this process frees wakes one waiter at once; one
            # freed by another process is seen at the next try, polled at a jittered
            # interval that grows from 4 ms to 50 ms (16 threads spinning every 4 ms cost
            # more CPU than the calls they wait for).
            fleet.wait_for_release(min(poll * (1 + random.random()), remaining))
            poll = min(poll * 1.5, SLOT_POLL_MAX_SECONDS)


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
    if isinstance(exc, SegmindRequestFailed) and not exc.transient:
        # A FAILED request whose error names its own fault: v1 would have answered 422.
        _finish(
            claim_,
            call,
            status=JobStatus.FAILED,
            code=SegmindRejected.code,
            message=f"Segmind answered {exc.status}: {exc.message}",
        )
    elif isinstance(exc, SegmindRejected):
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
        delay = _rate_limit_delay(exc)
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


def _add_attempt(
    session: Session, claim_: Claim, call: CallRecord, *, outcome: str, counted: bool
) -> None:
    session.execute(
        _ATTEMPT,
        {
            "id": uuid.uuid4(),
            "job_id": claim_.job_id,
            "attempt_of": claim_.job_id,
            "counted": counted,
            "outcome": outcome,
            "http_status": call.http_status,
            "error_code": call.error.code if call.error else None,
            "error_message": call.error.message[:2000] if call.error else None,
            "upstream_request_id": call.request_id,
            "started_at": call.started_at,
            "finished_at": utcnow(),
        },
    )


# Numbered by its place in the log: the attempt counter repeats (a retry resets it, a 406
# or 429 refunds it). Only the lease holder writes a job's attempts. Built once.
_ATTEMPT = insert(ATTEMPTS).values(
    number=select(func.count())
    .select_from(ATTEMPTS)
    .where(ATTEMPTS.c.job_id == typed_param("attempt_of", ATTEMPTS.c.job_id))
    .scalar_subquery()
    + 1
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
    keep_request: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Record any outcome but success; ``publish_after`` schedules the next run;
    ``keep_request``: the job's v2 request is still to be collected by its next run."""
    values: dict[str, Any] = {
        "status": status,
        "waiting_reason": waiting_reason,
        **(extra or {}),
    }
    if return_to_batch:
        values["dispatched_at"] = None
    if refund:
        values["attempts"] = JOBS.c.attempts - 1
    if status == JobStatus.FAILED:
        values.update(error_code=code, error_message=message, finished_at=utcnow())
    if publish_after is not None:
        values["run_after"] = utcnow() + timedelta(seconds=publish_after)
    with session_scope() as session:
        done = session.execute(_owned_update(claim_, keep_request=keep_request, **values))
        if call is not None:
            outcome = {JobStatus.FAILED: "failed", JobStatus.QUEUED: "retry"}.get(status, "waiting")
            _add_attempt(session, claim_, call, outcome=outcome, counted=not refund)
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
    # Billed per image asked for: an answer with more images than that costs no more
    # than its reservation.
    images = min(len(result.images), int(claim_.params.get("number_of_images", 1)))
    credits = deps.settings.segmind_credits_per_image * images
    _record_success(
        claim_, outputs, credits, result.remaining_credits, call, deps, _still_the_same(claim_)
    )
    CREDITS_SPENT.inc(float(credits))
    if result.remaining_credits is not None:
        _note_balance(result.remaining_credits, deps, recorded=True)


def _still_the_same(claim_: Claim) -> bool:
    """Whether the subject is still what the reuse key says it was. Segmind fetched a URL
    itself at some moment of the call: only the same strong ETag before and after it
    proves which bytes it read. Stored bytes were read and sent by relightq itself."""
    if claim_.reuse_key is None or not claim_.subject_image.startswith(("http://", "https://")):
        return True
    etag = reuse.strong_etag(claim_.subject_image)
    return etag is not None and reuse.locator(claim_.subject_image, etag) == claim_.subject_locator


@_outlive_db_restart
def _record_success(
    claim_: Claim,
    outputs: list[JobOutput],
    credits: Decimal,
    remaining: Decimal | None,
    call: CallRecord,
    deps: RunnerDeps,
    reusable: bool,
) -> None:
    now = utcnow()
    if not reusable:
        # Offered for reuse only while the subject provably did not change.
        claim_ = replace(claim_, reuse_key=None)
    with session_scope() as session:
        if not _store_success(
            session, claim_, outputs, call, credits_used=credits, remaining_credits=remaining
        ):
            return
        # The reservation is settled in this transaction (the owned update released it),
        # in lock order: job, batch, tenant month (relightq.credits.budgets).
        if claim_.batch_id is not None:
            add_credits(session, claim_.batch_id, credits)
            settle(session, claim_.batch_id)
        add_to_month(session, claim_.tenant_id, credits, now)
        if remaining is not None:
            record_balance(session, remaining, now, deps.settings)
    log.info("job %s succeeded with %d image(s)", claim_.job_id, len(outputs))


def retry_delay(attempt: int, settings: Settings) -> float:
    """Exponential backoff with full jitter, the AWS Architecture Blog scheme.

    Celery's get_exponential_backoff_interval does the same but only in whole seconds,
    and tests need sub-second delays; the formula is two lines, so it lives here.
    """
    ceiling = min(
        settings.retry_max_delay_seconds, settings.retry_base_delay_seconds * 2 ** (attempt - 1)
    )
    return random.uniform(0, ceiling)
