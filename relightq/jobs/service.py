"""Creating, reading and listing jobs. Services flush; the caller's boundary commits."""

from __future__ import annotations

import base64
import io
import json
import uuid
from datetime import datetime

from PIL import Image, UnidentifiedImageError
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session, selectinload

from relightq.broker import Queue, TaskName, enqueue_after_commit
from relightq.errors import FieldProblem, InvalidInput, NotFound
from relightq.jobs.models import Job, JobStatus
from relightq.jobs.schemas import (
    ALLOWED,
    AttemptOut,
    ErrorOut,
    JobCreate,
    JobOptions,
    JobOut,
    OutputOut,
)
from relightq.segmind.params import EXTENSIONS
from relightq.storage import Storage, parse_s3_uri

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
        outputs=[],
        attempt_log=[],
    )


def create_job(session: Session, tenant_id: uuid.UUID, request: JobCreate, bucket: str) -> Job:
    """Store a job whose subject is a URL or an s3:// URI, and wake a worker after commit."""
    if request.subject_image.startswith("s3://"):
        own_bucket, key = parse_s3_uri(request.subject_image)
        # relightq's bucket holds every tenant's images: only your own area is yours.
        mine = (f"inputs/{tenant_id}/", f"outputs/{tenant_id}/")
        if own_bucket == bucket and not key.startswith(mine):
            raise InvalidInput(
                [
                    FieldProblem(
                        "subject_image",
                        "points into relightq's bucket outside your own inputs and outputs",
                        ALLOWED["subject_image"],
                    )
                ]
            )
    job = _new_job(tenant_id, request, request.subject_image, uuid.uuid4())
    session.add(job)
    session.flush()
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
    session.add(job)
    session.flush()
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


def encode_cursor(job: Job) -> str:
    """An opaque position after ``job`` in newest-first order."""
    raw = json.dumps([job.created_at.isoformat(), str(job.id)])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names, or InvalidInput."""
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            [FieldProblem("cursor", "is not a cursor this API gave out", "a next_cursor value")]
        ) from exc


def list_jobs(
    session: Session,
    tenant_id: uuid.UUID,
    status: JobStatus | None = None,
    batch_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Job], str | None]:
    """A page of a tenant's jobs, newest first, keyset-paginated (stable under inserts)."""
    query = _owned(tenant_id).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Job.status == status)
    if batch_id is not None:
        query = query.where(Job.batch_id == batch_id)
    if cursor:
        created, job_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
        )
    jobs = list(session.scalars(query))
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


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
        attempt_log=[AttemptOut.model_validate(a, from_attributes=True) for a in job.attempt_log],
        error=error,
        waiting_reason=job.waiting_reason,
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
