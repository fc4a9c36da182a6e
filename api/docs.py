"""The documentation pages, /docs (Swagger UI) and /redoc (ReDoc), with no internet.

fastapi-offline serves both from the scripts and styles its wheel ships (under
DOCS_ASSETS), instead of FastAPI's default pages, which load them from a CDN and stay
blank on a host with no way out. ReDoc (2.5) still asks Redocly's CDN for the logo in its
side menu, whatever its options: the pages' Content-Security-Policy keeps the browser from
asking any origin but the API's, for that logo or anything a later version might fetch.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Swagger UI's and ReDoc's files, public like the pages (no API key, no rate limit).
DOCS_ASSETS = "/static-offline-docs"
DOCS_PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
POLICY = "; ".join(
    (
        "default-src 'self'",
        # Swagger UI is started by an inline script; ReDoc injects its styles inline.
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "worker-src 'self' blob:",  # ReDoc's search runs in a worker built from a blob
        "object-src 'none'",
        "base-uri 'self'",
    )
)


class DocsPolicy:
    """ASGI middleware: the documentation pages may load from and talk to their own
    origin only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) not in DOCS_PAGES:
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"content-security-policy"
                ]
                headers.append((b"content-security-policy", POLICY.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_policy)


def _route_path(scope: Scope) -> str:
    """The path the app routes on, without the prefix a proxy may mount it under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
