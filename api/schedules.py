"""/v1/schedules: cron schedules that re-run batches, prefixes or failed jobs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import CurrentStorage, CurrentTenant, DbSession
from api.errors import authenticated
from relightq.errors import NotFound, RunExists
from relightq.schedules import service
from relightq.schedules.schemas import (
    RunOut,
    RunPage,
    ScheduleCreate,
    ScheduleOut,
    ScheduleUpdate,
)
from relightq.settings import get_settings

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


@router.post(
    "",
    status_code=201,
    response_model=ScheduleOut,
    summary="Create a schedule",
    responses=authenticated(),
)
def create_schedule(
    spec: ScheduleCreate,
    response: Response,
    tenant: CurrentTenant,
    db: DbSession,
    storage: CurrentStorage,
) -> ScheduleOut:
    """The answer shows the next run time (UTC) computed in the schedule's time zone."""
    schedule = service.create_schedule(db, tenant.id, spec, storage)
    response.headers["Location"] = f"/v1/schedules/{schedule.id}"
    return service.schedule_view(db, schedule)


@router.get(
    "",
    response_model=list[ScheduleOut],
    summary="The tenant's schedules",
    responses=authenticated(),
)
def list_schedules(tenant: CurrentTenant, db: DbSession) -> list[ScheduleOut]:
    """Oldest first, each with its next run time and latest run."""
    return [service.schedule_view(db, s) for s in service.list_schedules(db, tenant.id)]


@router.get(
    "/{schedule_id}",
    response_model=ScheduleOut,
    summary="One schedule",
    responses=authenticated(NotFound),
)
def get_schedule(schedule_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> ScheduleOut:
    """With its next run time and latest run."""
    return service.schedule_view(db, service.get_schedule(db, tenant.id, schedule_id))


@router.patch(
    "/{schedule_id}",
    response_model=ScheduleOut,
    summary="Change a schedule",
    responses=authenticated(NotFound),
)
def update_schedule(
    schedule_id: uuid.UUID,
    spec: ScheduleUpdate,
    tenant: CurrentTenant,
    db: DbSession,
    storage: CurrentStorage,
) -> ScheduleOut:
    """A new cron or time zone moves the next run time."""
    schedule = service.update_schedule(db, tenant.id, schedule_id, spec, storage)
    return service.schedule_view(db, schedule)


@router.delete(
    "/{schedule_id}",
    status_code=204,
    summary="Delete a schedule",
    responses=authenticated(NotFound),
)
def delete_schedule(schedule_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> Response:
    """Its history goes with it; batches it created stay."""
    db.delete(service.get_schedule(db, tenant.id, schedule_id))
    return Response(status_code=204)


@router.post(
    "/{schedule_id}/pause",
    response_model=ScheduleOut,
    summary="Pause a schedule",
    responses=authenticated(NotFound),
)
def pause(schedule_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> ScheduleOut:
    """No run fires until it is resumed."""
    schedule = service.pause(db, tenant.id, schedule_id)
    return service.schedule_view(db, schedule)


@router.post(
    "/{schedule_id}/resume",
    response_model=ScheduleOut,
    summary="Resume a schedule",
    responses=authenticated(NotFound),
)
def resume(schedule_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> ScheduleOut:
    """Fires from the next cron time on; missed times are not made up."""
    schedule = service.resume(db, tenant.id, schedule_id)
    return service.schedule_view(db, schedule)


@router.post(
    "/{schedule_id}/run",
    status_code=202,
    response_model=RunOut,
    summary="Run a schedule now",
    responses=authenticated(NotFound, RunExists),
)
def run_now(
    schedule_id: uuid.UUID, tenant: CurrentTenant, db: DbSession, storage: CurrentStorage
) -> RunOut:
    """The overlap policy applies: the run may be skipped or queued."""
    run = service.run_now(db, tenant.id, schedule_id, storage, get_settings())
    return service.run_view(db, run)


@router.get(
    "/{schedule_id}/runs",
    response_model=RunPage,
    summary="A schedule's run history",
    responses=authenticated(NotFound),
)
def list_runs(
    schedule_id: uuid.UUID,
    tenant: CurrentTenant,
    db: DbSession,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunPage:
    """Newest first; each run links to the batches it created."""
    runs, next_cursor = service.list_runs(db, tenant.id, schedule_id, cursor, limit)
    return RunPage(items=runs, next_cursor=next_cursor)
