"""The simulator's mutable state: balance, fault settings, rate limiter and traffic statistics.

Everything runs on one asyncio event loop and no method awaits, so plain attributes are
safe without locks; tests in other threads only assign whole attributes.
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MultiImageMode = Literal["base64", "url"]

LOG_LIMIT = 10_000  # keep the log bounded for long benchmark runs
OUTPUT_LIMIT = 500  # stored images for "url" mode; oldest are dropped first
WINDOW_SECONDS = 60.0

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
)


@dataclass
class SimulatorStats:
    """What the simulator saw of POST /v1/ic-light traffic, for tests to assert on."""

    calls: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    peak_concurrency: int = 0
    max_calls_per_minute: int = 0
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))
    _starts: deque[float] = field(default_factory=deque, repr=False)

    def begin(self) -> dict[str, Any]:
        """Record the start of a relight call and return its log entry."""
        now = time.time()
        self.calls += 1
        self.in_flight += 1
        self.peak_concurrency = max(self.peak_concurrency, self.in_flight)
        self._starts.append(now)
        while self._starts and self._starts[0] <= now - WINDOW_SECONDS:
            self._starts.popleft()
        self.max_calls_per_minute = max(self.max_calls_per_minute, len(self._starts))
        entry: dict[str, Any] = {"started_at": now, "finished_at": None, "status": 0, "images": 0}
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
        self.peak_concurrency = self.in_flight
        self.max_calls_per_minute = 0
        self.log.clear()
        self._starts.clear()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the statistics."""
        return {
            "calls": self.calls,
            "by_status": dict(self.by_status),
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "max_calls_per_minute": self.max_calls_per_minute,
            "log": [dict(entry) for entry in self.log],
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
    stats: SimulatorStats = field(default_factory=SimulatorStats)
    outputs: OrderedDict[str, tuple[bytes, str]] = field(default_factory=OrderedDict, repr=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _window: deque[float] = field(default_factory=deque, repr=False)

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

    def store_output(self, key: str, data: bytes, content_type: str) -> None:
        """Keep an image for GET /v1/outputs/{key}, dropping the oldest beyond OUTPUT_LIMIT."""
        self.outputs[key] = (data, content_type)
        while len(self.outputs) > OUTPUT_LIMIT:
            self.outputs.popitem(last=False)

    def reset(self) -> None:
        """Clear statistics and the rate-limit window (settings and balance stay)."""
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

    def apply(self, state: SimulatorState) -> None:
        """Copy the fields the caller actually sent onto state."""
        for name in self.model_fields_set:
            value = getattr(self, name)
            if name == "valid_keys" and value is not None:
                value = set(value)
            setattr(state, name, value)
