"""/compat/segmind/: Segmind's IC-Light v1 and its async v2, with relightq behind them.

A client written for Segmind works unchanged but for the URL and the key (a relightq API
key in ``x-api-key``): the call runs as a high-priority job with relightq's retries,
throttling and storage, and the answers are Segmind's. ``POST /v1/ic-light`` waits for the
job and answers image bytes and x-remaining-credits, or Segmind's status code and
``{"error": ...}``. ``POST /v2/ic-light`` answers at once with a request id and the URLs
of its status and result, which Segmind's SDK polls (``SegmindClient.run``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import suppress
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.deps import CurrentStorage, ExplicitSession, tenant_for_key
from api.waiting import POLL_SECONDS, wait_for_job
from relightq.compat import (
    COMPAT_PRIORITY,
    SegmindAnswer,
    capped_answer,
    error,
    final_answer,
    not_found,
    parked_by_pause,
    paused_answer,
    request_state,
)
from relightq.db import session_scope
from relightq.errors import InvalidInput, NotFound, RateLimited, RelightqError, Unauthorized
from relightq.jobs import service
from relightq.jobs.models import FINAL_STATUSES, Job
from relightq.jobs.schemas import JobCreate, JobOptions
from relightq.segmind.params import RelightParams
from relightq.segmind.wire import Reject, SubjectImageError, decode_subject, parse_request
from relightq.settings import get_settings
from relightq.storage import Storage
from relightq.tenants.models import Tenant
from relightq.throttle.service import get_fleet

router = APIRouter(prefix="/compat/segmind", tags=["segmind-compatible"])
# Route names: v2's submit answer links to both.
STATUS_ROUTE = "segmind_v2_status"
RESULT_ROUTE = "segmind_v2_result"


def _respond(answer: SegmindAnswer) -> Response:
    if answer.error is not None:
        return JSONResponse({"error": answer.error}, answer.status, headers=answer.headers)
    return Response(
        answer.body, answer.status, headers=answer.headers, media_type=answer.media_type
    )


def _problems(exc: InvalidInput) -> str:
    return "Invalid parameters: " + "; ".join(f"{p.field} {p.message}" for p in exc.fields)


# Documented as Segmind documents its endpoint: the same fields as JSON (an image URL) or
# multipart (a file or a URL), the key in x-api-key, and Segmind's status codes.
_PARAMS_SCHEMA = RelightParams.model_json_schema()
_KEY_PARAMETER: dict[str, Any] = {
    "name": "x-api-key",
    "in": "header",
    "required": True,
    "description": "a relightq API key (where Segmind takes a Segmind key)",
    "schema": {"type": "string"},
}
_COMPAT_REQUEST: dict[str, Any] = {
    "parameters": [_KEY_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    **_PARAMS_SCHEMA,
                    "properties": {
                        **_PARAMS_SCHEMA["properties"],
                        "subject_image": {"type": "string", "format": "uri"},
                    },
                    "required": ["prompt", "subject_image"],
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **_PARAMS_SCHEMA["properties"],
                        "subject_image": {
                            "description": "an image file, or its URL as text",
                            "type": "string",
                            "format": "binary",
                        },
                    },
                    "required": ["prompt", "subject_image"],
                }
            },
        },
    },
}
_SEGMIND_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    }
}


def _errors(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"description": described[status], **_SEGMIND_ERROR} for status in sorted(described)
    }


# What both POST routes refuse before a job exists.
_SUBMIT_REFUSALS = {
    401: "missing or invalid x-api-key; or Segmind refused relightq's own key (the fleet is "
    "paused, no job is made)",
    406: "not enough credits: the fleet is paused for credits (no job is made); or a body "
    "neither JSON nor multipart",
    413: "subject_image or the body is too large",
    422: "invalid parameters, in Segmind's words",
    429: "rate limited (Retry-After)",
    503: "the fleet is paused by an operator or a dependency is down (Retry-After)",
}
_COMPAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the image bytes; x-remaining-credits as Segmind sends it",
        "content": {"image/webp": {}, "image/jpeg": {}, "image/png": {}},
        "headers": {"x-remaining-credits": {"schema": {"type": "string"}}},
    },
    **_errors(
        {
            **_SUBMIT_REFUSALS,
            422: "invalid parameters, or the upstream's refusal, in Segmind's words",
            500: "Segmind kept failing after every retry",
            504: "no answer within COMPAT_WAIT_SECONDS; the job goes on (Location)",
        }
    ),
}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": properties, "required": required}
            }
        }
    }


_V2_STATE = {"type": "string", "enum": ["QUEUED", "PROCESSING", "COMPLETED", "FAILED"]}
_V2_METRICS = {
    "type": "object",
    "description": "seconds from the last start to the end (inference_time), from "
    "submission to that start (queue_time) and to the end (total_time); credits used "
    "(cost), the balance after the call when known",
    "properties": {
        name: {"type": "number"}
        for name in ("inference_time", "queue_time", "total_time", "cost", "remaining_credits")
    },
}
_V2_FAILED = {
    "description": "FAILED (the job failed or was cancelled): Segmind's error, in the "
    "upstream's own words where it refused",
    **_object(
        {
            "request_id": {"type": "string"},
            "status": {"const": "FAILED"},
            "error": {"type": "string"},
            "metrics": _V2_METRICS,
        },
        ["request_id", "status", "error", "metrics"],
    ),
}
_V2_LOOKUP_REFUSALS = _errors(
    {
        401: "missing or invalid x-api-key",
        404: "no request of this key's tenant has this id",
        429: "rate limited (Retry-After)",
    }
)
_V2_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "queued: poll status_url, then fetch response_url",
        **_object(
            {
                "request_id": {"type": "string", "format": "uuid"},
                "status": {"const": "QUEUED"},
                "status_url": {"type": "string", "format": "uri"},
                "response_url": {"type": "string", "format": "uri"},
            },
            ["request_id", "status", "status_url", "response_url"],
        ),
    },
    **_errors(_SUBMIT_REFUSALS),
}
_V2_STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "QUEUED (also while the fleet is paused), PROCESSING or COMPLETED",
        **_object(
            {"request_id": {"type": "string"}, "status": _V2_STATE}, ["request_id", "status"]
        ),
    },
    422: _V2_FAILED,
    **_V2_LOOKUP_REFUSALS,
}
_V2_RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "COMPLETED with the presigned URL of the image (a list for several), "
        "or the state of a request not done yet (no output)",
        "headers": {"x-remaining-credits": {"schema": {"type": "string"}}},
        **_object(
            {
                "request_id": {"type": "string"},
                "status": _V2_STATE,
                "output": {
                    "oneOf": [
                        {"type": "string", "format": "uri"},
                        {"type": "array", "items": {"type": "string", "format": "uri"}},
                    ]
                },
                "metrics": _V2_METRICS,
            },
            ["request_id", "status"],
        ),
    },
    422: _V2_FAILED,
    **_V2_LOOKUP_REFUSALS,
}


def _caller(db: Session, request: Request) -> Tenant | SegmindAnswer:
    """The tenant of the x-api-key, or Segmind's refusal (401, or 429 over its rate)."""
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        return error(401, "Missing x-api-key header")
    try:
        return tenant_for_key(db, key)
    except Unauthorized:
        return error(401, "Invalid API key")
    except RateLimited as exc:
        return error(429, exc.message, **exc.headers)


