"""Creating, reading and listing jobs. Services flush; the caller's boundary commits."""

from __future__ import annotations

import io
import uuid
from datetime import datetime
from typing import Any

from PIL import Image, UnidentifiedImageError
from sqlalchemy import Select, insert, inspect, select, update
from sqlalchemy.orm import Session, selectinload

from relightq.broker import Queue, TaskName, enqueue_after_commit
from relightq.credits.amounts import ZERO
from relightq.db import table_of, utcnow
from relightq.errors import (
    BatchCancelled,
    FieldProblem,
    InvalidInput,
    JobFinal,
    JobNotRetryable,
    JobRunning,
    NotFound,
)
from relightq.jobs.models import FINAL_STATUSES, Job, JobStatus
from relightq.jobs.schemas import (
    ALLOWED,
    AttemptOut,
    ErrorOut,
    JobCreate,
    JobOptions,
    JobOut,
    OutputOut,
)
from relightq.leases import LeasedTable
from relightq.pagination import newest_first, page
from relightq.segmind.params import EXTENSIONS
from relightq.storage import Storage, parse_s3_prefix
from relightq.tenants.service import ungranted_bucket_problem

UPLOAD_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_UPLOAD_PIXELS = 40_000_000  # far above IC-Light's inputs; stops decompression bombs


def input_key(tenant_id: uuid.UUID, job_id: uuid.UUID, extension: str) -> str:
    """Where an uploaded subject image is kept."""
    return f"inputs/{tenant_id}/{job_id}/subject.{extension}"


def output_key(tenant_id: uuid.UUID, job_id: uuid.UUID, index: int, content_type: str) -> str:
    """The deterministic key of a job's ``index``-th output: redelivery overwrites, never adds."""
    return f"outputs/{tenant_id}/{job_id}/{index}.{EXTENSIONS.get(content_type, 'bin')}"


def publish_job(session: Session, job_id: uuid.UUID, priority: int, countdown: float = 0) -> None:
    """Wake a worker for ``job_id`` once ``session`` commits."""
    # Celery's Redis priorities run 0 first; ours say 9 is most urgent.
    options: dict[str, float] = {"countdown": countdown} if countdown else {}
    enqueue_after_commit(
        session,
        TaskName.RELIGHT_RUN,
        str(job_id),
        queue=Queue.RELIGHT,
        priority=9 - priority,
        **options,
    )


def _publish_jobs(session: Session, job_ids: list[uuid.UUID]) -> None:
    rows = session.execute(select(Job.id, Job.priority).where(Job.id.in_(job_ids)))
    for job_id, priority in rows:
        publish_job(session, job_id, priority)


# A running job is held by lease (relightq.leases): renewed while its worker lives.
JOB_LEASES = LeasedTable("jobs", Job, JobStatus.RUNNING, _publish_jobs)


def _new_job(tenant_id: uuid.UUID, options: JobOptions, subject: str, job_id: uuid.UUID) -> Job:
    return Job(
        id=job_id,
        tenant_id=tenant_id,
        status=JobStatus.QUEUED,
        params=options.relight_params().model_dump(),
        subject_image=subject,
        external_id=options.external_id,
        metadata_=options.metadata,
        callback_url=options.callback_url,
        priority=options.priority,
        reuse=options.reuse,
        outputs=[],
        attempt_log=[],
    )


_JOBS = table_of(Job)
_JOB_COLUMNS = [(prop.key, prop.columns[0].name) for prop in inspect(Job).column_attrs]


def _insert_job(session: Session, job: Job) -> None:
    """INSERT a new job with one Core statement, and give the object the values its view
    reads. The unit of work's flush cost more CPU than the rest of a submit's database
    work together (py-spy, bench.overhead); the job has no related rows to order."""
    now = utcnow()
    job.created_at = job.updated_at = job.dispatched_at = now
    job.attempts = job.upstream_resubmits = 0
    job.credits_used = job.credits_saved = job.credits_reserved = ZERO
    values = {name: job.__dict__[key] for key, name in _JOB_COLUMNS if key in job.__dict__}
    session.execute(insert(_JOBS), values)


