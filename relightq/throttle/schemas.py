"""What GET /v1/throttle shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from relightq.credits.amounts import Credits, exact
from relightq.settings import Settings
from relightq.throttle.fleet import FleetState


class ThrottleLimits(BaseModel):
    """The fleet-wide caps in force."""

    max_concurrent_calls: int
    max_calls_per_minute: int
    credit_reserve: Credits
    credit_warn_below: Credits | None = None


class ThrottleOut(BaseModel):
    """The fleet: running or paused and why, last known credits, calls in flight."""

    state: Literal["running", "paused"]
    code: str | None
    reason: str | None
    manual: bool
    paused_at: datetime | None
    credits: Credits | None
    credits_seen_at: datetime | None
    calls_in_flight: int
    calls_last_minute: int
    limits: ThrottleLimits


class PauseIn(BaseModel):
    """An operator's pause."""

    reason: str = Field(default="paused by an operator", max_length=500)


def _time(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def throttle_view(state: FleetState, settings: Settings) -> ThrottleOut:
    """The fleet state as the API and CLI show it."""
    return ThrottleOut(
        state="paused" if state.paused else "running",
        code=state.code,
        reason=state.reason,
        manual=state.manual,
        paused_at=_time(state.paused_at),
        credits=None if state.credits is None else exact(state.credits),
        credits_seen_at=_time(state.credits_seen_at),
        calls_in_flight=state.in_flight,
        calls_last_minute=state.calls_last_minute,
        limits=ThrottleLimits(
            max_concurrent_calls=settings.max_concurrent_calls,
            max_calls_per_minute=settings.max_calls_per_minute,
            credit_reserve=settings.credit_reserve,
            credit_warn_below=settings.credit_warn_below,
        ),
    )
