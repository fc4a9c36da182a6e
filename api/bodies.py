"""Request bodies: which kind a create route was sent, and reading JSON ones with one set
of answers for what is wrong with them."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from relightq.errors import (
    FieldProblem,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    unstorable_field,
)
from relightq.json_input import parse_json


async def read_json_object(
    request: Request, limit: int | None = None, too_large: str = "the body is too large"
) -> dict[str, Any]:
    """The body as a JSON object; 422 naming ``body`` otherwise (not JSON, nested too
    deeply, not an object), or naming the field that holds NUL or a lone surrogate.

    With ``limit``, the body is read as a stream and refused (413, ``too_large``) as soon
    as it passes ``limit`` bytes: for routes whose size cap is raised for file uploads.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if limit is not None and len(body) > limit:
            raise PayloadTooLarge(too_large)
    # In a worker thread: a JSON batch may be megabytes, and parsing it here would hold up
    # every other request this process is serving.
    parsed = await run_in_threadpool(parse_json, body, "body", "a JSON object", document=True)
    if not isinstance(parsed, dict):
        raise InvalidInput([FieldProblem("body", "must be a JSON object", "a JSON object")])
    return parsed


async def read_form(request: Request, max_fields: int) -> tuple[FormData, dict[str, Any]]:
    """A multipart body with at most one file: the form, and its text fields checked as
    JSON text is (422 naming the field that holds NUL or a lone surrogate)."""
    # Starlette spools an uploaded file to disk past 1 MiB: it is never whole in memory.
    form = await request.form(max_files=1, max_fields=max_fields)
    fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
    # Starlette decodes fields with whatever charset the request names (utf-7 can spell
    # a lone surrogate), and NUL is valid UTF-8.
    if problem := unstorable_field(fields):
        raise InvalidInput([problem])
    return form, fields


class BodyKind(StrEnum):
    """The bodies the create routes take."""

    JSON = "application/json"
    MULTIPART = "multipart/form-data"


async def body_kind(request: Request) -> BodyKind:
    """Content negotiation for the create routes: a JSON or a multipart body, else 415
    (async: a sync dependency costs a worker-thread hop)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        return BodyKind(content_type)
    except ValueError:
        raise UnsupportedMediaType from None


SubmittedAs = Annotated[BodyKind, Depends(body_kind)]
