"""The sweeper: PostgreSQL is the truth, so whatever the broker lost is re-sent from it.

Run by beat every RELIGHTQ_SWEEP_INTERVAL_SECONDS. Re-publishing is always safe: the
runner's claim turns a duplicate message into a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from relightq.batches.dispatch import settle_open_batches
from relightq.credits.caps import wake_capped
from relightq.db import utcnow
from relightq.idempotency.service import forget_expired_keys
from relightq.jobs.models import Job, JobStatus, parked_by_cap, parked_by_pause
from relightq.jobs.service import JOB_LEASES, publish_job
from relightq.leases import LeasedTable, republish_expired
from relightq.settings import Settings
from relightq.webhooks.delivery import DELIVERY_LEASES, due_deliveries
from relightq.webhooks.events import publish_delivery

log = logging.getLogger(__name__)

MAX_PER_SWEEP = 10_000
# Everything workers hold by lease: renewed by their keepers, re-published here (and by
# every live worker's keeper) once a lease runs out.
LEASED_TABLES: tuple[LeasedTable, ...] = (JOB_LEASES, DELIVERY_LEASES)


@dataclass(frozen=True)
class SweepReport:
    """What one sweep re-published."""

    expired_leases: int
    lost_wakeups: int
    woken_by_cap: int = 0  # parked by their tenant's monthly cap, now with room


def sweep(
    session: Session, settings: Settings, *, broker_backlog: int, fleet_paused: bool
) -> SweepReport:
    """Re-publish work whose worker died (lease expired) and jobs whose message was lost.

    A job counts as having lost its wake-up only when the broker holds no messages at
    all: with a backlog its message may simply not be due yet, and re-sending 100k
    messages behind a long queue would only double it.
    """
    now = utcnow()
    expired = republish_expired(session, list(LEASED_TABLES))

    lost: list[Any] = []
    if broker_backlog == 0:
        stale = now - timedelta(seconds=settings.sweep_grace_seconds)
        due = or_(Job.run_after.is_(None), Job.run_after < stale)
        query = select(Job.id, Job.priority).where(
            Job.status.in_([JobStatus.QUEUED, JobStatus.WAITING]),
            Job.dispatched_at.is_not(None),  # held batch items have no message to lose
            Job.updated_at < stale,
            due,
            # Parked by the cap: woken below only when there is room, not every sweep.
            ~parked_by_cap(),
        )
        if fleet_paused:  # parked jobs wait for the resume, which wakes them itself
            query = query.where(~parked_by_pause())
        lost = list(session.execute(query.limit(MAX_PER_SWEEP)).all())
        for job_id, priority in lost:
            publish_job(session, job_id, priority)
    # The month turned (UTC), or reservations were released: capped jobs go on by themselves.
    woken = wake_capped(session)
    # A release lost with its transaction, or a completion nobody noticed, is redone here.
    settle_open_batches(session)
    # Webhook retries due in hours ride no broker countdown: they are sent from here.
    for delivery_id in due_deliveries(session, settings):
        publish_delivery(session, delivery_id)
    forget_expired_keys(session)
    if lost:
        log.warning("sweep re-published %d lost wake-ups", len(lost))
    if woken:
        log.info("sweep woke %d jobs parked by their tenant's monthly cap", woken)
    return SweepReport(expired, len(lost), woken)
