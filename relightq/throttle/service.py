"""Pausing and resuming the fleet, probing Segmind's free credits endpoint, waking jobs.

What happens on a 406 "not enough credits" or a 401, end to end:
the runner calls :func:`pause_fleet`; no worker is admitted to a new call from then on;
the job (and every job a worker picks up afterwards) is parked as ``waiting``; a probe is
scheduled with backoff; when :func:`probe` sees credits above the reserve (or the key
working again) it resumes the fleet and :func:`wake_waiting_jobs` publishes them again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from relightq.broker import Queue, TaskName, get_celery
from relightq.credits.balance import report_balance
from relightq.jobs.models import Job, parked_by_pause
from relightq.jobs.service import publish_job
from relightq.segmind.client import SegmindClient
from relightq.segmind.errors import SegmindError, SegmindUnauthorized
from relightq.settings import Settings, get_settings
from relightq.throttle.fleet import Fleet, LocalFleet, RedisFleet
from relightq.webhooks.events import emit_fleet_event
from relightq.webhooks.models import EventType

log = logging.getLogger(__name__)

MANUAL = "manual"
CREDIT_RESERVE = "credit_reserve"


def make_fleet(settings: Settings) -> Fleet:
    """The deployment's shared fleet state: Redis, or in-process for the demo."""
    url = settings.fleet_redis_url
    if url is None:
        return LocalFleet(settings.max_concurrent_calls, settings.max_calls_per_minute)
    return RedisFleet(
        redis.Redis.from_url(url, socket_timeout=10, health_check_interval=30),
        max_concurrent=settings.max_concurrent_calls,
        max_per_minute=settings.max_calls_per_minute,
    )


@lru_cache
def get_fleet() -> Fleet:
    """The process-wide fleet handle."""
    return make_fleet(get_settings())


def pause_fleet(fleet: Fleet, code: str, reason: str, *, manual: bool = False) -> bool:
    """Record a pause and, unless an operator paused, schedule the probe that lifts it."""
    paused = fleet.pause(code, reason, manual=manual)
    if paused:
        log.warning("fleet paused (%s): %s", code, reason)
        _announce(EventType.THROTTLE_PAUSED, {"code": code, "reason": reason, "manual": manual})
    if not manual:
        schedule_probe(fleet, get_settings())
    return paused


def _announce(event_type: EventType, data: dict[str, Any]) -> None:
    # The pause itself must hold even if PostgreSQL is down; the event is best effort.
    try:
        emit_fleet_event(event_type, {"state": event_type.value.split(".")[1], **data})
    except SQLAlchemyError:
        log.exception("could not record the %s webhook event", event_type.value)


def resume_fleet(fleet: Fleet, *, manual: bool = False) -> bool:
    """Lift the pause and have a worker wake every parked job."""
    resumed = fleet.resume(manual=manual)
    if resumed:
        log.warning("fleet resumed%s", " by an operator" if manual else "")
        _announce(EventType.THROTTLE_RESUMED, {"manual": manual})
        get_celery().send_task(TaskName.THROTTLE_WAKE.value, queue=Queue.CONTROL.value)
    return resumed


def probe_delay(failures: int, settings: Settings) -> float:
    """Probe interval doubling with each probe that still found no credits."""
    return float(
        min(settings.probe_max_interval_seconds, settings.probe_interval_seconds * 2**failures)
    )


def schedule_probe(fleet: Fleet, settings: Settings) -> None:
    """Make sure one probe is on its way; any number of callers yields one message."""
    delay = probe_delay(fleet.probe_failures(), settings)
    # The claim outlives the countdown, so a lost message is re-sent by the next sweep.
    if fleet.claim_probe(delay + settings.sweep_interval_seconds):
        get_celery().send_task(
            TaskName.THROTTLE_PROBE.value, queue=Queue.CONTROL.value, countdown=delay
        )


@dataclass(frozen=True)
class ProbeResult:
    """What a probe found."""

    resumed: bool
    credits: Decimal | float | None
    error: str | None = None


def probe(fleet: Fleet, client: SegmindClient, settings: Settings) -> ProbeResult:
    """Ask the free credits endpoint whether calls can start again; resume if so."""
    fleet.release_probe()
    state = fleet.state()
    if not state.paused or state.manual:
        return ProbeResult(False, state.credits)
    try:
        credits = client.get_credits()
    except SegmindUnauthorized as exc:
        return _probe_again(fleet, settings, None, f"key still refused: {exc.message}")
    except SegmindError as exc:
        return _probe_again(fleet, settings, None, f"probe failed: {exc.message}")
    fleet.record_credits(credits)
    report_balance(credits, settings)
    # Enough for at least one call above the reserve; a 401 pause lifts as soon as the
    # key works, and a still-short balance is caught by the next 406 or reserve check.
    if credits >= settings.credit_reserve + settings.segmind_credits_per_image:
        resume_fleet(fleet)
        return ProbeResult(True, credits)
    return _probe_again(fleet, settings, credits, "credits still below the reserve")


def _probe_again(
    fleet: Fleet, settings: Settings, credits: Decimal | float | None, why: str
) -> ProbeResult:
    fleet.probe_failures(increment=True)
    log.info("fleet stays paused: %s", why)
    schedule_probe(fleet, settings)
    return ProbeResult(False, credits, why)


def wake_waiting_jobs(session: Session) -> int:
    """Publish every job parked by a pause (waiting, with no time of its own to run)."""
    rows = session.execute(
        select(Job.id, Job.priority)
        .where(parked_by_pause())
        .order_by(Job.priority.desc(), Job.created_at)
    ).all()
    for job_id, priority in rows:
        publish_job(session, job_id, priority)
    return len(rows)