async def _submit(request: Request, db: Session, storage: Storage) -> tuple[Tenant, Job] | Response:
    """What v1 and v2 share: the key, the body, the fleet's pause, then the job, committed
    (the workers must see it before anyone waits or polls for it); or the refusal."""
    tenant = await run_in_threadpool(_caller, db, request)
    if isinstance(tenant, SegmindAnswer):
        return _respond(tenant)
    try:
        params, subject = await parse_request(request)
    except Reject as exc:
        return exc.response()
    paused = paused_answer(get_fleet().state())
    if paused is not None:
        return _respond(paused)  # refused now, as Segmind would: no job is made
    settings = get_settings()
    fields = {**params.model_dump(), "priority": COMPAT_PRIORITY}
    try:
        if isinstance(subject, str):
            job = await run_in_threadpool(
                service.create_job,
                db,
                tenant.id,
                JobCreate.model_validate({**fields, "subject_image": subject}),
                settings.s3_bucket,
            )
        else:
            if len(subject) > settings.max_upload_bytes:
                return _respond(error(413, "subject_image is too large"))
            try:  # refused in the upstream's words, before a job is made
                await run_in_threadpool(decode_subject, subject)
            except SubjectImageError as exc:
                return _respond(error(422, str(exc)))
            options = JobOptions.model_validate(fields)
            job = await run_in_threadpool(
                service.create_job_with_upload, db, tenant.id, options, subject, storage
            )
    except InvalidInput as exc:
        return _respond(error(422, _problems(exc)))
    except RelightqError as exc:
        return _respond(error(exc.status, exc.message))
    await run_in_threadpool(db.commit)
    return tenant, job


