"""/v1/jobs: submit, read and list relight jobs."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from api.bodies import BodyKind, SubmittedAs, read_form, read_json_object
from api.deps import CurrentStorage, CurrentTenant, DbSession
from api.errors import authenticated
from api.idempotency import OPENAPI_PARAMETER as IDEMPOTENCY_PARAMETER
from api.idempotency import Idempotency, idempotency_for, remember
from api.waiting import prefer_wait, wait_for_job
from relightq.db import session_scope
from relightq.errors import (
    BatchCancelled,
    FieldProblem,
    IdempotencyKeyReused,
    InvalidInput,
    JobFinal,
    JobNotRetryable,
    JobRunning,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    field_problems,
)
from relightq.jobs import service
from relightq.jobs.models import FINAL_STATUSES, Job, JobStatus
from relightq.jobs.schemas import ALLOWED, JobCreate, JobOptions, JobOut, JobPage
from relightq.json_input import parse_json
from relightq.settings import get_settings
from relightq.storage import Storage
from relightq.tenants.models import Tenant

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ENDPOINT = "POST /v1/jobs"

_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompt", "subject_image"],
    "properties": {
        **JobOptions.model_json_schema()["properties"],
        "subject_image": {"type": "string", "format": "binary"},
        "metadata": {"type": "string", "description": "a JSON object, as text"},
    },
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobCreate.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    },
    "parameters": [
        IDEMPOTENCY_PARAMETER,
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "description": "RFC 7240 wait=N (N up to 60): wait up to N seconds for the "
            "final state, answered 200 with Preference-Applied; else 202 as usual.",
            "schema": {"type": "string", "example": "wait=30"},
        },
    ],
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": JobOut,
        "description": "With Prefer: wait=N, the job reached a final state in time",
        "headers": {"Preference-Applied": {"schema": {"type": "string"}}},
    },
    202: {
        "description": "Accepted: the job is stored and queued (see Location)",
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
    **authenticated(MalformedRequest, PayloadTooLarge, UnsupportedMediaType, IdempotencyKeyReused),
}


def _invalid(exc: ValidationError) -> InvalidInput:
    return InvalidInput(field_problems(exc.errors(), ALLOWED))


async def _read_upload(upload: UploadFile | str | None, limit: int) -> bytes:
    if not isinstance(upload, UploadFile):
        return b""  # reported as a field problem by the caller
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"subject_image exceeds the upload limit of {limit} bytes")
    return data


async def _from_json(
    request: Request, db: Session, tenant: Tenant, idempotency: Idempotency
) -> Job | JSONResponse:
    body = await read_json_object(request)
    replay = await idempotency.replay_or_claim(body)
    if replay is not None:
        return replay
    try:
        job_request = JobCreate.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    bucket = get_settings().s3_bucket
    return await run_in_threadpool(service.create_job, db, tenant.id, job_request, bucket)


async def _from_multipart(
    request: Request, db: Session, tenant: Tenant, storage: Storage, idempotency: Idempotency
) -> Job | JSONResponse:
    form, fields = await read_form(request, max_fields=64)
    upload = form.get("subject_image")
    problems: list[FieldProblem] = []
    if not isinstance(upload, UploadFile):
        problems.append(
            FieldProblem("subject_image", "must be an uploaded file", ALLOWED["subject_image"])
        )
    fields.pop("subject_image", None)
    data = await _read_upload(upload, get_settings().max_upload_bytes)
    request_form = {**fields, "subject_image": hashlib.sha256(data).hexdigest()}
    replay = await idempotency.replay_or_claim(request_form)
    if replay is not None:
        return replay
    if isinstance(fields.get("metadata"), str):
        try:
            fields["metadata"] = parse_json(fields["metadata"], "metadata", ALLOWED["metadata"])
        except InvalidInput as exc:
            problems.extend(exc.fields)
            fields.pop("metadata")
    try:
        options = JobOptions.model_validate(fields)
    except ValidationError as exc:
        problems.extend(field_problems(exc.errors(), ALLOWED))
    if problems:
        raise InvalidInput(problems)
    return await run_in_threadpool(
        service.create_job_with_upload, db, tenant.id, options, data, storage
    )


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    openapi_extra=_REQUEST_BODY,
    responses=_RESPONSES,
    summary="Submit one relight job (JSON with an image URL, or multipart with a file)",
)
async def create_job(
    request: Request,
    response: Response,
    tenant: CurrentTenant,
    db: DbSession,
    storage: CurrentStorage,
    kind: SubmittedAs,
    idempotency: Annotated[Idempotency, Depends(idempotency_for(ENDPOINT))],
) -> JobOut | JSONResponse:
    """Validate everything first, store nothing for a rejected request, answer 202.

    With an ``Idempotency-Key`` header, a retry of the same request gets the first answer
    (``Idempotent-Replayed: true``) and creates nothing more. With ``Prefer: wait=N``
    (N up to 60) the answer waits up to N seconds: 200 with the final job, else 202.
    """
    if kind == BodyKind.JSON:
        job = await _from_json(request, db, tenant, idempotency)
    else:
        job = await _from_multipart(request, db, tenant, storage, idempotency)
    if isinstance(job, JSONResponse):
        return job  # the first answer to this Idempotency-Key
    view = service.job_view(job, storage)
    location = f"/v1/jobs/{job.id}"
    if idempotency.key is not None:  # else nothing to keep, and no worker-thread hop
        await run_in_threadpool(idempotency.remember, 202, view, location)
    response.headers["Location"] = location
    wait = prefer_wait(request.headers.get("prefer"))
    if wait is None:
        return view  # the session dependency commits before this answer goes out
    # Committed here, mid-request, not by the session dependency: the workers must see the
    # job (and get its message, sent after the commit) before there is anything to wait for.
    await run_in_threadpool(db.commit)
    # Prefer: wait=N (RFC 7240, as Replicate): the final job within N s, else the 202.
    response.headers["Preference-Applied"] = f"wait={wait}"
    done = await wait_for_job(tenant.id, job.id, wait)
    final = service.job_view(done, storage)
    if done.status in FINAL_STATUSES:
        response.status_code = 200
        # A retry with the same key must get this answer, not the 202 stored with the job.
        await run_in_threadpool(_remember_again, tenant.id, idempotency.key, final, location)
    return final


def _remember_again(tenant_id: uuid.UUID, key: str | None, answer: JobOut, location: str) -> None:
    with session_scope() as session:
        remember(session, tenant_id, key, 200, answer, location)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="One job, with presigned output URLs",
    responses=authenticated(NotFound),
)
def get_job(
    job_id: uuid.UUID, tenant: CurrentTenant, db: DbSession, storage: CurrentStorage
) -> JobOut:
    """A job of the calling tenant; anyone else's is a 404."""
    return service.job_view(service.get_job(db, tenant.id, job_id), storage)


