"""Reading JSON request bodies with one set of answers for what is wrong with them."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from relightq.errors import FieldProblem, InvalidInput, PayloadTooLarge
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
