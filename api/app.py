"""The FastAPI application."""

from __future__ import annotations

import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from api import batches, compat, dashboard, jobs, schedules, throttle, triggers, webhooks
from api.docs import DOCS_ASSETS, DocsPolicy
from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.nul import RefuseUnstorableText
from api.request_log import RequestLog
from relightq.db import get_engine
from relightq.metrics import FleetStateCollector
from relightq.settings import get_settings
from relightq.storage import get_storage


def create_app() -> FastAPI:
    """Build the API with its routes, limits and error handlers."""
    settings = get_settings()
    settings.warn_if_simulated()
    # /docs and /redoc load Swagger UI and ReDoc from the installed package (api/docs.py),
    # not from a CDN: they work on a host with no way out to the internet.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="relightq",
        version="0.1.0",
        description="Asynchronous job queue relighting product images with Segmind IC-Light.",
    )
    # Added first, so it runs inside the size limit: it buffers only bodies already capped.
    app.add_middleware(RefuseUnstorableText, max_bytes=settings.max_request_bytes)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        # Catalog files may be far bigger than any other request; they are spooled to disk.
        upload_paths={"/v1/batches": settings.max_batch_upload_bytes},
    )
    app.add_middleware(DocsPolicy)
    app.add_middleware(RequestLog)  # outermost: it times and logs what the others answer
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(triggers.router)
    app.include_router(schedules.router)
    app.include_router(compat.router)
    app.include_router(dashboard.router)
    app.include_router(throttle.router)
    _register_fleet_metrics()

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        # A route rather than a mounted app: a mount answers /metrics with a 307 to /metrics/.
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["ops"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="PostgreSQL, Redis and S3 are reachable")
    def readyz() -> JSONResponse:
        checks = {"database": _database_ok, "redis": _redis_ok, "storage": _storage_ok}
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:  # any failure means "not ready", named by its type
                results[name] = type(exc).__name__
        ready = all(value == "ok" for value in results.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", **results}, 200 if ready else 503
        )

    return app


def _register_fleet_metrics() -> None:
    # Once per process, however many apps are built (tests build several).
    global _FLEET_METRICS
    if _FLEET_METRICS is None:
        _FLEET_METRICS = FleetStateCollector()
        REGISTRY.register(_FLEET_METRICS)


_FLEET_METRICS: FleetStateCollector | None = None


def _database_ok() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def _redis_ok() -> None:
    url = get_settings().fleet_redis_url
    if url:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()


def _storage_ok() -> None:
    storage = get_storage()
    storage.check_bucket(storage.bucket)
