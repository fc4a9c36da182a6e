"""Rows written straight into PostgreSQL for the dashboard's tests: jobs, batches and
the reported balance with exactly the amounts a test needs (0.333 is not a price the
simulator charges, and a reused picture needs an earlier one)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from relightq.batches.models import Batch
from relightq.db import session_scope, utcnow
from relightq.jobs.models import Job, JobStatus, UpstreamState
from tests.conftest import TenantKey


def job_row(tenant: TenantKey, **values: Any) -> str:
    """A finished job of ``tenant``, as a worker leaves one; ``values`` set its columns."""
    now = utcnow()
    with session_scope() as session:
        finished = {"status": JobStatus.SUCCEEDED, "started_at": now, "finished_at": now}
        job = Job(
            tenant_id=tenant.id,
            params={"prompt": "x"},
            subject_image="https://example.com/product.png",
            # Never published to the broker: no worker runs it, whatever its status.
            dispatched_at=None,
            **(finished | values),
        )
        session.add(job)
        session.flush()
        return str(job.id)


def batch_row(tenant: TenantKey, items: int, **values: Any) -> str:
    """A completed batch of ``tenant`` with ``items`` succeeded jobs; ``values`` set its
    columns (the credits a worker would have added up, or ``completed_at=None``)."""
    with session_scope() as session:
        completed = {"total": items, "completed_at": utcnow()}
        batch = Batch(tenant_id=tenant.id, name="credits", source="json", **(completed | values))
        session.add(batch)
        session.flush()
        batch_id = batch.id
    for row in range(1, items + 1):
        job_row(tenant, batch_id=batch_id, batch_row=row)
    return str(batch_id)


def set_upstream(**values: Any) -> None:
    """Set columns of the one ``upstream_state`` row (the balance Segmind last reported)."""
    with session_scope() as session:
        session.execute(update(UpstreamState).where(UpstreamState.id == 1).values(**values))
