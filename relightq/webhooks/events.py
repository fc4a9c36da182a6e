"""Emitting an event: one row per event, one delivery per matching target, sent after commit.

Events are emitted in the same transaction as the state change they announce (a job's
final status, a batch's completion), so a redelivered task that changes nothing emits
nothing, and a rolled-back change emits nothing either.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Label, exists, select
from sqlalchemy.orm import Session, selectinload

from relightq.broker import Queue, TaskName, enqueue_after_commit
from relightq.db import utcnow
from relightq.jobs.models import Job
from relightq.webhooks.models import (
    EventType,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

CALLBACK_TARGET = "callback"


def publish_delivery(session: Session, delivery_id: uuid.UUID, countdown: float = 0) -> None:
    """Wake a worker for ``delivery_id`` once ``session`` commits."""
    options: dict[str, float] = {"countdown": countdown} if countdown else {}
    enqueue_after_commit(
        session, TaskName.WEBHOOK_DELIVER, str(delivery_id), queue=Queue.WEBHOOKS, **options
    )


def _subscribed(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return not endpoint.event_types or event_type in endpoint.event_types


def listened_to(tenant_id: ColumnElement[uuid.UUID]) -> Label[bool]:
    """Whether the tenant has an enabled endpoint, as a column (``listened``) of a query
    or RETURNING: a job's final event is built only when someone may receive it."""
    return (
        exists()
        .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True))
        .label("listened")
    )


def emit(
    session: Session,
    tenant_id: uuid.UUID,
    event_type: EventType,
    data: dict[str, Any],
    callback_url: str | None = None,
    now: datetime | None = None,
) -> WebhookEvent | None:
    """Record the event for the tenant's matching endpoints (and callback); None if nobody
    listens."""
    now = now or utcnow()
    endpoints = [
        endpoint
        for endpoint in session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True)
            )
        )
        if _subscribed(endpoint, event_type)
    ]
    if not endpoints and not callback_url:
        return None
    event = WebhookEvent(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        type=event_type.value,
        payload={"type": event_type.value, "timestamp": now.isoformat(), "data": data},
        created_at=now,
    )
    session.add(event)
    session.flush()  # no relationship() orders the inserts: the event row goes first
    targets: list[tuple[str, uuid.UUID | None, str]] = [
        (f"endpoint:{e.id}", e.id, e.url) for e in endpoints
    ]
    if callback_url:
        targets.append((CALLBACK_TARGET, None, callback_url))
    deliveries = [
        WebhookDelivery(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            event_id=event.id,
            endpoint_id=endpoint_id,
            target=target,
            url=url,
            next_attempt_at=now,
        )
        for target, endpoint_id, url in targets
    ]
    session.add_all(deliveries)
    session.flush()
    for delivery in deliveries:
        publish_delivery(session, delivery.id)
    return event


def job_event_data(session: Session, job_id: uuid.UUID) -> tuple[Job, dict[str, Any]]:
    """A job's state for job.succeeded / job.failed (output URIs; fetch URLs via the API)."""
    job = session.scalars(
        select(Job)
        .where(Job.id == job_id)
        .options(selectinload(Job.outputs))
        .execution_options(populate_existing=True)
    ).one()
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return job, {
        "id": str(job.id),
        "status": str(job.status),
        "external_id": job.external_id,
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "metadata": job.metadata_,
        "attempts": job.attempts,
        # JSON numbers with exact text (relightq.credits.amounts).
        "credits_used": float(job.credits_used),
        "reused_from": str(job.reused_from) if job.reused_from else None,
        "credits_saved": float(job.credits_saved),
        "error": error,
        "outputs": [
            {
                "index": o.index,
                "s3_uri": o.uri,
                "content_type": o.content_type,
                "bytes": o.bytes,
                "sha256": o.sha256,
            }
            for o in job.outputs
        ],
    }


def emit_job_final(session: Session, job_id: uuid.UUID) -> None:
    """job.succeeded or job.failed for a job that just became final in this transaction."""
    job, data = job_event_data(session, job_id)
    if data["status"] == "succeeded":
        event_type = EventType.JOB_SUCCEEDED
    elif data["status"] == "failed":
        event_type = EventType.JOB_FAILED
    else:
        return
    emit(session, job.tenant_id, event_type, data, job.callback_url)


def emit_fleet_event(event_type: EventType, data: dict[str, Any]) -> int:
    """throttle.paused / throttle.resumed to every tenant with an endpoint that wants it.

    Called once per transition (the fleet's pause and resume report whether they changed
    anything); returns how many tenants were told.
    """
    from relightq.db import session_scope

    with session_scope() as session:
        return emit_to_subscribers(session, event_type, data)


def emit_to_subscribers(session: Session, event_type: EventType, data: dict[str, Any]) -> int:
    """An event about the whole deployment (the fleet, the balance) to every tenant with
    an endpoint that wants it, in ``session``'s transaction; returns how many tenants."""
    tenant_ids = {
        endpoint.tenant_id
        for endpoint in session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True))
        )
        if _subscribed(endpoint, event_type)
    }
    now = utcnow()
    for tenant_id in tenant_ids:
        emit(session, tenant_id, event_type, data, now=now)
    return len(tenant_ids)
