"""A local stand-in for the Segmind IC-Light API, as stripe-mock stands in for Stripe.

docs/concepts/simulator.md describes it; docs/reference/upstream.md is the contract it serves.

It validates the same fields, fetches the subject, answers a synthetic image of the final
size, keeps a credit balance, injects faults on request and records what traffic it saw.
It is plainly not IC-Light: every image carries a caption saying so.

Two APIs share all of that: v1 (`POST /v1/ic-light`) answers the image on the call; v2
(`POST /v2/ic-light`) answers a request id at once, works on the request in a background
task and lets the client poll `/v2/requests/{id}/status` and fetch `/v2/requests/{id}`.
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

from relightq.segmind.params import CONTENT_TYPES, RelightParams
from relightq.segmind.wire import (
    Reject,
    SubjectImageError,
    decode_subject,
    parse_request,
    routing_error,
)
from relightq.simulator.imaging import CAPTION, render_all
from relightq.simulator.state import ConfigUpdate, ForgetRequest, SimulatorState, V2Request

__all__ = ["SimulatorState", "create_app", "serve"]

BANNER = {
    "service": "relightq simulator",
    "message": (
        f"Local stand-in for the Segmind IC-Light v1 and v2 APIs; {CAPTION}. Images are synthetic."
    ),
    "endpoints": [
        "POST /v1/ic-light",
        "POST /v2/ic-light",
        "GET /v2/requests/{id}/status",
        "GET /v2/requests/{id}",
        "GET /v1/get-user-credits",
        "GET /v1/outputs/{id}",
        "GET /admin/stats",
        "POST /admin/config",
        "POST /admin/reset",
        "POST /admin/forget",
    ],
}
FETCH_TIMEOUT = 30.0
MAX_SUBJECT_BYTES = 25 * 1024 * 1024
FAULT_429_RESET_SECONDS = 2.0
CREDIT_EPSILON = 1e-9  # float dust from repeated subtraction must not cause a false 406
SWEEP_SECONDS = 1.0  # how often expired v2 requests are dropped while nobody calls
TIMED_OUT_ERROR = "Inference timed out"


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


async def _fetch(client: httpx.AsyncClient, url: str) -> bytes:
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


def _admit(request: Request, state: SimulatorState) -> None:
    """The checks every relight call or submit passes first: key, per-minute limit, faults."""
    _check_key(request, state)
    free_at = state.take_rate_slot(time.time())
    if free_at is not None:
        headers = {"x-rate-limit-reset-at-utc": _utc_iso(free_at)}
        raise Reject(429, "Rate limit exceeded", headers)
    if state.rng.random() < state.fail_500_rate:
        raise Reject(500, "Internal server error")
    if state.rng.random() < state.rate_429_rate:
        reset_at = _utc_iso(time.time() + FAULT_429_RESET_SECONDS)
        raise Reject(429, "Rate limit exceeded", {"x-rate-limit-reset-at-utc": reset_at})


def _reserve(state: SimulatorState, number_of_images: int) -> float:
    """Take the cost from the balance now, or refuse with 406; return the cost.

    Reserved at once and refunded on failure, so concurrent calls never overdraw.
    """
    cost = state.cost_per_image * number_of_images
    if state.credits + CREDIT_EPSILON < cost:
        raise Reject(406, "Not enough credits")
    state.credits = round(state.credits - cost, 9)
    return cost


async def _relight(
    request: Request, state: SimulatorState, entry: dict[str, Any]
) -> tuple[Response, int]:
    received = time.monotonic()
    _admit(request, state)
    if state.rng.random() < state.timeout_rate:
        await _wait(request, state.timeout_seconds)
        raise Reject(504, "Gateway timeout")
    params, subject = await parse_request(request)
    entry["subject"] = subject if isinstance(subject, str) else None

    cost = _reserve(state, params.number_of_images)
    try:
        client: httpx.AsyncClient = request.app.state.http
        data = subject if isinstance(subject, bytes) else await _fetch(client, subject)
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


async def _submit(request: Request, state: SimulatorState, entry: dict[str, Any]) -> Response:
    """Accept a v2 request (same checks and answers as v1), start its work, answer its id."""
    received = time.monotonic()
    _admit(request, state)
    params, subject = await parse_request(request)
    entry["subject"] = subject if isinstance(subject, str) else None
    cost = _reserve(state, params.number_of_images)

    job = V2Request(id=str(uuid.uuid4()), cost=cost, entry=entry, submitted=received)
    entry["request_id"] = job.id
    # Faults are drawn now, so a later config change does not alter a request under way.
    error: str | None = None
    ends_at = received + state.latency
    if state.rng.random() < state.timeout_rate:
        error, ends_at = TIMED_OUT_ERROR, received + state.timeout_seconds
    elif state.rng.random() < state.failed_rate:
        error = state.failed_error
    state.add_request(job)
    job.task = asyncio.create_task(
        _work(request.app.state.http, state, job, params, subject, error, ends_at),
        name=f"v2 request {job.id}",
    )  # the reference in job keeps the task from being garbage collected

    base = f"{request.base_url}v2/requests/{job.id}"
    body = {
        "request_id": job.id,
        "status": job.status,
        "status_url": f"{base}/status",
        "response_url": base,
    }
    return JSONResponse(body, headers={"x-remaining-credits": _credits_text(state.credits)})


async def _work(
    client: httpx.AsyncClient,
    state: SimulatorState,
    job: V2Request,
    params: RelightParams,
    subject: str | bytes,
    error: str | None,
    ends_at: float,
) -> None:
    """Run one v2 request to its final state at ends_at (or when rendering is done)."""
    job.status, job.started = "PROCESSING", time.monotonic()
    images: list[bytes] = []
    try:
        # The subject is fetched and decoded even when a fault is drawn: a bad subject
        # fails with its own message first, as a real pipeline would.
        data = subject if isinstance(subject, bytes) else await _fetch(client, subject)
        try:
            image = await run_in_threadpool(decode_subject, data)
        except SubjectImageError as exc:
            raise Reject(422, str(exc)) from exc
        del data, subject  # the subject bytes are not needed while the request waits
        if error is None:
            images = await run_in_threadpool(render_all, image, params)
    except Reject as reject:
        error = reject.message
    except Exception:  # anything unexpected still ends the request, refunded
        error = "Internal server error"
    # Looped: asyncio may wake a timer up to its clock resolution early.
    while (remaining := ends_at - time.monotonic()) > 0:
        await asyncio.sleep(remaining)
    if error is not None:
        state.fail_request(job, error)
    else:
        state.complete_request(job, images, params.output_format)


def _find(state: SimulatorState, request_id: str) -> V2Request:
    state.expire()
    job = state.requests.get(request_id)
    if job is None:
        raise Reject(404, f"Request {request_id} not found")
    return job


def _failed(job: V2Request) -> JSONResponse:
    body = {"request_id": job.id, "status": "FAILED", "error": job.error, "metrics": job.metrics()}
    return JSONResponse(body, 422)


def _poll(request: Request, state: SimulatorState, request_id: str, result: bool) -> Response:
    """Answer a GET of a v2 request's status (result=False) or its response (True)."""
    state.stats.polls += 1
    try:
        _check_key(request, state)
        job = _find(state, request_id)
    except Reject as reject:
        return reject.response()
    if job.status == "FAILED":
        return _failed(job)
    if not result or job.status != "COMPLETED":
        return JSONResponse({"request_id": job.id, "status": job.status})
    urls = [f"{request.base_url}v1/outputs/{key}" for key in job.output_keys]
    remaining = float(state.credits)
    body = {
        "request_id": job.id,
        "status": "COMPLETED",
        "output": urls[0] if len(urls) == 1 else urls,
        "metrics": {**job.metrics(), "cost": round(job.cost, 9), "remaining_credits": remaining},
    }
    return JSONResponse(body, headers={"x-remaining-credits": _credits_text(state.credits)})


