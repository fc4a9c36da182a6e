"""Refuse NUL characters in JSON bodies with a 422 naming the field.

PostgreSQL cannot store U+0000 in text or JSONB, so a ``"\\u0000"`` anywhere in a body
would otherwise fail deep in an INSERT as a 500 (and after a partial write elsewhere).
Checking the raw JSON once, at the door, covers every route that takes JSON; only bodies
that contain the escape at all are parsed a second time to find the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import COMPAT_PREFIX
from relightq.errors import NUL_MESSAGE, FieldProblem, nul_field

NUL_ESCAPE = re.compile(rb"\\u0000", re.IGNORECASE)
# Inbound trigger events are signed third-party payloads a tenant cannot fix: the
# trigger strips NUL from the values it maps instead of refusing the event.
EXEMPT = re.compile(r"^/v1/triggers/[^/]+/?$")


class RefuseNul:
    """ASGI middleware: a JSON body with NUL in any string is a 422, before any route.

    Bodies over ``max_bytes`` (a JSON batch may be far bigger than other requests) are
    passed through unbuffered; the database error handler still answers those 422.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope) or EXEMPT.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(chunks, message, receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if not message.get("more_body", False):
                break
            if size > self.max_bytes:
                await self.app(scope, _replay(chunks, None, receive, more=True), send)
                return
        body = b"".join(chunks)
        field = _nul_field_of(body) if NUL_ESCAPE.search(body) else None
        if field is None:
            await self.app(scope, _replay(chunks, None, receive), send)
            return
        await _refuse(send, scope["path"], FieldProblem(field, NUL_MESSAGE))


def _is_json(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return content_type == b"application/json" or content_type.endswith(b"+json")


def _nul_field_of(body: bytes) -> str | None:
    try:
        return nul_field(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # not JSON: the route answers that in its own words


def _replay(
    chunks: list[bytes], last: Message | None, receive: Receive, *, more: bool = False
) -> Receive:
    """A receive() that hands the buffered messages over again, then defers to the server.

    ``more``: the body goes on after ``chunks`` (the rest still comes from ``receive``).
    """
    pending: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": more or i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    if last is not None:
        pending.append(last)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _refuse(send: Send, path: str, problem: FieldProblem) -> None:
    error: dict[str, Any] = {
        "code": "validation_error",
        "message": f"invalid input: {problem.field}",
        "fields": [problem.as_dict()],
    }
    if path.startswith(COMPAT_PREFIX):  # Segmind's shape, for a Segmind client
        body = json.dumps({"error": f"Invalid parameters: {problem.field} {NUL_MESSAGE}"})
    else:
        body = json.dumps({"error": error})
    encoded = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 422,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(encoded)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": encoded})
