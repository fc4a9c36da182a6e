"""Every model, imported in one place so Alembic and create_all see the whole schema."""

from relightq.batches.models import Batch, BatchReject
from relightq.db import Base
from relightq.idempotency.models import IdempotencyKey
from relightq.jobs.models import Job, JobAttempt, JobOutput, UpstreamState
from relightq.schedules.models import Schedule, ScheduleObject, ScheduleRun
from relightq.tenants.models import ApiKey, DashboardSession, Tenant
from relightq.triggers.models import Trigger, TriggerEvent
from relightq.webhooks.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "ApiKey",
    "Base",
    "Batch",
    "BatchReject",
    "DashboardSession",
    "IdempotencyKey",
    "Job",
    "JobAttempt",
    "JobOutput",
    "Schedule",
    "ScheduleObject",
    "ScheduleRun",
    "Tenant",
    "Trigger",
    "TriggerEvent",
    "UpstreamState",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