@router.post(
    "/v1/ic-light",
    summary="Segmind IC-Light v1, queued: same fields, same answers",
    response_class=Response,
    responses=_COMPAT_RESPONSES,
    openapi_extra=_COMPAT_REQUEST,
)
async def ic_light(request: Request, db: ExplicitSession, storage: CurrentStorage) -> Response:
    """JSON or multipart exactly as Segmind takes them; waits for the image."""
    submitted = await _submit(request, db, storage)
    if isinstance(submitted, Response):
        return submitted
    tenant, job = submitted
    settings = get_settings()
    deadline = time.monotonic() + settings.compat_wait_seconds
    while True:
        remaining = deadline - time.monotonic()
        done = await wait_for_job(tenant.id, job.id, max(remaining, 0), stop=parked_by_pause)
        if done.status in FINAL_STATUSES:
            return _respond(await run_in_threadpool(final_answer, done, storage))
        paused = None
        if parked_by_pause(done):
            paused = capped_answer(done) or paused_answer(get_fleet().state())
        if paused is not None:
            # What Segmind would have said (406, 401) or a 503: say it, and make sure the
            # job never runs (and charges) later for a caller who has gone.
            await run_in_threadpool(_cancel, job.id, tenant.id)
            return _respond(paused)
        if remaining <= 0:
            return _respond(
                error(
                    504,
                    f"still running after {settings.compat_wait_seconds:g} s; "
                    f"follow it at /v1/jobs/{job.id}",
                    Location=f"/v1/jobs/{job.id}",
                )
            )
        # Parked, but the fleet has resumed since: the wake-up is on its way.
        await asyncio.sleep(POLL_SECONDS)


def _cancel(job_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    # If it started meanwhile, cancelling is refused and its outcome is recorded as usual.
    with session_scope() as session, suppress(RelightqError):
        service.cancel_job(session, tenant_id, job_id)


@router.post(
    "/v2/ic-light",
    summary="Segmind IC-Light v2 (async): queued at once, polled by Segmind's SDK",
    response_class=Response,
    responses=_V2_SUBMIT_RESPONSES,
    openapi_extra=_COMPAT_REQUEST,
)
async def ic_light_v2(request: Request, db: ExplicitSession, storage: CurrentStorage) -> Response:
    """The v1 route's body and refusals; answers with the request id and where to poll."""
    submitted = await _submit(request, db, storage)
    if isinstance(submitted, Response):
        return submitted
    _, job = submitted
    # Absolute, as Segmind's are: url_for builds them on the request's base URL, so the
    # root path and a proxy's forwarded scheme (uvicorn's proxy headers) are honoured.
    return JSONResponse(
        {
            "request_id": str(job.id),
            "status": "QUEUED",
            "status_url": str(request.url_for(STATUS_ROUTE, request_id=str(job.id))),
            "response_url": str(request.url_for(RESULT_ROUTE, request_id=str(job.id))),
        }
    )


def _lookup(request: Request, db: Session, request_id: str) -> Job | SegmindAnswer:
    """The caller's job with this id, or Segmind's refusal (401, 429, 404)."""
    tenant = _caller(db, request)
    if isinstance(tenant, SegmindAnswer):
        return tenant
    try:
        return service.get_job(db, tenant.id, uuid.UUID(request_id))
    except (ValueError, NotFound):  # not an id at all, or none of this tenant's
        return not_found(request_id)


@router.get(
    "/v2/requests/{request_id}/status",
    name=STATUS_ROUTE,
    summary="Segmind v2: a request's state",
    response_class=Response,
    responses=_V2_STATUS_RESPONSES,
    openapi_extra={"parameters": [_KEY_PARAMETER]},
)
def request_status(
    request_id: str, request: Request, db: ExplicitSession, storage: CurrentStorage
) -> Response:
    """QUEUED, PROCESSING, COMPLETED, or FAILED as a 422 with Segmind's error."""
    found = _lookup(request, db, request_id)
    if isinstance(found, SegmindAnswer):
        return _respond(found)
    return _respond(request_state(found, storage, output=False))


@router.get(
    "/v2/requests/{request_id}",
    name=RESULT_ROUTE,
    summary="Segmind v2: a request's result (presigned image URLs)",
    response_class=Response,
    responses=_V2_RESULT_RESPONSES,
    openapi_extra={"parameters": [_KEY_PARAMETER]},
)
def request_result(
    request_id: str, request: Request, db: ExplicitSession, storage: CurrentStorage
) -> Response:
    """COMPLETED with the output URL(s) and metrics; FAILED as the status route; else the
    state alone."""
    found = _lookup(request, db, request_id)
    if isinstance(found, SegmindAnswer):
        return _respond(found)
    return _respond(request_state(found, storage, output=True))
