"""Delivering one event to one target: claim, sign, POST, record, schedule the next try.

A delivery is claimed with one conditional UPDATE (like a job), so a task delivered twice
sends once; the webhook-id stays the same on every retry so receivers can deduplicate
the rare resend after a worker died mid-request. The claim is a lease the worker's keeper
renews (relightq.leases), so a delivery held by a dead worker is resent within a lease.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import httpx
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from relightq.db import session_scope, utcnow
from relightq.leases import LeasedTable, LeaseKeeper
from relightq.logs import bind, bound
from relightq.metrics import WEBHOOK_DELIVERIES
from relightq.netguard import BlockedAddress, GuardedTransport
from relightq.settings import Settings
from relightq.webhooks.events import publish_delivery
from relightq.webhooks.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from relightq.webhooks.secrets import ensure_callback_secret, signature_headers

log = logging.getLogger(__name__)

# Retries due sooner than this ride a broker countdown; later ones are sent by the sweep
# (a countdown of hours would outlive Redis' visibility timeout and be redelivered).
COUNTDOWN_LIMIT_SECONDS = 60
USER_AGENT = "relightq-webhooks/1"


@lru_cache
def http_client() -> httpx.Client:
    """One pooled client; redirects are not followed (a 3xx is a failed try)."""
    # Every connection goes to an address checked at connect time (no DNS rebinding).
    return httpx.Client(
        transport=GuardedTransport(),
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
    )


@dataclass(frozen=True)
class Outcome:
    """How one HTTP try ended."""

    http_status: int | None
    error_class: str | None
    error_message: str | None
    latency_ms: int


def retry_delay(attempts: int, settings: Settings) -> float | None:
    """Seconds before the next try after ``attempts`` failed ones; None when out of tries."""
    schedule = settings.webhook_retry_schedule_seconds
    if attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    jitter = settings.webhook_retry_jitter
    return base * random.uniform(1 - jitter, 1 + jitter)


def _publish_deliveries(session: Session, delivery_ids: list[uuid.UUID]) -> None:
    for delivery_id in delivery_ids:
        publish_delivery(session, delivery_id)


# A delivery being sent is held by lease, as a running job is.
DELIVERY_LEASES = LeasedTable(
    "webhook_deliveries", WebhookDelivery, DeliveryStatus.SENDING, _publish_deliveries
)


def _claim(delivery_id: uuid.UUID, keeper: LeaseKeeper) -> WebhookDelivery | None:
    now = utcnow()
    with session_scope() as session:
        claimed = session.scalars(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                or_(
                    (WebhookDelivery.status == DeliveryStatus.PENDING)
                    & (WebhookDelivery.next_attempt_at <= now + timedelta(seconds=1)),
                    (WebhookDelivery.status == DeliveryStatus.SENDING)
                    & (WebhookDelivery.lease_expires_at < now),
                ),
            )
            .values(
                status=DeliveryStatus.SENDING,
                attempts=WebhookDelivery.attempts + 1,
                lease_token=uuid.uuid4(),
                lease_expires_at=keeper.expires_at(now),
                lease_holder=str(keeper.holder),
                updated_at=now,
            )
            .returning(WebhookDelivery)
        ).one_or_none()
        if claimed is not None:
            session.expunge(claimed)
        return claimed


def _post(url: str, body: str, headers: dict[str, str], settings: Settings) -> Outcome:
    started = time.monotonic()

    def elapsed() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        response = http_client().post(
            url,
            content=body.encode(),
            headers={**headers, "content-type": "application/json"},
            timeout=settings.webhook_timeout_seconds,
        )
    except BlockedAddress as exc:
        return Outcome(None, "blocked_address", str(exc), elapsed())
    except httpx.TimeoutException as exc:
        return Outcome(None, "timeout", type(exc).__name__, elapsed())
    except httpx.TransportError as exc:
        return Outcome(None, "connect_error", type(exc).__name__, elapsed())
    if 200 <= response.status_code < 300:
        return Outcome(response.status_code, None, None, elapsed())
    return Outcome(
        response.status_code,
        "http_status",
        f"answered {response.status_code}",
        elapsed(),
    )


def deliver(
    delivery_id: uuid.UUID, settings: Settings, keeper: LeaseKeeper
) -> DeliveryStatus | None:
    """Try one delivery once; returns its new status, or None if it was not ours to send."""
    with bound(delivery_id=delivery_id):
        if keeper.draining.is_set():
            # Stopping: a worker that goes on sends it (this message is acked with us).
            with session_scope() as session:
                publish_delivery(session, delivery_id)
            return None
        claimed = _claim(delivery_id, keeper)
        if claimed is None:
            log.info("delivery %s is not due or already handled; skipping", delivery_id)
            return None
        assert claimed.lease_token is not None
        with keeper.holding(DELIVERY_LEASES, claimed.id, claimed.lease_token):
            return _deliver(claimed, settings)


def _deliver(claimed: WebhookDelivery, settings: Settings) -> DeliveryStatus | None:
    bind(tenant_id=claimed.tenant_id)
    with session_scope() as session:
        event = session.get(WebhookEvent, claimed.event_id)
        endpoint = (
            session.get(WebhookEndpoint, claimed.endpoint_id) if claimed.endpoint_id else None
        )
        assert event is not None
        if claimed.endpoint_id is not None and (endpoint is None or not endpoint.enabled):
            return _close(claimed, DeliveryStatus.FAILED, "the endpoint is disabled or deleted")
        if endpoint is not None:
            secret = endpoint.secret
            # A registered endpoint's retries and redeliveries go where it points now (as
            # Svix does), so a tenant who moved it need not wait for the old URL to fail;
            # the delivery records the URL this try calls. A callback_url keeps its own.
            url = endpoint.url
            if url != claimed.url:
                session.execute(update(WebhookDelivery).where(_held(claimed)).values(url=url))
        else:
            secret = ensure_callback_secret(session, claimed.tenant_id)
            url = claimed.url
        body = json.dumps(event.payload, separators=(",", ":"))
        msg_id = event.msg_id
    headers = signature_headers(secret, msg_id, utcnow(), body)
    started_at = utcnow()
    outcome = _post(url, body, headers, settings)
    return _record(claimed, outcome, started_at, settings)


def _held(claimed: WebhookDelivery) -> ColumnElement[bool]:
    """The delivery, while this claim still holds it (not a later holder after our lease)."""
    return (
        (WebhookDelivery.id == claimed.id)
        & (WebhookDelivery.status == DeliveryStatus.SENDING)
        & (WebhookDelivery.lease_token == claimed.lease_token)
    )


_RELEASED = {"lease_expires_at": None, "lease_token": None, "lease_holder": None}


def _close(claimed: WebhookDelivery, status: DeliveryStatus, error: str | None) -> DeliveryStatus:
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(_held(claimed))
            .values(status=status, last_error=error, updated_at=utcnow(), **_RELEASED)
        )
    return status


def _record(
    claimed: WebhookDelivery, outcome: Outcome, started_at: datetime, settings: Settings
) -> DeliveryStatus:
    now = utcnow()
    values: dict[str, object] = {"updated_at": now, **_RELEASED}
    countdown: float | None = None
    if outcome.error_class is None:
        status = DeliveryStatus.DELIVERED
        values.update(delivered_at=now, last_error=None)
    elif outcome.http_status == 410 or outcome.error_class == "blocked_address":
        status = DeliveryStatus.FAILED
        values["last_error"] = outcome.error_message
    else:
        delay = retry_delay(claimed.attempts, settings)
        values["last_error"] = outcome.error_message
        if delay is None:
            status = DeliveryStatus.FAILED
        else:
            status = DeliveryStatus.PENDING
            values["next_attempt_at"] = now + timedelta(seconds=delay)
            countdown = delay if delay <= COUNTDOWN_LIMIT_SECONDS else None
    values["status"] = status
    WEBHOOK_DELIVERIES.labels("retry" if status == DeliveryStatus.PENDING else status.value).inc()
    with session_scope() as session:
        session.add(
            WebhookAttempt(
                delivery_id=claimed.id,
                started_at=started_at,
                latency_ms=outcome.latency_ms,
                http_status=outcome.http_status,
                error_class=outcome.error_class,
                error_message=outcome.error_message,
            )
        )
        done = session.execute(update(WebhookDelivery).where(_held(claimed)).values(**values))
        if not done.rowcount:  # type: ignore[attr-defined]
            # Our lease ran out and another worker holds the delivery: its try counts.
            log.warning(
                "delivery %s lost its lease before recording; outcome discarded", claimed.id
            )
            return status
        if outcome.http_status == 410 and claimed.endpoint_id is not None:
            # 410 Gone: the receiver says it will never want these again.
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == claimed.endpoint_id)
                .values(enabled=False, disabled_reason=f"answered 410 Gone at {now.isoformat()}")
            )
            log.warning("webhook endpoint %s answered 410 and was disabled", claimed.endpoint_id)
        if countdown is not None:
            publish_delivery(session, claimed.id, countdown)
    log.info(
        "delivery %s try %d: %s -> %s",
        claimed.id,
        claimed.attempts,
        outcome.http_status or outcome.error_class,
        status.value,
    )
    return status


def due_deliveries(session: Session, settings: Settings, limit: int = 1000) -> list[uuid.UUID]:
    """Deliveries whose wake-up is due but was never sent or was lost (for the sweeper);
    those held by a dead worker come back through their lease (relightq.leases)."""
    now = utcnow()
    grace = timedelta(seconds=settings.sweep_grace_seconds)
    return list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                # A retry due soon was sent with a countdown; give it time to arrive.
                WebhookDelivery.updated_at < now - grace,
            )
            .limit(limit)
        )
    )
