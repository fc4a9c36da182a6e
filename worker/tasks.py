"""Celery tasks: each reloads by id and calls one service function."""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError

from relightq.broker import TaskName, broker_backlog, get_celery
from relightq.db import get_sessionmaker, session_scope, utcnow
from relightq.jobs.runner import RunnerDeps, run_job
from relightq.jobs.sweeper import sweep
from relightq.schedules.service import tick
from relightq.segmind import get_segmind_client
from relightq.settings import get_settings
from relightq.storage import get_storage
from relightq.throttle.service import get_fleet, probe, schedule_probe, wake_waiting_jobs
from relightq.webhooks.delivery import deliver

log = logging.getLogger(__name__)

app: Celery = get_celery()

# PostgreSQL restarting is an outage to wait out: the message is re-sent, never dropped.
DB_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 2,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": None,
}


@lru_cache
def _deps() -> RunnerDeps:
    return RunnerDeps(get_settings(), get_segmind_client(), get_storage(), get_fleet())


@worker_process_init.connect
def _fresh_clients_after_fork(**_: object) -> None:
    # Pooled sockets must not be shared between forked processes.
    for cached in (_deps, get_segmind_client, get_storage, get_fleet):
        cached.cache_clear()


@app.task(name=TaskName.RELIGHT_RUN.value, **DB_RETRY)
def relight_run(job_id: str) -> None:
    """Run one relight job; duplicates and stale messages are harmless no-ops."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        log.error("relight.run got a malformed job id %r; dropping it", job_id)
        return
    run_job(parsed, _deps())


@app.task(name=TaskName.RELIGHT_SWEEP.value, **DB_RETRY)
def relight_sweep() -> None:
    """Re-publish what the broker lost; keep a probe scheduled while the fleet is paused."""
    settings = get_settings()
    fleet = get_fleet()
    paused = fleet.state()
    with session_scope() as session:
        sweep(
            session, settings, broker_backlog=broker_backlog(settings), fleet_paused=paused.paused
        )
    if paused.paused and not paused.manual:
        schedule_probe(fleet, settings)


@app.task(name=TaskName.THROTTLE_PROBE.value)
def throttle_probe() -> None:
    """Ask Segmind's free credits endpoint whether the paused fleet can resume."""
    probe(get_fleet(), get_segmind_client(), get_settings())


@app.task(name=TaskName.THROTTLE_WAKE.value, **DB_RETRY)
def throttle_wake() -> None:
    """Publish every job parked while the fleet was paused."""
    with session_scope() as session:
        count = wake_waiting_jobs(session)
    log.info("woke %d waiting jobs", count)


@app.task(name=TaskName.WEBHOOK_DELIVER.value, **DB_RETRY)
def webhook_deliver(delivery_id: str) -> None:
    """Try one webhook delivery; duplicates of the message send nothing more."""
    try:
        parsed = uuid.UUID(delivery_id)
    except ValueError:
        log.error("webhooks.deliver got a malformed delivery id %r; dropping it", delivery_id)
        return
    deliver(parsed, get_settings())


@app.task(name=TaskName.SCHEDULES_TICK.value, **DB_RETRY)
def schedules_tick() -> None:
    """Fire the schedules that are due (PostgreSQL makes each run fire once)."""
    fired = tick(get_sessionmaker(), utcnow(), get_storage(), get_settings())
    if fired:
        log.info("fired %d scheduled runs", len(fired))
