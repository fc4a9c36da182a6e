"""Leases a live worker renews: its work is never taken from it, a dead worker's is taken
over in seconds, and on this host a dead predecessor's at once."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from relightq.db import session_scope, utcnow
from relightq.jobs.models import Job, JobStatus
from relightq.jobs.runner import claim
from relightq.jobs.service import JOB_LEASES
from relightq.jobs.sweeper import LEASED_TABLES
from relightq.leases import Holder, Lease, LeaseKeeper, _start_ticks
from relightq.webhooks.models import DeliveryStatus, WebhookDelivery
from tests.conftest import TenantKey
from tests.jobs.test_end_to_end import shop_image, wait_for
from tests.jobs.test_sweeper import unpublished_job
from tests.support.receiver import Receiver
from tests.webhooks.test_outbound import deliveries, register, submit, wait_delivery

LEASE = 30.0


def keeper() -> LeaseKeeper:
    return LeaseKeeper(LEASE, list(LEASED_TABLES))


def dead_holder() -> Holder:
    """A process of this host that has exited."""
    child = subprocess.Popen(["sleep", "0"])
    started = _start_ticks(child.pid)
    child.wait()
    return replace(Holder.this_process(), pid=child.pid, started=started or "1")


def recovered(table: str, how: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"table": table, "how": how}
    return REGISTRY.get_sample_value("relightq_leases_recovered_total", labels) or 0.0


def lease_of(job_id: uuid.UUID | str) -> tuple[datetime | None, str | None, datetime]:
    with session_scope() as session:
        job = session.get_one(Job, uuid.UUID(str(job_id)))
        return job.lease_expires_at, job.lease_holder, job.updated_at


# -- who holds a lease -------------------------------------------------------------------


def test_a_holder_names_host_boot_namespace_pid_and_start_time_and_reads_back() -> None:
    me = Holder.this_process()
    assert me.pid == os.getpid() and me.boot_id and me.pid_namespace and me.started
    assert Holder.parse(str(me)) == me
    assert Holder.parse("not a holder") is None


def test_a_holder_whose_process_has_exited_on_this_host_is_certainly_dead() -> None:
    assert dead_holder().certainly_dead(Holder.this_process())


def test_a_live_process_is_not_dead_nor_is_this_one() -> None:
    me = Holder.this_process()
    parent = replace(me, pid=os.getppid(), started=_start_ticks(os.getppid()))
    assert not parent.certainly_dead(me)
    assert not me.certainly_dead(me)


def test_a_pid_now_used_by_a_younger_process_is_dead() -> None:
    me = Holder.this_process()
    reused = replace(me, pid=os.getppid(), started="1")  # another process once had that PID
    assert reused.certainly_dead(me)


@pytest.mark.parametrize(
    "elsewhere",
    [{"host": "other-host"}, {"boot_id": "another-boot"}, {"pid_namespace": "pid:[1]"}],
)
def test_a_holder_elsewhere_is_never_taken_for_dead(elsewhere: dict[str, Any]) -> None:
    # Its PID says nothing here: only its lease running out may free its work.
    holder = replace(dead_holder(), **elsewhere)
    assert not holder.certainly_dead(Holder.this_process())


def test_without_a_renewal_a_lease_counts_as_lost_once_it_has_run_out() -> None:
    lease = Lease(JOB_LEASES, uuid.uuid4(), uuid.uuid4(), time.monotonic() + 0.2)
    assert not lease.lost
    time.sleep(0.25)
    assert lease.lost


# -- renewal -----------------------------------------------------------------------------


def test_renewing_pushes_a_held_lease_out_by_a_full_lease_without_touching_updated_at(
    tenant: TenantKey,
) -> None:
    keeper_ = keeper()
    job_id = uuid.UUID(unpublished_job(tenant, "https://example.com/a.png"))
    with session_scope() as session:
        claimed = claim(session, job_id, 3, str(keeper_.holder))
    assert claimed is not None
    before, holder, updated = lease_of(job_id)
    assert before is not None and holder == str(keeper_.holder)
    with keeper_.holding(JOB_LEASES, job_id, claimed.token) as lease:
        assert keeper_.renew() == 1
        after, _, updated_after = lease_of(job_id)
        assert after is not None and after - before > timedelta(seconds=LEASE - 4)
        assert updated_after == updated
        assert not lease.lost
    keeper_.stop()


def test_a_lease_another_worker_took_over_is_lost_at_the_next_renewal(tenant: TenantKey) -> None:
    keeper_ = keeper()
    job_id = uuid.UUID(unpublished_job(tenant, "https://example.com/a.png"))
    with session_scope() as session:
        first = claim(session, job_id, LEASE, str(keeper_.holder))
    assert first is not None
    with keeper_.holding(JOB_LEASES, job_id, first.token) as lease:
        with session_scope() as session:  # the lease ran out and another worker claimed
            session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))
            assert claim(session, job_id, LEASE, "another worker") is not None
        assert keeper_.renew() == 0
        assert lease.lost
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))


# -- taking over a dead worker's work (a real worker runs it) -----------------------------


@pytest.mark.usefixtures("celery_worker")
def test_a_job_whose_lease_ran_out_is_republished_by_a_live_workers_keeper(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("catalog/expired-lease.png")
    expired = utcnow() - timedelta(seconds=1)
    job_id = unpublished_job(
        tenant, url, status=JobStatus.RUNNING, attempts=1, lease_expires_at=expired
    )
    keeper().tick()
    job = wait_for(api, job_id, "succeeded", "failed")
    assert job["status"] == "succeeded" and job["attempts"] == 2


@pytest.mark.usefixtures("celery_worker")
def test_a_dead_predecessors_job_is_taken_back_at_once_not_after_its_lease(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("catalog/dead-holder.png")
    live_for_long = utcnow() + timedelta(seconds=LEASE)
    dead = unpublished_job(
        tenant,
        url,
        status=JobStatus.RUNNING,
        attempts=1,
        lease_expires_at=live_for_long,
        lease_token=uuid.uuid4(),
        lease_holder=str(dead_holder()),
    )
    alive = unpublished_job(
        tenant,
        url,
        status=JobStatus.RUNNING,
        attempts=1,
        lease_expires_at=live_for_long,
        lease_token=uuid.uuid4(),
        lease_holder=str(Holder.this_process()),
    )
    counted = recovered("jobs", "dead_holder")
    assert keeper().reclaim_from_dead_predecessors() == 1
    assert recovered("jobs", "dead_holder") == counted + 1  # operators see it in /metrics
    job = wait_for(api, dead, "succeeded", "failed", timeout=10)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    # A live holder's job is left alone.
    assert api.get(f"/v1/jobs/{alive}").json()["status"] == "running"
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == alive).values(status=JobStatus.CANCELLED))


@pytest.mark.usefixtures("celery_worker")
def test_a_forced_shutdown_hands_back_what_it_holds_at_once(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    keeper_ = keeper()
    _, url = shop_image("catalog/abandoned.png")
    job_id = uuid.UUID(unpublished_job(tenant, url))
    with session_scope() as session:
        claimed = claim(session, job_id, LEASE, str(keeper_.holder))
    assert claimed is not None
    with keeper_.holding(JOB_LEASES, job_id, claimed.token) as lease:
        assert keeper_.abandon() == 1
        assert lease.lost  # nothing this process still does for it may be written
    job = wait_for(api, str(job_id), "succeeded", "failed", timeout=10)
    assert job["status"] == "succeeded" and job["attempts"] == 2


@pytest.mark.usefixtures("celery_worker")
def test_a_delivery_held_by_a_dead_worker_is_resent_with_the_same_webhook_id(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    endpoint = register(api, hooks.url, "job.succeeded")
    submit(api)
    [first] = hooks.wait_for(1)
    [delivery] = deliveries(api, endpoint_id=endpoint["id"])
    wait_delivery(api, delivery["id"], "delivered")
    # As if a worker died after sending: still "sending", held by a process that is gone.
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == uuid.UUID(delivery["id"]))
            .values(
                status=DeliveryStatus.SENDING,
                lease_token=uuid.uuid4(),
                lease_expires_at=utcnow() + timedelta(seconds=LEASE),
                lease_holder=str(dead_holder()),
            )
        )
    assert keeper().reclaim_from_dead_predecessors() == 1
    _, again = hooks.wait_for(2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert wait_delivery(api, delivery["id"], "delivered")["attempts"] == 2


def test_the_keeper_outlives_an_outage_of_the_fleets_redis() -> None:
    import redis

    def redis_down(_: float) -> bool:
        raise redis.ConnectionError("Redis is restarting")

    keeper_ = LeaseKeeper(LEASE, list(LEASED_TABLES), may_republish=redis_down)
    keeper_.tick()  # logged, not raised: the renewals go on at the next tick