def foreign_subject_problem(
    session: Session, tenant_id: uuid.UUID, subject: str, bucket: str
) -> FieldProblem | None:
    """Why ``subject`` (an object, or a prefix a batch lists) may not be used by this
    tenant, or None."""
    if not subject.startswith("s3://"):
        return None
    # A prefix may be empty (a whole bucket): an empty key is outside every tenant's area.
    subject_bucket, key = parse_s3_prefix(subject)
    # relightq's bucket holds every tenant's images: only your own area is yours.
    mine = (f"inputs/{tenant_id}/", f"outputs/{tenant_id}/")
    if subject_bucket == bucket:
        if key.startswith(mine):
            return None
        return FieldProblem(
            "subject_image",
            "points into relightq's bucket outside your own inputs and outputs",
            ALLOWED["subject_image"],
        )
    # Any other bucket is read with relightq's credentials: only those granted to you.
    return ungranted_bucket_problem(
        session, tenant_id, "subject_image", subject_bucket, ALLOWED["subject_image"]
    )


def create_job(session: Session, tenant_id: uuid.UUID, request: JobCreate, bucket: str) -> Job:
    """Store a job whose subject is a URL or an s3:// URI, and wake a worker after commit."""
    problem = foreign_subject_problem(session, tenant_id, request.subject_image, bucket)
    if problem:
        raise InvalidInput([problem])
    job = _new_job(tenant_id, request, request.subject_image, uuid.uuid4())
    _insert_job(session, job)
    publish_job(session, job.id, job.priority)
    return job


def check_upload(data: bytes) -> str:
    """The content type of an uploaded subject image, or InvalidInput if it is not one."""
    problem = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in UPLOAD_FORMATS:
                problem = f"is a {image.format} image"
            elif image.width * image.height > MAX_UPLOAD_PIXELS:
                problem = f"has more than {MAX_UPLOAD_PIXELS} pixels"
            else:
                image.verify()
                return UPLOAD_FORMATS[image.format]
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        problem = "is not a readable image"
    raise InvalidInput(
        [FieldProblem("subject_image", f"{problem}", "a PNG, JPEG or WebP image file")]
    )


def create_job_with_upload(
    session: Session, tenant_id: uuid.UUID, options: JobOptions, data: bytes, storage: Storage
) -> Job:
    """Store an uploaded subject image and a job that sends its bytes to Segmind."""
    content_type = check_upload(data)
    job_id = uuid.uuid4()
    extension = EXTENSIONS[content_type]
    uri = storage.put(input_key(tenant_id, job_id, extension), data, content_type)
    job = _new_job(tenant_id, options, uri, job_id)
    _insert_job(session, job)
    publish_job(session, job.id, job.priority)
    return job


def _owned(tenant_id: uuid.UUID) -> Select[Job]:
    return (
        select(Job)
        .where(Job.tenant_id == tenant_id)
        .options(selectinload(Job.outputs), selectinload(Job.attempt_log))
    )


def get_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """A tenant's job; another tenant's job is indistinguishable from a missing one."""
    job = session.scalar(_owned(tenant_id).where(Job.id == job_id))
    if job is None:
        raise NotFound("job")
    return job


def list_jobs(
    session: Session,
    tenant_id: uuid.UUID,
    status: JobStatus | None = None,
    batch_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Job], str | None]:
    """A page of a tenant's jobs, newest first, keyset-paginated (stable under inserts)."""
    query = newest_first(_owned(tenant_id), Job, cursor, limit)
    if status is not None:
        query = query.where(Job.status == status)
    if batch_id is not None:
        query = query.where(Job.batch_id == batch_id)
    return page(list(session.scalars(query)), limit)


