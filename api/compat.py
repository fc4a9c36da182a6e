"""POST /compat/segmind/v1/ic-light: Segmind's IC-Light v1, with relightq behind it.

A client written for Segmind works unchanged but for the URL and the key (a relightq API
key in ``x-api-key``): the call runs as a high-priority job with relightq's retries,
throttling and storage, and the answer is Segmind's - image bytes and
x-remaining-credits, or its status code and ``{"error": ...}``.
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

from api.deps import CurrentStorage, ExplicitSession, tenant_for_key
from api.waiting import POLL_SECONDS, wait_for_job
from relightq.compat import (
    COMPAT_PRIORITY,
    SegmindAnswer,
    error,
    final_answer,
    parked_by_pause,
    paused_answer,
)
from relightq.db import session_scope
from relightq.errors import InvalidInput, RateLimited, RelightqError, Unauthorized
from relightq.jobs import service
from relightq.jobs.models import FINAL_STATUSES
from relightq.jobs.schemas import JobCreate, JobOptions
from relightq.segmind.params import RelightParams
from relightq.segmind.wire import Reject, SubjectImageError, decode_subject, parse_request
from relightq.settings import get_settings
from relightq.throttle.service import get_fleet

router = APIRouter(prefix="/compat/segmind", tags=["segmind-compatible"])


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
_COMPAT_REQUEST: dict[str, Any] = {
    "parameters": [
        {
            "name": "x-api-key",
            "in": "header",
            "required": True,
            "description": "a relightq API key (where Segmind takes a Segmind key)",
            "schema": {"type": "string"},
        }
    ],
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
_COMPAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the image bytes; x-remaining-credits as Segmind sends it",
        "content": {"image/webp": {}, "image/jpeg": {}, "image/png": {}},
        "headers": {"x-remaining-credits": {"schema": {"type": "string"}}},
    },
    **{
        status: {"description": description, **_SEGMIND_ERROR}
        for status, description in {
            401: "missing or invalid x-api-key",
            406: "not enough credits: the fleet is paused for credits (no job is made)",
            422: "invalid parameters, in Segmind's words",
            429: "rate limited (Retry-After)",
            500: "Segmind kept failing after every retry",
            503: "the fleet is paused by an operator or a dependency is down (Retry-After)",
            504: "no answer within COMPAT_WAIT_SECONDS; the job goes on (Location)",
        }.items()
    },
}


@router.post(
    "/v1/ic-light",
    summary="Segmind IC-Light v1, queued: same fields, same answers",
    response_class=Response,
    responses=_COMPAT_RESPONSES,
    openapi_extra=_COMPAT_REQUEST,
)
async def ic_light(request: Request, db: ExplicitSession, storage: CurrentStorage) -> Response:
    """JSON or multipart exactly as Segmind takes them; waits for the image."""
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        return _respond(error(401, "Missing x-api-key header"))
    try:
        tenant = await run_in_threadpool(tenant_for_key, db, key)
    except Unauthorized:
        return _respond(error(401, "Invalid API key"))
    except RateLimited as exc:
        return _respond(error(429, exc.message, **exc.headers))
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
    # Committed here, mid-request: the workers must see the job before we wait for it.
    await run_in_threadpool(db.commit)
    deadline = time.monotonic() + settings.compat_wait_seconds
    while True:
        remaining = deadline - time.monotonic()
        done = await wait_for_job(tenant.id, job.id, max(remaining, 0), stop=parked_by_pause)
        if done.status in FINAL_STATUSES:
            return _respond(await run_in_threadpool(final_answer, done, storage))
        paused = paused_answer(get_fleet().state()) if parked_by_pause(done) else None
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
