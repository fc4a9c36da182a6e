"""One log line per API request, carrying the tenant it was served for.

Replaces uvicorn's access log (``relightq api`` turns that off): this line goes through
relightq's handler, so it has the ids, the redaction and the JSON format of every other.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relightq.logs import request_scope

log = logging.getLogger("relightq.api")
# Polled every few seconds by orchestrators and Prometheus: logged at DEBUG only.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestLog:
    """ASGI middleware: ``METHOD path status duration`` once the response has started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        started = time.monotonic()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with request_scope():
            try:
                await self.app(scope, receive, recording_send)
            finally:
                elapsed_ms = (time.monotonic() - started) * 1000
                level = logging.DEBUG if scope["path"] in PROBES else logging.INFO
                log.log(
                    level, "%s %s %d %.0f ms", scope["method"], scope["path"], status, elapsed_ms
                )
