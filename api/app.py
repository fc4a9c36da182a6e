"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from sqlalchemy import text

from api import jobs, throttle
from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from relightq.db import get_engine
from relightq.settings import get_settings


def create_app() -> FastAPI:
    """Build the API with its routes, limits and error handlers."""
    settings = get_settings()
    settings.warn_if_simulated()
    app = FastAPI(
        title="relightq",
        version="0.1.0",
        description="Asynchronous job queue relighting product images with Segmind IC-Light.",
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(throttle.router)
    app.mount("/metrics", make_asgi_app())

    @app.get("/healthz", tags=["ops"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="PostgreSQL is reachable")
    def readyz() -> JSONResponse:
        try:
            with get_engine().connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, 503)
        return JSONResponse({"status": "ok"})

    return app
