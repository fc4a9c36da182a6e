"""/v1/webhooks: endpoints, the callback secret, events, deliveries and redelivery."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import CurrentTenant, DbSession
from api.errors import authenticated
from relightq.errors import DeliveryInFlight, EndpointDisabled, NotFound
from relightq.webhooks import service
from relightq.webhooks.models import DeliveryStatus, EventType
from relightq.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    EndpointCreate,
    EndpointOut,
    EndpointUpdate,
    EventOut,
    EventPage,
    SecretOut,
)
from relightq.webhooks.secrets import ensure_callback_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Limit = Annotated[int, Query(ge=1, le=200)]


@router.post(
    "/endpoints",
    status_code=201,
    response_model=EndpointOut,
    summary="Register an endpoint",
    responses=authenticated(),
)
def create_endpoint(
    spec: EndpointCreate, response: Response, tenant: CurrentTenant, db: DbSession
) -> EndpointOut:
    """The answer carries the endpoint's signing secret (also at /endpoints/{id}/secret)."""
    endpoint = service.create_endpoint(db, tenant.id, spec)
    response.headers["Location"] = f"/v1/webhooks/endpoints/{endpoint.id}"
    return service.endpoint_view(endpoint, with_secret=True)


@router.get(
    "/endpoints",
    response_model=list[EndpointOut],
    summary="The tenant's endpoints",
    responses=authenticated(),
)
def list_endpoints(tenant: CurrentTenant, db: DbSession) -> list[EndpointOut]:
    """Oldest first; secrets are not shown."""
    return [service.endpoint_view(e) for e in service.list_endpoints(db, tenant.id)]


@router.get(
    "/endpoints/{endpoint_id}",
    response_model=EndpointOut,
    summary="One endpoint",
    responses=authenticated(NotFound),
)
def get_endpoint(endpoint_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> EndpointOut:
    """Shows whether it is enabled and, if not, why (e.g. it answered 410)."""
    return service.endpoint_view(service.get_endpoint(db, tenant.id, endpoint_id))


@router.get(
    "/endpoints/{endpoint_id}/secret",
    response_model=SecretOut,
    summary="An endpoint's signing secret",
    responses=authenticated(NotFound),
)
def get_endpoint_secret(endpoint_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> SecretOut:
    """For the owner's verifier, as Svix and Stripe let their dashboards reveal it."""
    return SecretOut(secret=service.endpoint_secret(db, tenant.id, endpoint_id))


@router.post(
    "/endpoints/{endpoint_id}/rotate-secret",
    response_model=SecretOut,
    summary="A new signing secret for an endpoint",
    responses=authenticated(NotFound),
)
def rotate_endpoint_secret(
    endpoint_id: uuid.UUID, tenant: CurrentTenant, db: DbSession
) -> SecretOut:
    """Deliveries from now on are signed with the new one; the old one stops at once."""
    secret = service.rotate_endpoint_secret(db, tenant.id, endpoint_id)
    return SecretOut(secret=secret)


@router.patch(
    "/endpoints/{endpoint_id}",
    response_model=EndpointOut,
    summary="Change one",
    responses=authenticated(NotFound),
)
def update_endpoint(
    endpoint_id: uuid.UUID, spec: EndpointUpdate, tenant: CurrentTenant, db: DbSession
) -> EndpointOut:
    """Change url, event filter or description; enabled=true re-enables it."""
    endpoint = service.update_endpoint(db, tenant.id, endpoint_id, spec)
    return service.endpoint_view(endpoint)


@router.delete(
    "/endpoints/{endpoint_id}",
    status_code=204,
    summary="Remove an endpoint",
    responses=authenticated(NotFound),
)
def delete_endpoint(endpoint_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> Response:
    """Its pending deliveries are dropped with it."""
    service.delete_endpoint(db, tenant.id, endpoint_id)
    return Response(status_code=204)


@router.get(
    "/callback-secret",
    response_model=SecretOut,
    summary="The callback_url secret",
    responses=authenticated(),
)
def get_callback_secret(tenant: CurrentTenant, db: DbSession) -> SecretOut:
    """Deliveries to any callback_url of this tenant are signed with it; made on first use,
    by this call or the first delivery, whichever comes first."""
    secret = ensure_callback_secret(db, tenant.id)
    return SecretOut(secret=secret)


@router.post(
    "/callback-secret/rotate",
    response_model=SecretOut,
    summary="A new callback_url secret",
    responses=authenticated(),
)
def rotate_callback_secret(tenant: CurrentTenant, db: DbSession) -> SecretOut:
    """Deliveries to callback_url from now on are signed with the new one."""
    secret = service.rotate_callback_secret(db, tenant.id)
    return SecretOut(secret=secret)


@router.get(
    "/events", response_model=EventPage, summary="Events, newest first", responses=authenticated()
)
def list_events(
    tenant: CurrentTenant,
    db: DbSession,
    type: EventType | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
) -> EventPage:
    """Each event with its deliveries and their attempts."""
    events, next_cursor = service.list_events(
        db, tenant.id, type.value if type else None, cursor, limit
    )
    return EventPage(items=events, next_cursor=next_cursor)


@router.get(
    "/events/{event_id}",
    response_model=EventOut,
    summary="One event",
    responses=authenticated(NotFound),
)
def get_event(event_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> EventOut:
    """The payload sent, and every delivery and attempt."""
    return service.get_event(db, tenant.id, event_id)


@router.get(
    "/deliveries",
    response_model=DeliveryPage,
    summary="Deliveries, newest first",
    responses=authenticated(),
)
def list_deliveries(
    tenant: CurrentTenant,
    db: DbSession,
    endpoint_id: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
    status: DeliveryStatus | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
) -> DeliveryPage:
    """Every try with its status code, latency and error class."""
    filters = {"endpoint_id": endpoint_id, "event_id": event_id, "status": status}
    deliveries, next_cursor = service.list_deliveries(db, tenant.id, filters, cursor, limit)
    return DeliveryPage(items=deliveries, next_cursor=next_cursor)


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryOut,
    summary="One delivery",
    responses=authenticated(NotFound),
)
def get_delivery(delivery_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> DeliveryOut:
    """Status, next try and every attempt."""
    return service.get_delivery(db, tenant.id, delivery_id)


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    summary="Send one delivery again",
    responses=authenticated(NotFound, EndpointDisabled, DeliveryInFlight),
)
def redeliver(delivery_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> DeliveryOut:
    """Same webhook-id (receivers can deduplicate), fresh round of retries."""
    delivery = service.redeliver(db, tenant.id, delivery_id)
    return delivery
