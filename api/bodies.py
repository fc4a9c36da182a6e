"""Reading JSON request bodies with one set of answers for what is wrong with them."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from relightq.errors import FieldProblem, InvalidInput, RelightqError


async def read_json_object(
    request: Request, limit: int | None = None, too_large: str = "the body is too large"
) -> dict[str, Any]:
    """The body as a JSON object; 422 naming ``body`` otherwise.

    With ``limit``, the body is read as a stream and refused (413, ``too_large``) as soon
    as it passes ``limit`` bytes: for routes whose size cap is raised for file uploads.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if limit is not None and len(body) > limit:
            raise RelightqError(too_large, 413, "payload_too_large")
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput([FieldProblem("body", "is not valid JSON", "a JSON object")]) from exc
    if not isinstance(parsed, dict):
        raise InvalidInput([FieldProblem("body", "must be a JSON object", "a JSON object")])
    return parsed