def create_app(state: SimulatorState | None = None) -> FastAPI:
    """The simulator as an ASGI app; pass a state to inspect or steer it from tests."""
    sim = state if state is not None else SimulatorState()

    async def sweep() -> None:
        # Expired v2 requests are also dropped on every v2 call; this bounds memory when
        # the traffic stops.
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            sim.expire()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(FETCH_TIMEOUT)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            app.state.http = client
            sweeper = asyncio.create_task(sweep())
            try:
                yield
            finally:
                sweeper.cancel()
                for job in list(sim.requests.values()):
                    if job.task is not None:
                        job.task.cancel()  # its HTTP client is about to close

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
        entry = sim.stats.begin("v1")
        status, images = 500, 0  # stays 500 if the call crashes or is cancelled
        try:
            try:
                response, images = await _relight(request, sim, entry)
            except Reject as reject:
                response = reject.response()
            status = response.status_code
            return response
        finally:
            sim.stats.finish(entry, status, images)

    @app.post("/v2/ic-light")
    async def ic_light_v2(request: Request) -> Response:
        sim.expire()
        entry = sim.stats.begin("v2")
        accepted = False
        status = 500  # stays 500 if the submit crashes or is cancelled
        try:
            try:
                response = await _submit(request, sim, entry)
                accepted = True
            except Reject as reject:
                response = reject.response()
            status = response.status_code
            return response
        finally:
            if not accepted:  # an accepted request's entry is settled when it ends
                sim.stats.finish(entry, status, 0)

    @app.get("/v2/requests/{request_id}/status")
    async def request_status(request: Request, request_id: str) -> Response:
        return _poll(request, sim, request_id, result=False)

    @app.get("/v2/requests/{request_id}")
    async def request_response(request: Request, request_id: str) -> Response:
        return _poll(request, sim, request_id, result=True)

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
        sim.expire()
        stored = sim.output(key)
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

    @app.post("/admin/forget")
    async def forget(request: Request) -> Response:
        raw = await request.body()
        try:
            body = ForgetRequest.model_validate_json(raw) if raw.strip() else ForgetRequest()
        except ValidationError as exc:
            return JSONResponse({"error": str(exc.errors()[0]["msg"])}, 422)
        return JSONResponse({"forgotten": sim.forget(body.request_ids)})

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