def attempt_log(job: Job) -> list[AttemptOut]:
    """Every upstream call made for ``job``, numbered by its place in the log.

    Not by the stored ``number``: that is the job's attempt counter when the call was
    made, which a retry resets and an uncounted call (401, 406, 429) does not advance,
    so two calls can share it.
    """
    return [
        AttemptOut.model_validate(row, from_attributes=True).model_copy(update={"number": n})
        for n, row in enumerate(job.attempt_log, start=1)
    ]


def job_view(job: Job, storage: Storage) -> JobOut:
    """A job as the API shows it, with fresh presigned output URLs."""
    error = (
        ErrorOut(code=job.error_code, message=job.error_message or "") if job.error_code else None
    )
    return JobOut(
        id=job.id,
        status=job.status,
        params=job.params,
        subject_image=job.subject_image,
        attempts=job.attempts,
        attempt_log=attempt_log(job),
        error=error,
        waiting_reason=job.waiting_reason,
        upstream_request_id=job.upstream_request_id,
        outputs=[
            OutputOut(
                index=o.index,
                s3_uri=o.uri,
                url=storage.url(o.uri),
                content_type=o.content_type,
                bytes=o.bytes,
                sha256=o.sha256,
            )
            for o in job.outputs
        ],
        credits_used=job.credits_used,
        reuse=job.reuse,
        reused_from=job.reused_from,
        credits_saved=job.credits_saved,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        batch_id=job.batch_id,
        external_id=job.external_id,
        metadata=job.metadata_,
        callback_url=job.callback_url,
        priority=job.priority,
    )


def cancelled_values(now: datetime) -> dict[str, Any]:
    """What cancelling a job that has not started sets (one job or a whole batch)."""
    return {
        "status": JobStatus.CANCELLED,
        "waiting_reason": None,
        "run_after": None,
        "finished_at": now,
        "updated_at": now,
    }


def rerun_values(now: datetime, *, in_batch: bool) -> dict[str, Any]:
    """What sending a failed or cancelled job round again sets: fresh attempts, no error.

    A batch item goes back to its batch (held), which releases it within its window.
    """
    return {
        "status": JobStatus.QUEUED,
        "attempts": 0,
        "error_code": None,
        "error_message": None,
        "waiting_reason": None,
        "run_after": None,
        "finished_at": None,
        "dispatched_at": None if in_batch else now,
        "updated_at": now,
    }


def cancel_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """Cancel a job that has not started; a running one is a 409, a final one stays as is."""
    job = get_job(session, tenant_id, job_id)
    if job.status == JobStatus.RUNNING:
        raise JobRunning("the job is running; it will finish, and cannot be cancelled now")
    if job.status in FINAL_STATUSES:
        if job.status == JobStatus.CANCELLED:
            return job
        raise JobFinal(f"the job already {job.status}")
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.WAITING]))
        .values(cancelled_values(now))
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        raise JobRunning("the job started meanwhile; it will finish")
    if job.batch_id is not None:
        from relightq.batches.dispatch import settle  # the batch module builds on this one

        settle(session, job.batch_id)
    session.refresh(job)
    return job


def retry_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """Run a failed or cancelled job again with fresh attempts."""
    job = get_job(session, tenant_id, job_id)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobNotRetryable(
            f"only failed or cancelled jobs can be retried; this one is {job.status}"
        )
    in_batch = job.batch_id is not None
    if job.batch_id is not None:
        from relightq.batches.dispatch import batch_cancelled, reopen  # builds on this module

        if batch_cancelled(session, job.batch_id):
            raise BatchCancelled("the job's batch was cancelled; submit it again")
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
        .values(rerun_values(now, in_batch=in_batch))
    )
    if job.batch_id is not None:
        reopen(session, job.batch_id)
    else:
        publish_job(session, job.id, job.priority)
    session.refresh(job)
    return job
