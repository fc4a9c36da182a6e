"""One JSON error shape for every failure: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from relightq.batches.schemas import ALLOWED as BATCH_ALLOWED
from relightq.errors import FieldProblem, RelightqError, field_problems
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


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type to the one error shape; nothing escapes as a bare 500."""

    @app.exception_handler(RelightqError)
    async def _relightq(request: Request, exc: RelightqError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = field_problems(exc.errors(), allowed_for(request.url.path))
        message = "invalid input: " + ", ".join(p.field for p in problems)
        return error_response(422, "validation_error", message, problems, request=request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code, code, str(exc.detail), headers=exc.headers, request=request
        )

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: DBAPIError) -> Response:
        # PostgreSQL restarting is an outage to wait out, not a bug: say so and when to retry.
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; retry shortly",
            headers={"Retry-After": "5"},
            request=request,
        )

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> Response:
        # Input PostgreSQL refuses (a NUL in a multipart or very large body, a number out of
        # range) is the client's to fix. The statement's parameters are never echoed:
        # the engine hides them, and they may hold secrets.
        log.info("unstorable input: %s", type(exc.orig).__name__)
        problem = FieldProblem("body", "holds a value that cannot be stored: " + NUL_HINT)
        return error_response(
            422, "validation_error", "invalid input: body", [problem], request=request
        )

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
        return error_response(
            500,
            "internal_error",
            "an internal error occurred; it has been logged",
            request=request,
        )

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> Response:
        # Fleet state (throttle, pauses) lives in Redis: an outage to wait out, as above.
        log.warning("redis unavailable: %s", type(exc).__name__)
        return error_response(
            503,
            "redis_unavailable",
            "the fleet's Redis is unavailable; retry shortly",
            headers={"Retry-After": "5"},
            request=request,
        )
