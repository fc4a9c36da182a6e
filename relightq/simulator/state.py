"""The simulator's mutable state: balance, fault settings, rate limiter, traffic statistics
and the v2 API's submitted requests with their outputs.

Everything runs on one asyncio event loop and no method awaits, so plain attributes are
safe without locks; tests in other threads only assign whole attributes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from relightq.segmind.params import CONTENT_TYPES

MultiImageMode = Literal["base64", "url"]
Api = Literal["v1", "v2"]
RequestStatus = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED"]

LOG_LIMIT = 10_000  # keep the log bounded for long benchmark runs
OUTPUT_LIMIT = 500  # stored images for v1 "url" mode; oldest are dropped first
# Backstop for memory when many v2 requests end within request_ttl_seconds (a long
# benchmark at the default hour): beyond this many final requests the oldest are forgotten
# early, outputs included. Pending requests are never dropped this way.
FINAL_REQUEST_LIMIT = 10_000
WINDOW_SECONDS = 60.0
DEFAULT_FAILED_ERROR = "Inference failed: CUDA out of memory, please retry"

CONFIG_FIELDS: tuple[str, ...] = (
    "credits",
    "latency",
    "cost_per_image",
    "fail_500_rate",
    "rate_429_rate",
    "timeout_rate",
    "timeout_seconds",
    "rate_limit_per_minute",
    "valid_keys",
    "multi_image_mode",
    "failed_rate",
    "failed_error",
    "request_ttl_seconds",
)


@dataclass
class SimulatorStats:
    """What the simulator saw of relight traffic, for tests to assert on.

    A v1 call counts from its arrival to its answer; a v2 request from its submit to its
    final state (a refused submit ends at once), so in_flight and peak_concurrency cover
    both the calls on the wire and the requests Segmind would be working on.
    """

    calls: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_api: Counter[str] = field(default_factory=Counter)
    polls: int = 0  # GETs of a v2 request's status or response
    in_flight: int = 0
    peak_concurrency: int = 0
    max_calls_per_minute: int = 0
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))
    _starts: deque[float] = field(default_factory=deque, repr=False)

    def begin(self, api: Api = "v1") -> dict[str, Any]:
        """Record the start of a relight call (v1) or submit (v2) and return its log entry."""
        now = time.time()
        self.calls += 1
        self.by_api[api] += 1
        self.in_flight += 1
        self.peak_concurrency = max(self.peak_concurrency, self.in_flight)
        self._starts.append(now)
        while self._starts and self._starts[0] <= now - WINDOW_SECONDS:
            self._starts.popleft()
        self.max_calls_per_minute = max(self.max_calls_per_minute, len(self._starts))
        entry: dict[str, Any] = {
            "started_at": now,
            "finished_at": None,
            "status": 0,
            "images": 0,
            "api": api,
            "subject": None,  # the subject URL once the body is parsed; null for uploads
        }
        if api == "v2":
            entry["request_id"] = None  # set when the submit is accepted
        self.log.append(entry)
        return entry

    def finish(self, entry: dict[str, Any], status: int, images: int) -> None:
        """Record the end of a relight call (images = images delivered, 0 on error)."""
        entry.update(finished_at=time.time(), status=status, images=images)
        self.in_flight -= 1
        self.by_status[str(status)] += 1

    def reset(self) -> None:
        """Forget everything seen so far; calls still in flight stay counted as in flight."""
        self.calls = 0
        self.by_status.clear()
        self.by_api.clear()
        self.polls = 0
        self.peak_concurrency = self.in_flight
        self.max_calls_per_minute = 0
        self.log.clear()
        self._starts.clear()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the statistics."""
        return {
            "calls": self.calls,
            "by_status": dict(self.by_status),
            "by_api": {"v1": self.by_api["v1"], "v2": self.by_api["v2"]},
            "polls": self.polls,
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "max_calls_per_minute": self.max_calls_per_minute,
            "log": [dict(entry) for entry in self.log],
        }


