"""/v1/triggers: define triggers (authenticated), and receive their signed events (not)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import CurrentTenant, DbSession
from api.errors import authenticated, error_responses
from relightq.errors import (
    BadSignature,
    DatabaseUnavailable,
    InvalidInput,
    NameTaken,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RedisUnavailable,
)
from relightq.settings import get_settings
from relightq.triggers import service
from relightq.triggers.schemas import TriggerAccepted, TriggerCreate, TriggerOut

router = APIRouter(prefix="/v1/triggers", tags=["triggers"])


@router.post(
    "",
    status_code=201,
    response_model=TriggerOut,
    summary="Define a trigger",
    responses=authenticated(NameTaken),
)
def create_trigger(
    spec: TriggerCreate, response: Response, tenant: CurrentTenant, db: DbSession
) -> TriggerOut:
    """The answer shows the secret once (for standard-webhooks it is made here)."""
    trigger = service.create_trigger(db, tenant.id, spec)
    response.headers["Location"] = f"/v1/triggers/{trigger.name}"
    return service.trigger_view(trigger, with_secret=True)


@router.get(
    "", response_model=list[TriggerOut], summary="The tenant's triggers", responses=authenticated()
)
def list_triggers(tenant: CurrentTenant, db: DbSession) -> list[TriggerOut]:
    """By name; secrets are not shown."""
    return [service.trigger_view(t) for t in service.list_triggers(db, tenant.id)]


@router.get(
    "/{name}", response_model=TriggerOut, summary="One trigger", responses=authenticated(NotFound)
)
def get_trigger(name: str, tenant: CurrentTenant, db: DbSession) -> TriggerOut:
    """A trigger of the calling tenant."""
    return service.trigger_view(service.get_trigger(db, tenant.id, name))


@router.delete(
    "/{name}", status_code=204, summary="Remove a trigger", responses=authenticated(NotFound)
)
def delete_trigger(name: str, tenant: CurrentTenant, db: DbSession) -> Response:
    """Events sent to it afterwards get 404."""
    db.delete(service.get_trigger(db, tenant.id, name))
    return Response(status_code=204)


@router.post(
    "/{name}",
    status_code=202,
    response_model=TriggerAccepted,
    summary="Receive a signed event (no API key: the signature authenticates it)",
    responses={
        200: {
            "model": TriggerAccepted,
            "description": "a repeat of an event already received (same event id or, for "
            "hmac-sha256, same body): duplicate is true and jobs are the first delivery's; "
            "nothing new is stored",
        },
        # No API key here: the signature is what authenticates the event.
        **error_responses(
            BadSignature,
            NotFound,
            PayloadTooLarge,
            InvalidInput,
            RateLimited,
            DatabaseUnavailable,
            RedisUnavailable,
        ),
    },
)
async def receive_event(
    name: str, request: Request, response: Response, db: DbSession
) -> TriggerAccepted:
    """Verify, then create the jobs once per event; a repeat answers 200 with them."""
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    accepted = await run_in_threadpool(
        service.receive, db, name, headers, body, get_settings().s3_bucket
    )
    if accepted.duplicate:
        response.status_code = 200
    return accepted
