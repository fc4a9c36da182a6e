"""A local stand-in for the Segmind IC-Light v1 API, as stripe-mock stands in for Stripe.

docs/concepts/simulator.md describes it; docs/reference/upstream.md is the contract it serves.

It validates the same fields, fetches the subject, answers a synthetic image of the final
size, keeps a credit balance, injects faults on request and records what traffic it saw.
It is plainly not IC-Light: every image carries a caption saying so.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from relightq.segmind.params import CONTENT_TYPES
from relightq.segmind.wire import (
    Reject,
    SubjectImageError,
    decode_subject,
    parse_request,
    routing_error,
)
from relightq.simulator.imaging import CAPTION, render_all
from relightq.simulator.state import ConfigUpdate, SimulatorState

__all__ = ["SimulatorState", "create_app", "serve"]

BANNER = {
    "service": "relightq simulator",
    "message": f"Local stand-in for the Segmind IC-Light v1 API; {CAPTION}. Images are synthetic.",
    "endpoints": [
        "POST /v1/ic-light",
        "GET /v1/get-user-credits",
        "GET /v1/outputs/{id}",
        "GET /admin/stats",
        "POST /admin/config",
        "POST /admin/reset",
    ],
}
FETCH_TIMEOUT = 30.0
MAX_SUBJECT_BYTES = 25 * 1024 * 1024
FAULT_429_RESET_SECONDS = 2.0
CREDIT_EPSILON = 1e-9  # float dust from repeated subtraction must not cause a false 406


def _utc_iso(epoch: float) -> str:
    # Whole seconds, rounded up so a client waiting until then is never early.
    moment = dt.datetime.fromtimestamp(math.ceil(epoch), dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _credits_text(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _check_key(request: Request, state: SimulatorState) -> None:
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        raise Reject(401, "Missing x-api-key header")
    if state.valid_keys is not None and key not in state.valid_keys:
        raise Reject(401, "Invalid API key")


async def _fetch(request: Request, url: str) -> bytes:
    client: httpx.AsyncClient = request.app.state.http
    try:
        async with client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise Reject(422, f"Could not fetch subject_image: HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_SUBJECT_BYTES:
                    raise Reject(422, "Could not fetch subject_image: larger than 25 MB")
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise Reject(
            422, f"Could not fetch subject_image: {str(exc) or type(exc).__name__}"
        ) from exc


async def _wait(request: Request, seconds: float) -> None:
    """Sleep without blocking the loop, but end the call if the client hangs up meanwhile.

    Otherwise a call the client abandoned (its own timeout) would stay "in flight" and
    inflate in_flight/peak_concurrency, which tests use to check relightq's concurrency cap.
    """
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if await request.is_disconnected():
            raise Reject(499, "Client closed request")
        await asyncio.sleep(min(remaining, 0.05))


async def _inject_faults(request: Request, state: SimulatorState) -> None:
    if state.rng.random() < state.fail_500_rate:
        raise Reject(500, "Internal server error")
    if state.rng.random() < state.rate_429_rate:
        reset_at = _utc_iso(time.time() + FAULT_429_RESET_SECONDS)
        raise Reject(429, "Rate limit exceeded", {"x-rate-limit-reset-at-utc": reset_at})
    if state.rng.random() < state.timeout_rate:
        await _wait(request, state.timeout_seconds)
        raise Reject(504, "Gateway timeout")


async def _relight(request: Request, state: SimulatorState) -> tuple[Response, int]:
    received = time.monotonic()
    _check_key(request, state)
    free_at = state.take_rate_slot(time.time())
    if free_at is not None:
        headers = {"x-rate-limit-reset-at-utc": _utc_iso(free_at)}
        raise Reject(429, "Rate limit exceeded", headers)
    await _inject_faults(request, state)
    params, subject = await parse_request(request)

    cost = state.cost_per_image * params.number_of_images
    if state.credits + CREDIT_EPSILON < cost:
        raise Reject(406, "Not enough credits")
    # Reserve now, refund on failure: concurrent calls can then never overdraw the balance.
    state.credits = round(state.credits - cost, 9)
    try:
        data = subject if isinstance(subject, bytes) else await _fetch(request, subject)
        try:
            image = await run_in_threadpool(decode_subject, data)
        except SubjectImageError as exc:
            raise Reject(422, str(exc)) from exc
        images = await run_in_threadpool(render_all, image, params)
        # `latency` is the whole call as the client sees it, rendering included, so a
        # benchmark's ideal throughput (cap / latency) is exact. Async: calls overlap.
        await _wait(request, state.latency - (time.monotonic() - received))
    except BaseException:
        state.credits = round(state.credits + cost, 9)
        raise

    content_type = CONTENT_TYPES[params.output_format]
    headers = {"x-remaining-credits": _credits_text(state.credits)}
    if len(images) == 1:
        return Response(images[0], media_type=content_type, headers=headers), 1
    if state.multi_image_mode == "url":
        entries = []
        for data in images:
            key = f"{uuid.uuid4().hex}.{params.output_format}"
            state.store_output(key, data, content_type)
            entries.append(f"{request.base_url}v1/outputs/{key}")
    else:
        entries = [base64.b64encode(data).decode("ascii") for data in images]
    return JSONResponse({"images": entries}, headers=headers), len(images)


def create_app(state: SimulatorState | None = None) -> FastAPI:
    """The simulator as an ASGI app; pass a state to inspect or steer it from tests."""
    sim = state if state is not None else SimulatorState()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(FETCH_TIMEOUT)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            app.state.http = client
            yield

    app = FastAPI(
        title="relightq simulator (not IC-Light)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.sim = sim

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return routing_error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "Internal server error"}, 500)

    @app.get("/")
    async def banner() -> dict[str, Any]:
        return BANNER

    @app.post("/v1/ic-light")
    async def ic_light(request: Request) -> Response:
        entry = sim.stats.begin()
        status, images = 500, 0  # stays 500 if the call crashes or is cancelled
        try:
            try:
                response, images = await _relight(request, sim)
            except Reject as reject:
                response = reject.response()
            status = response.status_code
            return response
        finally:
            sim.stats.finish(entry, status, images)

    @app.get("/v1/get-user-credits")
    async def user_credits(request: Request) -> Response:
        try:
            _check_key(request, sim)
        except Reject as reject:
            return reject.response()
        body = {
            "credits": float(sim.credits),
            "email": "simulator@relightq.local",
            "simulator": True,
        }
        return JSONResponse(body)

    @app.get("/v1/outputs/{key}")
    async def output(key: str) -> Response:
        stored = sim.outputs.get(key)
        if stored is None:
            return JSONResponse({"error": "Not found"}, 404)
        return Response(stored[0], media_type=stored[1])

    @app.get("/admin/stats")
    async def stats() -> dict[str, Any]:
        return {**sim.stats.snapshot(), "credits": float(sim.credits)}

    @app.get("/admin/config")
    async def get_config() -> dict[str, Any]:
        return sim.config()

    @app.post("/admin/config")
    async def set_config(request: Request) -> Response:
        try:
            update = ConfigUpdate.model_validate_json(await request.body())
        except ValidationError as exc:
            problems = [
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            ]
            return JSONResponse({"error": "; ".join(problems)}, 422)
        update.apply(sim)
        return JSONResponse(sim.config())

    @app.post("/admin/reset")
    async def reset() -> dict[str, Any]:
        sim.reset()
        return sim.stats.snapshot()

    return app


def serve(
    host: str = "127.0.0.1", port: int = 8090, credits: float = 100.0, latency: float = 0.0
) -> None:
    """Run the simulator with uvicorn until interrupted."""
    print(f"relightq simulator on http://{host}:{port} ({CAPTION})")
    print(f"credits={credits} latency={latency}s; admin at /admin/stats and /admin/config")
    uvicorn.run(
        create_app(SimulatorState(credits=float(credits), latency=float(latency))),
        host=host,
        port=port,
    )