@router.get(
    "", response_model=JobPage, summary="The tenant's jobs, newest first", responses=authenticated()
)
def list_jobs(
    tenant: CurrentTenant,
    db: DbSession,
    storage: CurrentStorage,
    status: JobStatus | None = None,
    batch_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """Keyset-paginated: follow ``next_cursor`` until it is null."""
    jobs, next_cursor = service.list_jobs(db, tenant.id, status, batch_id, cursor, limit)
    return JobPage(items=[service.job_view(j, storage) for j in jobs], next_cursor=next_cursor)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job not yet running",
    responses=authenticated(NotFound, JobRunning, JobFinal),
)
def cancel_job(
    job_id: uuid.UUID, tenant: CurrentTenant, db: DbSession, storage: CurrentStorage
) -> JobOut:
    """Queued and waiting jobs are cancelled; a running one is a 409 (it will finish)."""
    service.cancel_job(db, tenant.id, job_id)
    return service.job_view(service.get_job(db, tenant.id, job_id), storage)


@router.post(
    "/{job_id}/retry",
    response_model=JobOut,
    summary="Run a failed or cancelled job again",
    responses=authenticated(NotFound, JobNotRetryable, BatchCancelled),
)
def retry_job(
    job_id: uuid.UUID, tenant: CurrentTenant, db: DbSession, storage: CurrentStorage
) -> JobOut:
    """Fresh attempts; a batch item goes back to its batch and runs within its window."""
    service.retry_job(db, tenant.id, job_id)
    return service.job_view(service.get_job(db, tenant.id, job_id), storage)
