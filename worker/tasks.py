"""Celery tasks: each reloads by id and calls one service function."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from relightq.broker import TaskName, broker_backlog, get_celery
from relightq.db import get_sessionmaker, session_scope, utcnow
from relightq.jobs.runner import RunnerDeps, hand_back_requests, run_job
from relightq.jobs.sweeper import LEASED_TABLES, sweep
from relightq.leases import LeaseKeeper, drain_then_exit
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
def _keeper() -> LeaseKeeper:
    """This process's lease keeper: renews what it holds, re-publishes dead workers' work."""
    fleet = get_fleet()
    return LeaseKeeper(
        get_settings().job_lease_seconds,
        list(LEASED_TABLES),
        # One worker per interval looks for expired leases, not every worker of the fleet.
        may_republish=lambda interval: fleet.take_turn("republish_expired", interval * 0.9),
    )


@lru_cache
def _build_deps() -> RunnerDeps:
    return RunnerDeps(get_settings(), get_segmind_client(), get_storage(), get_fleet(), _keeper())


_deps_lock = threading.Lock()


def _deps() -> RunnerDeps:
    """This process's one set of runner dependencies. Built under a lock: lru_cache lets
    the first tasks of a fresh worker, arriving together, each build their own, and a
    second poller would hold v2 requests that the shutdown hand-back never sees."""
    with _deps_lock:
        return _build_deps()


@worker_process_init.connect
def _fresh_clients_after_fork(**_: object) -> None:
    # Pooled sockets must not be shared between forked processes.
    for cached in (_build_deps, get_segmind_client, get_storage, get_fleet, _keeper):
        cached.cache_clear()


@worker_ready.connect
def _take_over_from_dead_predecessors(**_: object) -> None:
    """A worker restarted on this host takes back at once what its dead predecessor held,
    instead of waiting for the leases to run out."""
    keeper = _keeper()
    keeper.start()
    try:
        keeper.reclaim_from_dead_predecessors()
    except SQLAlchemyError as exc:
        # PostgreSQL unreachable at start: the leases still run out and are re-published.
        log.warning("could not look for a dead predecessor's jobs: %s", type(exc).__name__)


@lru_cache
def _stop_handler() -> Callable[[], None]:
    return drain_then_exit(_keeper(), get_settings().worker_shutdown_grace_seconds)


@worker_shutting_down.connect
def _drain(**_: object) -> None:
    """SIGTERM (Kubernetes, docker compose stop): finish the calls on the wire, hand the
    rest back; a second SIGTERM or the grace period ends the process."""
    _stop_handler()()
    # v2 requests run on at Segmind without this process: another worker polls them.
    try:
        handed = hand_back_requests(_deps())
    except SQLAlchemyError as exc:
        # Their leases run out instead, and are re-published then.
        log.warning("could not hand back the requests being polled: %s", type(exc).__name__)
    else:
        if handed:
            log.warning("handed back %d Segmind requests being polled", handed)


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
    deliver(parsed, get_settings(), _keeper())


@app.task(name=TaskName.SCHEDULES_TICK.value, **DB_RETRY)
def schedules_tick() -> None:
    """Fire the schedules that are due (PostgreSQL makes each run fire once)."""
    fired = tick(get_sessionmaker(), utcnow(), get_storage(), get_settings())
    if fired:
        log.info("fired %d scheduled runs", len(fired))
