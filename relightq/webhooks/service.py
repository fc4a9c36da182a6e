"""Managing endpoints, reading events and deliveries, redelivering by hand."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from relightq.db import utcnow
from relightq.errors import DeliveryInFlight, EndpointDisabled, NotFound
from relightq.pagination import newest_first, page
from relightq.tenants import known_keys
from relightq.tenants.models import Tenant
from relightq.webhooks.events import publish_delivery
from relightq.webhooks.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from relightq.webhooks.schemas import (
    AttemptOut,
    DeliveryOut,
    EndpointCreate,
    EndpointOut,
    EndpointUpdate,
    EventOut,
)
from relightq.webhooks.secrets import new_secret


def endpoint_view(endpoint: WebhookEndpoint, with_secret: bool = False) -> EndpointOut:
    """An endpoint as the API shows it."""
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        event_types=endpoint.event_types,
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        created_at=endpoint.created_at,
        secret=endpoint.secret if with_secret else None,
    )


def create_endpoint(
    session: Session, tenant_id: uuid.UUID, spec: EndpointCreate
) -> WebhookEndpoint:
    """Register an endpoint with a fresh signing secret."""
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        url=spec.url,
        event_types=[t.value for t in spec.event_types],
        description=spec.description,
        secret=new_secret(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """A tenant's endpoint; anyone else's is a 404."""
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id
        )
    )
    if endpoint is None:
        raise NotFound("webhook endpoint")
    return endpoint


def list_endpoints(session: Session, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    """Every endpoint of the tenant, oldest first."""
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.created_at)
        )
    )


def update_endpoint(
    session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, spec: EndpointUpdate
) -> WebhookEndpoint:
    """Change url, filter, description, or enable/disable by hand."""
    endpoint = get_endpoint(session, tenant_id, endpoint_id)
    if spec.url is not None and spec.url != endpoint.url:
        endpoint.url = spec.url
        # Deliveries waiting for a retry now show where it will go; sent ones keep the
        # URL they were sent to until they are sent again (the worker reads the endpoint).
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint.id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
            )
            .values(url=spec.url)
        )
    if spec.event_types is not None:
        endpoint.event_types = [t.value for t in spec.event_types]
    if spec.description is not None:
        endpoint.description = spec.description
    if spec.enabled is not None:
        endpoint.enabled = spec.enabled
        endpoint.disabled_reason = None if spec.enabled else "disabled by the tenant"
    session.flush()
    return endpoint


def delete_endpoint(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Remove an endpoint and its deliveries' records."""
    session.delete(get_endpoint(session, tenant_id, endpoint_id))
    session.flush()


def rotate_endpoint_secret(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> str:
    """A new signing secret for an endpoint (the old one stops at once)."""
    endpoint = get_endpoint(session, tenant_id, endpoint_id)
    endpoint.secret = new_secret()
    session.flush()
    return endpoint.secret


def endpoint_secret(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> str:
    """An endpoint's signing secret, for its owner's verifier."""
    return get_endpoint(session, tenant_id, endpoint_id).secret


def rotate_callback_secret(session: Session, tenant_id: uuid.UUID) -> str:
    """A new callback secret; deliveries from now on are signed with it."""
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None
    tenant.callback_secret = new_secret()
    session.flush()
    known_keys.changed_on_commit(session)  # API processes keep tenants' rows
    return tenant.callback_secret


def _delivery_views(session: Session, deliveries: list[WebhookDelivery]) -> list[DeliveryOut]:
    if not deliveries:
        return []
    ids = [d.id for d in deliveries]
    attempts: dict[uuid.UUID, list[AttemptOut]] = defaultdict(list)
    for attempt in session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(ids))
        .order_by(WebhookAttempt.started_at)
    ):
        attempts[attempt.delivery_id].append(AttemptOut.model_validate(attempt))
    events = {
        e.id: e
        for e in session.scalars(
            select(WebhookEvent).where(WebhookEvent.id.in_({d.event_id for d in deliveries}))
        )
    }
    return [
        DeliveryOut(
            id=d.id,
            event_id=d.event_id,
            event_type=events[d.event_id].type,
            msg_id=events[d.event_id].msg_id,
            endpoint_id=d.endpoint_id,
            target=d.target,
            url=d.url,
            status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at if d.status == DeliveryStatus.PENDING else None,
            last_error=d.last_error,
            delivered_at=d.delivered_at,
            created_at=d.created_at,
            attempt_log=attempts[d.id],
        )
        for d in deliveries
    ]


