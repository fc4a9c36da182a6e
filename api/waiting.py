"""Waiting for a job's outcome inside a request (Prefer: wait, the Segmind-compatible call).

PostgreSQL is polled: it is the truth every worker writes, so this works the same with
any number of API and worker processes, at the cost of a cheap indexed read per tick.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool

from relightq.db import session_scope
from relightq.jobs.models import FINAL_STATUSES, Job
from relightq.jobs.service import get_job

POLL_SECONDS = 0.2
MAX_PREFER_WAIT_SECONDS = 60  # as Replicate: longer waits belong to webhooks or polling
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)


def prefer_wait(header: str | None) -> int | None:
    """Seconds asked for by an RFC 7240 ``Prefer: wait=N`` header, capped; None if absent."""
    match = _PREFER_WAIT.search(header or "")
    if not match:
        return None
    return min(int(match.group(1)), MAX_PREFER_WAIT_SECONDS)


def _load(tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    with session_scope() as session:
        job = get_job(session, tenant_id, job_id)  # outputs and attempts loaded with it
        session.expunge(job)
        return job


async def wait_for_job(
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    seconds: float,
    stop: Callable[[Job], bool] | None = None,
) -> Job:
    """The job once final (or once ``stop`` says so), or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        job = await run_in_threadpool(_load, tenant_id, job_id)
        if job.status in FINAL_STATUSES or (stop and stop(job)):
            return job
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return job
        await asyncio.sleep(min(POLL_SECONDS, remaining))
