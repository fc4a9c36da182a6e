"""The sweeper re-sends from PostgreSQL what the broker lost, and nothing more."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from relightq.db import session_scope, utcnow
from relightq.jobs.models import Job, JobStatus
from relightq.jobs.sweeper import sweep
from relightq.settings import get_settings
from tests.conftest import TenantKey
from tests.jobs.test_end_to_end import shop_image, wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")
SETTINGS = get_settings().model_copy(update={"sweep_grace_seconds": 0.0})


def unpublished_job(tenant: TenantKey, url: str, **values: object) -> str:
    """A job row whose wake-up never reached the broker (as after FLUSHALL)."""
    past = utcnow() - timedelta(seconds=5)
    with session_scope() as session:
        job = Job(
            tenant_id=tenant.id,
            params={"prompt": "x"},
            subject_image=url,
            created_at=past,
            updated_at=past,
            **values,
        )
        session.add(job)
        session.flush()
        from relightq.jobs.schemas import JobOptions

        job.params = JobOptions(prompt="x").relight_params().model_dump()
        return str(job.id)


def test_a_job_that_lost_its_wake_up_is_republished_and_runs(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("catalog/lost.png")
    job_id = unpublished_job(tenant, url)
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(5))
        )
        report = sweep(session, SETTINGS, broker_backlog=0, fleet_paused=False)
    assert report.lost_wakeups >= 1
    assert wait_for(api, job_id, "succeeded", "failed")["status"] == "succeeded"


def test_with_a_backlog_queued_jobs_are_left_to_their_messages(tenant: TenantKey) -> None:
    job_id = unpublished_job(tenant, "https://example.com/x.png")
    with session_scope() as session:
        report = sweep(session, SETTINGS, broker_backlog=5, fleet_paused=False)
        assert report.lost_wakeups == 0
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))


def test_jobs_parked_by_a_pause_wait_for_the_resume(tenant: TenantKey) -> None:
    job_id = unpublished_job(tenant, "https://example.com/x.png", status=JobStatus.WAITING)
    with session_scope() as session:
        assert sweep(session, SETTINGS, broker_backlog=0, fleet_paused=True).lost_wakeups == 0
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))


def test_a_job_whose_worker_died_is_republished_once_its_lease_expires(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("catalog/killed.png")
    expired = utcnow() - timedelta(seconds=1)
    job_id = unpublished_job(
        tenant, url, status=JobStatus.RUNNING, attempts=1, lease_expires_at=expired
    )
    with session_scope() as session:
        assert sweep(session, SETTINGS, broker_backlog=3, fleet_paused=False).expired_leases >= 1
    job = wait_for(api, job_id, "succeeded", "failed")
    assert job["status"] == "succeeded" and job["attempts"] == 2