def list_events(
    session: Session,
    tenant_id: uuid.UUID,
    event_type: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[EventOut], str | None]:
    """A page of the tenant's events, newest first, each with its deliveries."""
    query = newest_first(
        select(WebhookEvent).where(WebhookEvent.tenant_id == tenant_id), WebhookEvent, cursor, limit
    )
    if event_type:
        query = query.where(WebhookEvent.type == event_type)
    events, next_cursor = page(list(session.scalars(query)), limit)
    return [_event_view(session, e) for e in events], next_cursor


def _event_view(session: Session, event: WebhookEvent) -> EventOut:
    deliveries = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id == event.id)
            .order_by(WebhookDelivery.created_at)
        )
    )
    return EventOut(
        id=event.id,
        msg_id=event.msg_id,
        type=event.type,
        payload=event.payload,
        created_at=event.created_at,
        deliveries=_delivery_views(session, deliveries),
    )


def get_event(session: Session, tenant_id: uuid.UUID, event_id: uuid.UUID) -> EventOut:
    """One event with its deliveries and every attempt."""
    event = session.scalar(
        select(WebhookEvent).where(WebhookEvent.id == event_id, WebhookEvent.tenant_id == tenant_id)
    )
    if event is None:
        raise NotFound("event")
    return _event_view(session, event)


def job_deliveries(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> list[DeliveryOut]:
    """Every delivery of every event about one job (its dashboard page lists them)."""
    events = session.scalars(
        select(WebhookEvent).where(
            WebhookEvent.tenant_id == tenant_id,
            WebhookEvent.payload["data"]["id"].as_string() == str(job_id),
        )
    )
    return [delivery for event in events for delivery in _event_view(session, event).deliveries]


def list_deliveries(
    session: Session,
    tenant_id: uuid.UUID,
    filters: dict[str, Any],
    cursor: str | None,
    limit: int,
) -> tuple[list[DeliveryOut], str | None]:
    """A page of deliveries, newest first, filtered by endpoint, event or status."""
    query = newest_first(
        select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id),
        WebhookDelivery,
        cursor,
        limit,
    )
    for name, value in filters.items():
        if value is not None:
            query = query.where(getattr(WebhookDelivery, name) == value)
    deliveries, next_cursor = page(list(session.scalars(query)), limit)
    return _delivery_views(session, deliveries), next_cursor


def get_delivery(session: Session, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryOut:
    """One delivery with every attempt."""
    delivery = session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == tenant_id
        )
    )
    if delivery is None:
        raise NotFound("delivery")
    return _delivery_views(session, [delivery])[0]


def redeliver(session: Session, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryOut:
    """Send a delivery again now, with a fresh round of retries and the same webhook-id."""
    delivery = session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == tenant_id
        )
    )
    if delivery is None:
        raise NotFound("delivery")
    url = delivery.url
    if delivery.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            raise EndpointDisabled("the endpoint is disabled; enable it (PATCH enabled=true) first")
        url = endpoint.url  # where the worker will send it
    done = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status != DeliveryStatus.SENDING)
        .values(
            status=DeliveryStatus.PENDING,
            url=url,
            attempts=0,
            next_attempt_at=utcnow(),
            delivered_at=None,
            updated_at=utcnow(),
        )
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        raise DeliveryInFlight("the delivery is being sent right now")
    publish_delivery(session, delivery_id)
    session.refresh(delivery)
    return _delivery_views(session, [delivery])[0]
