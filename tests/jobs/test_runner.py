"""The runner's claim and lease: at most one upstream call per job, whatever the broker does."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from relightq.credits.caps import set_monthly_cap
from relightq.db import session_scope, utcnow
from relightq.jobs.models import Job, JobOutput, JobStatus
from relightq.jobs.runner import CallRecord, Claim, _succeed, claim, retry_delay
from relightq.jobs.schemas import JobOptions
from relightq.jobs.service import JOB_LEASES
from relightq.leases import LeaseKeeper
from relightq.segmind.client import RelightResult, RelitImage
from relightq.settings import get_settings
from relightq.throttle.fleet import LocalFleet
from tests.conftest import TenantKey
from tests.support.images import product_png


def new_job(tenant: TenantKey) -> uuid.UUID:
    with session_scope() as session:
        job = Job(
            tenant_id=tenant.id,
            params=JobOptions(prompt="p").relight_params().model_dump(),
            subject_image="https://example.com/a.png",
        )
        session.add(job)
        session.flush()
        return job.id


def keeper() -> LeaseKeeper:
    return LeaseKeeper(get_settings().job_lease_seconds, [JOB_LEASES])


def try_claim(job_id: uuid.UUID, lease_seconds: int = 60) -> Claim | None:
    with session_scope() as session:
        return claim(session, job_id, lease_seconds)


def test_of_many_concurrent_deliveries_exactly_one_claims_the_job(tenant: TenantKey) -> None:
    job_id = new_job(tenant)
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda _: try_claim(job_id), range(8)))
    assert sum(c is not None for c in claims) == 1
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempts) == (JobStatus.RUNNING, 1)


def test_a_running_job_is_reclaimed_only_after_its_lease_expires(tenant: TenantKey) -> None:
    job_id = new_job(tenant)
    first = try_claim(job_id)
    assert first is not None and try_claim(job_id) is None
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(1))
        )
    second = try_claim(job_id)
    assert second is not None and second.token != first.token and second.attempts == 2


def test_a_job_due_later_is_not_claimed_early(tenant: TenantKey) -> None:
    job_id = new_job(tenant)
    with session_scope() as session:
        later = utcnow() + timedelta(minutes=5)
        session.execute(update(Job).where(Job.id == job_id).values(run_after=later))
    assert try_claim(job_id) is None


def test_final_and_missing_jobs_are_not_claimed(tenant: TenantKey) -> None:
    job_id = new_job(tenant)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))
    assert try_claim(job_id) is None
    assert try_claim(uuid.uuid4()) is None


class MemoryStorage:
    """A fake store for the pure bookkeeping below (real S3 is covered end to end)."""

    bucket = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str) -> str:
        return self.put_uri(f"s3://{self.bucket}/{key}", data, content_type)

    def put_uri(self, uri: str, data: bytes, content_type: str) -> str:
        self.objects[uri.removeprefix(f"s3://{self.bucket}/")] = data
        return uri

    def get(self, uri: str) -> bytes:
        return self.objects[uri.removeprefix(f"s3://{self.bucket}/")]

    def url(self, uri: str) -> str:
        return uri

    def delete(self, uri: str) -> None:
        self.objects.pop(uri.removeprefix(f"s3://{self.bucket}/"), None)


def test_a_worker_that_lost_its_lease_cannot_record_an_outcome(tenant: TenantKey) -> None:
    from relightq.jobs.runner import RunnerDeps

    job_id = new_job(tenant)
    stale = try_claim(job_id)
    assert stale is not None
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(1))
        )
    current = try_claim(job_id)
    assert current is not None
    storage = MemoryStorage()
    deps = RunnerDeps(get_settings(), None, storage, LocalFleet(1, 1), keeper())  # type: ignore[arg-type]
    result = RelightResult([RelitImage(product_png(), "image/png")], Decimal("9.0"))

    _succeed(stale, result, deps, CallRecord(utcnow(), 200))
    with session_scope() as session:
        assert session.get_one(Job, job_id).status == JobStatus.RUNNING
        assert list(session.scalars(select(JobOutput).where(JobOutput.job_id == job_id))) == []

    _succeed(current, result, deps, CallRecord(utcnow(), 200))
    _succeed(current, result, deps, CallRecord(utcnow(), 200))  # a repeated finish is discarded too
    with session_scope() as session:
        assert session.get_one(Job, job_id).status == JobStatus.SUCCEEDED
        outputs = list(session.scalars(select(JobOutput).where(JobOutput.job_id == job_id)))
    assert [o.index for o in outputs] == [0]
    assert list(storage.objects) == [f"outputs/{tenant.id}/{job_id}/0.png"]


def test_retry_delays_grow_exponentially_with_full_jitter() -> None:
    settings = get_settings().model_copy(
        update={"retry_base_delay_seconds": 2.0, "retry_max_delay_seconds": 60.0}
    )
    samples = {
        attempt: [retry_delay(attempt, settings) for _ in range(300)] for attempt in (1, 4, 9)
    }
    assert all(0 <= d <= 2 for d in samples[1])
    assert all(0 <= d <= 16 for d in samples[4]) and max(samples[4]) > 8
    assert all(0 <= d <= 60 for d in samples[9]) and max(samples[9]) > 30


def test_a_balance_below_the_reserve_pauses_the_fleet_before_it_reaches_zero(
    tenant: TenantKey,
) -> None:
    from relightq.jobs.runner import RunnerDeps

    job_id = new_job(tenant)
    current = try_claim(job_id)
    assert current is not None
    fleet = LocalFleet(4, 100)
    settings = get_settings().model_copy(update={"credit_reserve": 5.0})
    deps = RunnerDeps(settings, None, MemoryStorage(), fleet, keeper())  # type: ignore[arg-type]
    result = RelightResult([RelitImage(product_png(), "image/png")], Decimal("4.2"))
    _succeed(current, result, deps, CallRecord(utcnow(), 200))
    state = fleet.state()
    assert state.paused and state.code == "credit_reserve" and state.credits == 4.2
    assert "reserve of 5.0" in (state.reason or "")


def test_an_unexpected_error_during_the_call_still_frees_the_fleet_slot(
    tenant: TenantKey,
) -> None:
    from relightq.jobs.runner import RunnerDeps, run_job

    class BrokenClient:
        def relight(self, *_: object) -> RelightResult:
            raise RuntimeError("a bug, not a Segmind answer")

        submit = relight  # v2's call

    fleet = LocalFleet(1, 100)
    deps = RunnerDeps(get_settings(), BrokenClient(), MemoryStorage(), fleet, keeper())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        run_job(new_job(tenant), deps)
    assert fleet.state().in_flight == 0
    assert fleet.acquire("next").admitted  # the cap of 1 is whole again
    assert deps.keeper.held() == []  # nor is the job's lease renewed by nobody


@pytest.mark.parametrize("api_version", ["v1", "v2"])
def test_postgresql_failing_just_before_the_call_still_frees_the_fleet_slot(
    tenant: TenantKey, monkeypatch: pytest.MonkeyPatch, api_version: str
) -> None:
    # The reservation is read with the slot held: an outage there must not keep the slot
    # renewed by this process's heartbeat, shrinking the fleet's cap for good.
    from sqlalchemy.exc import OperationalError

    from relightq.credits import budgets
    from relightq.jobs.runner import RunnerDeps, run_job

    def unreachable(*_: object) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(budgets, "limits", unreachable)
    with session_scope() as session:  # a capped tenant's job reserves before its call
        set_monthly_cap(session, tenant.name, Decimal(1000))
    client, fleet = RecordingClient(), LocalFleet(1, 100)
    settings = get_settings().model_copy(update={"segmind_api_version": api_version})
    deps = RunnerDeps(settings, client, MemoryStorage(), fleet, keeper())  # type: ignore[arg-type]
    with pytest.raises(OperationalError):
        run_job(new_job(tenant), deps)
    assert client.calls == 0
    assert fleet.state().in_flight == 0
    assert fleet.acquire("next").admitted  # the cap of 1 is whole again


class RecordingClient:
    """Counts relight calls; any call is a failure of the tests below."""

    calls = 0

    def relight(self, *_: object) -> RelightResult:
        self.calls += 1
        return RelightResult([RelitImage(product_png(), "image/png")], Decimal("9.0"))


def test_a_job_whose_lease_is_lost_before_the_call_is_not_called(tenant: TenantKey) -> None:
    # The keeper could not renew past the lease (PostgreSQL unreachable): another worker
    # may hold the job now, so this one must not pay for a call.
    from relightq.jobs.runner import RunnerDeps, _run_claimed
    from relightq.leases import Lease

    job_id = new_job(tenant)
    claimed = try_claim(job_id)
    assert claimed is not None
    client, fleet = RecordingClient(), LocalFleet(1, 100)
    deps = RunnerDeps(get_settings(), client, MemoryStorage(), fleet, keeper())  # type: ignore[arg-type]
    expired = Lease(JOB_LEASES, job_id, claimed.token, valid_until=0.0)
    _run_claimed(claimed, expired, deps)
    assert client.calls == 0
    assert fleet.state().in_flight == 0  # its slot was given back
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    """The wake-ups the runner sends, kept here: a live worker thread of the suite would
    otherwise claim the handed-back job before the test could look at it."""
    sent: list[uuid.UUID] = []
    monkeypatch.setattr(
        "relightq.jobs.runner.publish_job", lambda _s, job_id, *_a, **_k: sent.append(job_id)
    )
    return sent


def test_a_stopping_worker_hands_a_job_waiting_for_a_slot_back_to_the_queue_at_once(
    tenant: TenantKey, published: list[uuid.UUID]
) -> None:
    import threading
    import time

    from relightq.jobs.runner import RunnerDeps, run_job

    job_id = new_job(tenant)
    fleet = LocalFleet(1, 100)
    assert fleet.acquire("a call of another job").admitted  # the only slot is busy
    client, keeper_ = RecordingClient(), keeper()
    deps = RunnerDeps(get_settings(), client, MemoryStorage(), fleet, keeper_)  # type: ignore[arg-type]
    threading.Timer(0.3, keeper_.draining.set).start()  # SIGTERM while it waits
    started = time.monotonic()
    run_job(job_id, deps)
    assert time.monotonic() - started < 2  # not the 60 s slot wait
    assert client.calls == 0
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        # Back in the queue, its attempt refunded, no lease left behind, a worker woken.
        assert (job.status, job.attempts, job.lease_token) == (JobStatus.QUEUED, 0, None)
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))
    assert published == [job_id]


def test_a_stopping_worker_does_not_claim_the_jobs_it_still_receives(
    tenant: TenantKey, published: list[uuid.UUID]
) -> None:
    from relightq.jobs.runner import RunnerDeps, run_job

    job_id = new_job(tenant)
    client, keeper_ = RecordingClient(), keeper()
    keeper_.draining.set()
    deps = RunnerDeps(get_settings(), client, MemoryStorage(), LocalFleet(1, 100), keeper_)  # type: ignore[arg-type]
    run_job(job_id, deps)
    assert client.calls == 0
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)  # left for another worker
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))
    assert published == [job_id]  # its wake-up sent again, for a worker that goes on


def test_a_single_job_of_a_tenant_without_a_cap_calls_without_reading_its_limits(
    tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing could stop its call: no batch, no cap when claimed; the claim said so.
    from relightq.credits import budgets
    from relightq.jobs.runner import RunnerDeps, run_job

    def unexpected(*_: object) -> None:
        raise AssertionError("limits read for a job nothing can stop")

    monkeypatch.setattr(budgets, "limits", unexpected)
    client = RecordingClient()
    settings = get_settings().model_copy(update={"segmind_api_version": "v1"})
    deps = RunnerDeps(settings, client, MemoryStorage(), LocalFleet(1, 100), keeper())  # type: ignore[arg-type]
    job_id = new_job(tenant)
    run_job(job_id, deps)
    assert client.calls == 1
    with session_scope() as session:
        assert session.get(Job, job_id).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]
