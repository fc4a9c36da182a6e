"""One JSON error shape for every failure: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from relightq.batches.schemas import ALLOWED as BATCH_ALLOWED
from relightq.errors import (
    DatabaseUnavailable,
    FieldProblem,
    InternalError,
    InvalidInput,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RedisUnavailable,
    RelightqError,
    Unauthorized,
    field_problems,
)
from relightq.jobs.schemas import ALLOWED as JOB_ALLOWED
from relightq.schedules.schemas import ALLOWED as SCHEDULE_ALLOWED
from relightq.segmind.wire import routing_error
from relightq.triggers.schemas import ALLOWED as TRIGGER_ALLOWED
from relightq.webhooks.schemas import ALLOWED as WEBHOOK_ALLOWED

# What each area's fields allow, shown with every problem ("allowed" in the error body).
ALLOWED_BY_PREFIX = {
    "/v1/batches": {**JOB_ALLOWED, **BATCH_ALLOWED},
    "/v1/schedules": {**JOB_ALLOWED, **SCHEDULE_ALLOWED},
    "/v1/triggers": {**JOB_ALLOWED, **TRIGGER_ALLOWED},
    "/v1/webhooks": {**JOB_ALLOWED, **WEBHOOK_ALLOWED},
}


def allowed_for(path: str) -> dict[str, str]:
    """The allowed-values hints of the API area ``path`` is in."""
    for prefix, allowed in ALLOWED_BY_PREFIX.items():
        if path.startswith(prefix):
            return allowed
    return JOB_ALLOWED


log = logging.getLogger(__name__)
NUL_HINT = "text must not contain NUL (\\u0000) characters and numbers must fit their fields"


COMPAT_PREFIX = "/compat/segmind/"
DASHBOARD_PREFIX = "/dashboard/"


def error_response(
    status: int,
    code: str,
    message: str,
    fields: list[FieldProblem] | None = None,
    headers: Mapping[str, str] | None = None,
    request: Request | None = None,
) -> Response:
    """The stable error body; under the Segmind-compatible prefix, Segmind's own shape,
    and under /dashboard a page."""
    path = request.url.path if request is not None else ""
    if path.startswith(COMPAT_PREFIX):
        return routing_error(status, message, headers)
    if request is not None and path.startswith(DASHBOARD_PREFIX) and status >= 400:
        from api.dashboard import error_page  # the dashboard imports the API's modules

        return error_page(request, status, message, headers)
    body = {
        "error": {
            "code": code,
            "message": message,
            "fields": [f.as_dict() for f in fields or []],
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def answer(exc: RelightqError, request: Request | None = None) -> Response:
    """The error answer for one catalogued error."""
    return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers, request)


# Starlette's own HTTP errors (unknown path, wrong method, a body over the limit, a broken
# multipart body) answered with the catalogue's code for their status.
_HTTP_ERRORS: dict[int, type[RelightqError]] = {
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type to the one error shape; nothing escapes as a bare 500."""

    @app.exception_handler(RelightqError)
    async def _relightq(request: Request, exc: RelightqError) -> Response:
        return answer(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = field_problems(exc.errors(), allowed_for(request.url.path))
        return answer(InvalidInput(problems), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_ERRORS.get(exc.status_code, MalformedRequest).code
        return error_response(
            exc.status_code, code, str(exc.detail), headers=exc.headers, request=request
        )

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: DBAPIError) -> Response:
        # PostgreSQL restarting is an outage to wait out, not a bug: say so and when to retry.
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        return answer(DatabaseUnavailable(), request)

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> Response:
        # Input PostgreSQL refuses (a NUL in a multipart or very large body, a number out of
        # range) is the client's to fix. The statement's parameters are never echoed:
        # the engine hides them, and they may hold secrets.
        log.info("unstorable input: %s", type(exc.orig).__name__)
        problem = FieldProblem("body", "holds a value that cannot be stored: " + NUL_HINT)
        return answer(InvalidInput([problem]), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # A bug, not the client's doing: still the stable shape, never a plain-text 500.
        # The exception's text stays in the (redacted) log: it may quote a secret or a
        # statement. Starlette re-raises after this answer, so the server logs it too.
        log.error(
            "unhandled %s on %s %s",
            type(exc).__name__,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return answer(InternalError(), request)

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> Response:
        # Fleet state (throttle, pauses) lives in Redis: an outage to wait out, as above.
        log.warning("redis unavailable: %s", type(exc).__name__)
        return answer(RedisUnavailable(), request)


# OpenAPI ---------------------------------------------------------------------------------


class FieldProblemBody(BaseModel):
    """One bad input field, as an error answer lists it."""

    field: str
    message: str
    allowed: str | None = None


class ErrorDetail(BaseModel):
    """What went wrong: a stable code (docs/reference/errors.md), a message, bad fields."""

    code: str
    message: str
    fields: list[FieldProblemBody] = []


class ErrorBody(BaseModel):
    """Every error answer's JSON shape."""

    error: ErrorDetail


# Every authenticated route can answer these: no or a bad key, the key's rate limit, input
# FastAPI refuses, PostgreSQL or Redis down.
AUTHENTICATED: tuple[type[RelightqError], ...] = (
    Unauthorized,
    InvalidInput,
    RateLimited,
    DatabaseUnavailable,
    RedisUnavailable,
)


def error_responses(*errors: type[RelightqError]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that answers ``errors``: per status, the
    ErrorBody schema and the codes it may carry."""
    by_status: dict[int, list[type[RelightqError]]] = {}
    for error in errors:
        listed = by_status.setdefault(error.status, [])
        if error.code not in {e.code for e in listed}:
            listed.append(error)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, listed in sorted(by_status.items()):
        listed.sort(key=lambda e: e.code)
        codes = "; ".join(f"`{e.code}`: {e.meaning()}" for e in listed)
        response: dict[str, Any] = {"model": ErrorBody, "description": codes}
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        responses[status] = response
    return responses


def authenticated(*errors: type[RelightqError]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an API-key route that may also answer ``errors``."""
    return error_responses(*AUTHENTICATED, *errors)
