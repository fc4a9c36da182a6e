"""Celery tasks: each reloads by id and calls one service function."""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache

from celery import Celery
from celery.signals import worker_process_init

from relightq.broker import TaskName, get_celery
from relightq.jobs.runner import RunnerDeps, run_job
from relightq.segmind import get_segmind_client
from relightq.settings import get_settings
from relightq.storage import get_storage

log = logging.getLogger(__name__)

app: Celery = get_celery()


@lru_cache
def _deps() -> RunnerDeps:
    return RunnerDeps(get_settings(), get_segmind_client(), get_storage())


@worker_process_init.connect
def _fresh_clients_after_fork(**_: object) -> None:
    # Pooled sockets must not be shared between forked processes.
    _deps.cache_clear()
    get_segmind_client.cache_clear()
    get_storage.cache_clear()


@app.task(name=TaskName.RELIGHT_RUN.value)
def relight_run(job_id: str) -> None:
    """Run one relight job; duplicates and stale messages are harmless no-ops."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        log.error("relight.run got a malformed job id %r; dropping it", job_id)
        return
    run_job(parsed, _deps())
