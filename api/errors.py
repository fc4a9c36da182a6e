"""One JSON error shape for every failure: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from relightq.errors import FieldProblem, RelightqError, field_problems
from relightq.jobs.schemas import ALLOWED

log = logging.getLogger(__name__)


def error_response(
    status: int,
    code: str,
    message: str,
    fields: list[FieldProblem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The stable error body."""
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
    async def _relightq(_: Request, exc: RelightqError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.fields)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = field_problems(exc.errors(), ALLOWED)
        message = "invalid input: " + ", ".join(p.field for p in problems)
        return error_response(422, "validation_error", message, problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(OperationalError)
    async def _database_down(_: Request, exc: DBAPIError) -> JSONResponse:
        # PostgreSQL restarting is an outage to wait out, not a bug: say so and when to retry.
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; retry shortly",
            headers={"Retry-After": "5"},
        )
