"""What GET /v1/throttle shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from relightq.credits.amounts import Credits, exact
from relightq.settings import Settings
from relightq.throttle.fleet import FleetState

if TYPE_CHECKING:  # the client reads these schemas: no database modules at run time
    from relightq.credits.caps import TenantCredits


class ThrottleLimits(BaseModel):
    """The fleet-wide caps in force."""

    max_concurrent_calls: int
    max_calls_per_minute: int
    credit_reserve: Credits
    credit_warn_below: Credits | None = None


class TenantCreditsOut(BaseModel):
    """The calling tenant's monthly credit cap, set by an operator, and its month so far."""

    monthly_cap: Credits | None = Field(
        description="Credits the tenant may spend per calendar month (UTC); null: no cap. "
        "Past it, jobs wait (`waiting`, with the reason) and never fail."
    )
    spent_this_month: Credits = Field(description="Credits spent this month (UTC).")
    reserved: Credits = Field(
        description="Credits held now by calls under way, counted against the cap until they end."
    )
    month: str = Field(description="The month counted, YYYY-MM (UTC).", examples=["2025-06"])


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
    tenant_credits: TenantCreditsOut | None = Field(
        default=None,
        description="The calling tenant's monthly credit cap and what counts against it "
        "(null only where no tenant asks: `relightq throttle status`).",
    )


class PauseIn(BaseModel):
    """An operator's pause."""

    reason: str = Field(default="paused by an operator", max_length=500)


def _time(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def tenant_credits_view(credits: TenantCredits) -> TenantCreditsOut:
    """A tenant's month as GET /v1/throttle shows it."""
    return TenantCreditsOut(
        monthly_cap=credits.monthly_cap,
        spent_this_month=credits.spent_this_month,
        reserved=credits.reserved,
        month=f"{credits.month:%Y-%m}",
    )


def throttle_view(
    state: FleetState, settings: Settings, tenant_credits: TenantCredits | None = None
) -> ThrottleOut:
    """The fleet state as the API and CLI show it (with the caller's month, if asked)."""
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
        tenant_credits=None if tenant_credits is None else tenant_credits_view(tenant_credits),
    )
