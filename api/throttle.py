"""/v1/throttle: the fleet's state, and an operator's pause and resume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from api.deps import CurrentTenant, DbSession
from api.errors import authenticated
from relightq.credits.caps import tenant_credits
from relightq.errors import OperatorRequired
from relightq.settings import get_settings
from relightq.tenants.models import Tenant
from relightq.throttle.fleet import Fleet
from relightq.throttle.schemas import PauseIn, ThrottleOut, throttle_view
from relightq.throttle.service import MANUAL, get_fleet, pause_fleet, resume_fleet

router = APIRouter(prefix="/v1/throttle", tags=["throttle"])
CurrentFleet = Annotated[Fleet, Depends(get_fleet)]


def _operator(tenant: CurrentTenant) -> Tenant:
    if not tenant.is_operator:
        raise OperatorRequired
    return tenant


Operator = Annotated[Tenant, Depends(_operator)]


@router.get(
    "",
    response_model=ThrottleOut,
    summary="The fleet: running or paused, and why",
    responses=authenticated(),
)
def get_throttle(tenant: CurrentTenant, db: DbSession, fleet: CurrentFleet) -> ThrottleOut:
    """Shared by every worker; any client may read it. `tenant_credits` is the caller's
    own monthly cap and what counts against it."""
    return throttle_view(fleet.state(), get_settings(), tenant_credits(db, tenant))


@router.post(
    "/pause",
    response_model=ThrottleOut,
    summary="Pause the fleet until resumed by hand",
    responses=authenticated(OperatorRequired),
)
def pause(
    operator: Operator,
    db: DbSession,
    fleet: CurrentFleet,
    body: Annotated[PauseIn | None, Body()] = None,
) -> ThrottleOut:
    """No new upstream call starts after this returns; calls in flight finish."""
    pause_fleet(fleet, MANUAL, (body or PauseIn()).reason, manual=True)
    return throttle_view(fleet.state(), get_settings(), tenant_credits(db, operator))


@router.post(
    "/resume",
    response_model=ThrottleOut,
    summary="Resume the fleet and wake waiting jobs",
    responses=authenticated(OperatorRequired),
)
def resume(operator: Operator, db: DbSession, fleet: CurrentFleet) -> ThrottleOut:
    """Lifts any pause, manual or automatic."""
    resume_fleet(fleet, manual=True)
    return throttle_view(fleet.state(), get_settings(), tenant_credits(db, operator))
