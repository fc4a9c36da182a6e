"""Refuse NUL characters and lone surrogates in JSON bodies with a 422 naming the field.

PostgreSQL cannot store U+0000 in text or JSONB, so a ``"\\u0000"`` anywhere in a body
would otherwise fail deep in an INSERT as a 500 (and after a partial write elsewhere).
An unpaired surrogate (``"\\udfff"``) is worse: json.loads accepts it, but it is not
Unicode text, so the first step that encodes it (a validator's message, a digest, an
INSERT) raises UnicodeEncodeError, a 500 in whichever place that is. Checking the raw
JSON once, at the door, covers every route that takes JSON, including the ones FastAPI
parses itself; only bodies that could hold either are parsed a second time to find the
field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import COMPAT_PREFIX
from relightq.errors import FieldProblem, InvalidInput, unstorable_field

# Bodies that may decode to NUL or a surrogate: the escapes; the bytes json.loads decodes
# to a surrogate (it reads UTF-8 with surrogatepass); and any NUL byte, which a body in
# UTF-16 or UTF-32 (json.loads detects those too) always has, escapes and all.
MAY_BE_UNSTORABLE = re.compile(
    rb"\\u0000|\\ud[89a-f][0-9a-f]{2}|\xed[\xa0-\xbf]|\x00", re.IGNORECASE
)
# Inbound trigger events are signed third-party payloads a tenant cannot fix: the
# trigger cleans such text (relightq.errors.storable) instead of refusing the event.
EXEMPT = re.compile(r"^/v1/triggers/[^/]+/?$")


class RefuseUnstorableText:
    """ASGI middleware: a JSON body with NUL or a lone surrogate in any key or string is a
    422, before any route.

    Bodies over ``max_bytes`` (a JSON batch may be far bigger than other requests) are
    passed through unbuffered; the routes that take them parse them with
    relightq.json_input.parse_json, which refuses the same text.
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
        problem = _unstorable_in(body) if MAY_BE_UNSTORABLE.search(body) else None
        if problem is None:
            await self.app(scope, _replay(chunks, None, receive), send)
            return
        await _refuse(send, scope["path"], problem)


def _is_json(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return content_type == b"application/json" or content_type.endswith(b"+json")


def _unstorable_in(body: bytes) -> FieldProblem | None:
    try:
        return unstorable_field(json.loads(body))
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
        "code": InvalidInput.code,
        "message": f"invalid input: {problem.field}",
        "fields": [problem.as_dict()],
    }
    if path.startswith(COMPAT_PREFIX):  # Segmind's shape, for a Segmind client
        body = json.dumps({"error": f"Invalid parameters: {problem.field} {problem.message}"})
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