@dataclass(eq=False)
class V2Request:
    """One accepted POST /v2/ic-light request, from QUEUED to its final state."""

    id: str
    cost: float  # reserved at submit; refunded if the request ends FAILED
    entry: dict[str, Any] = field(repr=False)  # its stats log entry, settled when final
    submitted: float = field(default_factory=time.monotonic)
    status: RequestStatus = "QUEUED"
    started: float | None = None  # monotonic time PROCESSING began
    finished: float | None = None  # monotonic time it reached a final state
    error: str | None = None
    output_keys: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def final(self) -> bool:
        return self.status in ("COMPLETED", "FAILED")

    def metrics(self) -> dict[str, float]:
        """Seconds spent queued, inferring and in total, as Segmind reports them."""
        end = self.finished if self.finished is not None else time.monotonic()
        started = self.started if self.started is not None else end
        return {
            "inference_time": round(end - started, 3),
            "queue_time": round(started - self.submitted, 3),
            "total_time": round(end - self.submitted, 3),
        }


@dataclass
class SimulatorState:
    """Balance, behaviour settings and statistics of one simulator instance."""

    credits: float = 100.0
    latency: float = 0.0
    cost_per_image: float = 0.037
    fail_500_rate: float = 0.0
    rate_429_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 300.0
    rate_limit_per_minute: int | None = None
    valid_keys: set[str] | None = None
    multi_image_mode: MultiImageMode = "base64"
    failed_rate: float = 0.0
    failed_error: str = DEFAULT_FAILED_ERROR
    request_ttl_seconds: float = 3600.0
    stats: SimulatorStats = field(default_factory=SimulatorStats)
    outputs: OrderedDict[str, tuple[bytes, str]] = field(default_factory=OrderedDict, repr=False)
    # v2 requests by id, and their outputs by key: kept apart from the v1 pool above so
    # OUTPUT_LIMIT never drops the output of a request that is still known.
    requests: dict[str, V2Request] = field(default_factory=dict, repr=False)
    request_outputs: dict[str, tuple[bytes, str]] = field(default_factory=dict, repr=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _window: deque[float] = field(default_factory=deque, repr=False)
    # Ids of final requests in the order they ended, with the monotonic time: one TTL for
    # all, so the front is always the next to expire.
    _ended: OrderedDict[str, float] = field(default_factory=OrderedDict, repr=False)

    def config(self) -> dict[str, Any]:
        """The current settings as JSON."""
        values = {name: getattr(self, name) for name in CONFIG_FIELDS}
        if self.valid_keys is not None:
            values["valid_keys"] = sorted(self.valid_keys)
        return values

    def take_rate_slot(self, now: float) -> float | None:
        """Admit a call under rate_limit_per_minute, or return the epoch time a slot frees up."""
        while self._window and self._window[0] <= now - WINDOW_SECONDS:
            self._window.popleft()
        limit = self.rate_limit_per_minute
        if limit is not None and len(self._window) >= limit:
            return self._window[0] + WINDOW_SECONDS
        self._window.append(now)
        return None

    def store_output(
        self, key: str, data: bytes, content_type: str, request: V2Request | None = None
    ) -> None:
        """Keep an image for GET /v1/outputs/{key}: a v2 request's as long as the request,
        a v1 call's until OUTPUT_LIMIT newer ones push it out."""
        if request is not None:
            self.request_outputs[key] = (data, content_type)
            request.output_keys.append(key)
            return
        self.outputs[key] = (data, content_type)
        while len(self.outputs) > OUTPUT_LIMIT:
            self.outputs.popitem(last=False)

    def output(self, key: str) -> tuple[bytes, str] | None:
        """A stored image and its content type, or None."""
        return self.outputs.get(key) or self.request_outputs.get(key)

    def add_request(self, request: V2Request) -> None:
        """Know an accepted v2 request (its cost is already reserved)."""
        self.requests[request.id] = request

    def complete_request(self, request: V2Request, images: list[bytes], ext: str) -> None:
        """End a v2 request COMPLETED with its images stored; the reserved cost stays paid."""
        if self._known(request):
            for index, data in enumerate(images):
                key = f"{request.id}-{index}.{ext}"  # the id is a uuid4: unguessable enough
                self.store_output(key, data, CONTENT_TYPES[ext], request)
            self._end(request, "COMPLETED", 200, len(images))

    def fail_request(self, request: V2Request, error: str) -> None:
        """End a v2 request FAILED and refund it: Segmind never bills a failed request."""
        if self._known(request):
            self.credits = round(self.credits + request.cost, 9)
            request.error = error
            self._end(request, "FAILED", 422, 0)

    def _known(self, request: V2Request) -> bool:
        # A request forgotten meanwhile is settled already (forget() ended its stats).
        return self.requests.get(request.id) is request and not request.final

    def _end(self, request: V2Request, status: RequestStatus, code: int, images: int) -> None:
        request.status, request.finished, request.task = status, time.monotonic(), None
        self.stats.finish(request.entry, code, images)
        self._ended[request.id] = request.finished
        while len(self._ended) > FINAL_REQUEST_LIMIT:
            self._drop(next(iter(self._ended)))

    def expire(self, now: float | None = None) -> int:
        """Forget requests that ended request_ttl_seconds ago or longer; return how many."""
        now = time.monotonic() if now is None else now
        dropped = 0
        for request_id, ended in list(self._ended.items()):
            if ended + self.request_ttl_seconds > now:
                break
            self._drop(request_id)
            dropped += 1
        return dropped

    def forget(self, request_ids: list[str] | None = None) -> int:
        """Forget the named requests (all when None) at once; return how many were known.

        A pending one stops without a refund, as when Segmind loses a record of work it
        billed; its log entry ends with 404, what its client will now be told.
        """
        ids = list(self.requests) if request_ids is None else request_ids
        forgotten = 0
        for request_id in ids:
            request = self.requests.get(request_id)
            if request is None:
                continue
            if not request.final:
                if request.task is not None:
                    request.task.cancel()
                request.task = None
                request.status, request.finished = "FAILED", time.monotonic()
                self.stats.finish(request.entry, 404, 0)
            self._drop(request_id)
            forgotten += 1
        return forgotten

    def _drop(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        self._ended.pop(request_id, None)
        if request is not None:
            for key in request.output_keys:
                self.request_outputs.pop(key, None)

    def reset(self) -> None:
        """Clear statistics and the rate-limit window (settings, balance and v2 requests stay)."""
        self.stats.reset()
        self._window.clear()


class ConfigUpdate(BaseModel):
    """Body of POST /admin/config: any subset of the settings; only fields sent are applied."""

    model_config = ConfigDict(extra="forbid")

    credits: float = 0.0
    latency: float = Field(default=0.0, ge=0)
    cost_per_image: float = Field(default=0.037, ge=0)
    fail_500_rate: float = Field(default=0.0, ge=0, le=1)
    rate_429_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_seconds: float = Field(default=300.0, ge=0)
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    valid_keys: list[str] | None = None
    multi_image_mode: MultiImageMode = "base64"
    failed_rate: float = Field(default=0.0, ge=0, le=1)
    failed_error: str = Field(default=DEFAULT_FAILED_ERROR, min_length=1, max_length=1000)
    request_ttl_seconds: float = Field(default=3600.0, ge=0)

    def apply(self, state: SimulatorState) -> None:
        """Copy the fields the caller actually sent onto state."""
        for name in self.model_fields_set:
            value = getattr(self, name)
            if name == "valid_keys" and value is not None:
                value = set(value)
            setattr(state, name, value)


class ForgetRequest(BaseModel):
    """Body of POST /admin/forget: the v2 request ids to forget, or none for all of them."""

    model_config = ConfigDict(extra="forbid")

    request_ids: list[str] | None = None
