"""Segmind v2 mode: a submitted request is a receipt. It is committed before anything else,
polled without holding a thread, and collected by whichever worker runs the job next:
a job never pays for a second request unless Segmind forgot the first.

Real parts: the runner against the suite's PostgreSQL, Redis fleet, S3 server and the
simulator's v2 routes over HTTP; the poller is the one a worker process runs. A job these
tests hand back to the broker may be run by the suite's Celery worker instead of the test:
the assertions hold whoever runs it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from relightq.db import session_scope, utcnow
from relightq.jobs.models import Job, JobAttempt, JobStatus
from relightq.jobs.polling import Poller
from relightq.jobs.runner import RunnerDeps, hand_back_requests, run_job
from relightq.jobs.service import JOB_LEASES
from relightq.leases import Lease, LeaseKeeper
from relightq.segmind.client import SegmindClient
from relightq.segmind.params import RelightParams
from relightq.settings import Settings, get_settings
from relightq.storage import S3Storage
from relightq.throttle.service import get_fleet
from tests.conftest import Services, TenantKey
from tests.support.images import product_png

FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class StoppedPoller(Poller):
    """A worker process that dies right after the submit: nothing it tracks is polled."""

    def track(self, lease: Lease, step: Callable[[], float | None], delay: float) -> None:
        pass


def v2_settings(**changes: Any) -> Settings:
    return get_settings().model_copy(update={"segmind_api_version": "v2", **changes})


@pytest.fixture
def deps_for(services: Services, simulator: httpx.Client) -> Iterator[Callable[..., RunnerDeps]]:
    """Build the dependencies of one worker process in v2 mode (a fresh keeper each)."""
    made: list[RunnerDeps] = []

    def build(poller: Poller | None = None, **changes: Any) -> RunnerDeps:
        settings = v2_settings(**changes)
        client = SegmindClient(settings.effective_segmind_url, settings.effective_segmind_key)
        deps = RunnerDeps(
            settings,
            client,
            S3Storage(settings),
            get_fleet(),
            LeaseKeeper(settings.job_lease_seconds, [JOB_LEASES]),
            poller or Poller(),
        )
        made.append(deps)
        return deps

    yield build
    for deps in made:
        deps.keeper.stop()
        deps.client.close()


def new_job(tenant: TenantKey, **params: Any) -> uuid.UUID:
    storage = S3Storage(get_settings())
    key = f"inputs/{tenant.id}/{uuid.uuid4().hex}.png"
    uri = f"s3://{storage.bucket}/{key}"
    storage.put_uri(uri, product_png(), "image/png")
    fields = {"prompt": "studio", "width": 256, "height": 256, "highres_scale": 1, **params}
    with session_scope() as session:
        job = Job(
            tenant_id=tenant.id,
            params=RelightParams.model_validate(fields).model_dump(),
            subject_image=uri,
            # Every job here is the same photo, and these tests count requests: each buys
            # its own picture instead of copying the first one's.
            reuse=False,
        )
        session.add(job)
        session.flush()
        return job.id


def job_row(job_id: uuid.UUID) -> Job:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        session.expunge(job)
        return job


def attempt_rows(job_id: uuid.UUID) -> list[JobAttempt]:
    with session_scope() as session:
        rows = list(
            session.scalars(
                select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)
            )
        )
        session.expunge_all()
        return rows


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait_final(job_id: uuid.UUID, timeout: float = 30.0) -> Job:
    wait_for(lambda: job_row(job_id).status in FINAL, timeout)
    return job_row(job_id)


def stats(simulator: httpx.Client) -> dict[str, Any]:
    return dict(simulator.get("/admin/stats").json())


def expire_lease(job_id: uuid.UUID) -> None:
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_a_job_is_submitted_once_its_request_id_committed_and_collected_by_polling(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post("/admin/config", json={"latency": 1.0}).raise_for_status()
    deps = deps_for()
    job_id = new_job(tenant)

    started = time.monotonic()
    run_job(job_id, deps)
    returned_after = time.monotonic() - started

    # The task's thread is free long before the request is done; the receipt is stored.
    assert returned_after < 0.9
    running = job_row(job_id)
    assert running.status == JobStatus.RUNNING and running.upstream_request_id
    job = wait_final(job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert (job.attempts, job.upstream_request_id) == (1, None)
    seen = stats(simulator)
    assert (seen["calls"], seen["by_api"].get("v2"), seen["by_api"].get("v1", 0)) == (1, 1, 0)
    assert seen["polls"] >= 2  # at least one status, then the response
    [attempt] = attempt_rows(job_id)
    assert (attempt.outcome, attempt.http_status) == ("succeeded", 200)
    assert attempt.upstream_request_id == running.upstream_request_id
    with session_scope() as session:
        job_outputs = session.get_one(Job, job_id)
        assert job_outputs.credits_used > 0


def test_a_worker_dead_after_the_submit_never_submits_again_the_next_run_collects(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post("/admin/config", json={"latency": 0.5}).raise_for_status()
    job_id = new_job(tenant)
    dead = deps_for(poller=StoppedPoller())
    run_job(job_id, dead)
    dead.keeper.stop()  # the process is gone: its lease is no longer renewed
    request_id = job_row(job_id).upstream_request_id
    assert request_id

    # The broker redelivers while the lease still runs: the request is not touched.
    survivor = deps_for()
    run_job(job_id, survivor)
    assert stats(simulator)["calls"] == 1
    assert job_row(job_id).upstream_request_id == request_id

    expire_lease(job_id)  # what 30 s without renewals does
    run_job(job_id, survivor)
    job = wait_final(job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert stats(simulator)["calls"] == 1  # one request, paid once
    assert job.attempts == 1  # resuming a poll is not another attempt


def test_a_request_segmind_forgot_is_submitted_again_once_and_logged(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post("/admin/config", json={"latency": 2.0}).raise_for_status()
    deps = deps_for()
    job_id = new_job(tenant)
    run_job(job_id, deps)
    first = job_row(job_id).upstream_request_id
    simulator.post("/admin/forget", json={"request_ids": [first]}).raise_for_status()

    # The 404 re-queues the job at once; a worker (this test, or the suite's) runs it again.
    wait_for(lambda: job_row(job_id).upstream_resubmits == 1)
    run_job(job_id, deps)
    job = wait_final(job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert job.upstream_resubmits == 1
    lost, done = attempt_rows(job_id)
    assert (lost.http_status, lost.error_code, lost.outcome) == (
        404,
        "segmind_request_lost",
        "retry",
    )
    assert lost.upstream_request_id == first
    assert done.upstream_request_id not in (None, first)
    assert stats(simulator)["by_api"]["v2"] == 2


def test_a_request_forgotten_twice_fails_the_job_instead_of_paying_a_third_time(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post("/admin/config", json={"latency": 3.0}).raise_for_status()
    deps = deps_for()
    job_id = new_job(tenant)
    run_job(job_id, deps)
    first = job_row(job_id).upstream_request_id
    simulator.post("/admin/forget").raise_for_status()
    wait_for(lambda: job_row(job_id).upstream_resubmits == 1)
    run_job(job_id, deps)  # or the suite's worker: either submits the second request
    wait_for(lambda: job_row(job_id).upstream_request_id not in (None, first))
    simulator.post("/admin/forget").raise_for_status()
    wait_for(lambda: job_row(job_id).status == JobStatus.FAILED)
    job = job_row(job_id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "segmind_request_lost")
    assert stats(simulator)["by_api"]["v2"] == 2


def test_a_failed_request_is_retried_when_its_error_is_transient(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post(
        "/admin/config", json={"failed_rate": 1.0, "failed_error": "CUDA out of memory"}
    ).raise_for_status()
    deps = deps_for()
    job_id = new_job(tenant)
    run_job(job_id, deps)
    # The simulator decides a request's fate at its submit: only the first one fails.
    simulator.post("/admin/config", json={"failed_rate": 0.0}).raise_for_status()
    wait_for(lambda: len(attempt_rows(job_id)) >= 1)
    [failed, *_] = attempt_rows(job_id)
    assert (failed.http_status, failed.outcome, failed.counted) == (422, "retry", True)
    assert failed.error_message == "CUDA out of memory"
    with session_scope() as session:  # its backoff, elapsed
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(run_after=None)
        )
    run_job(job_id, deps)  # or the suite's worker, once the backoff is over
    job = wait_final(job_id)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)
    # A FAILED request is not billed: only the completed one was charged.
    assert stats(simulator)["credits"] == pytest.approx(100.0 - 0.037)


def test_a_failed_request_whose_error_names_the_input_fails_the_job_at_once(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post(
        "/admin/config",
        json={"failed_rate": 1.0, "failed_error": "Prompt is Mandatory and must be string"},
    ).raise_for_status()
    job_id = new_job(tenant)
    run_job(job_id, deps_for())
    job = wait_final(job_id)
    # A rejection in Segmind's words, as v1 answers a 422.
    assert (job.status, job.error_code, job.attempts) == (JobStatus.FAILED, "segmind_rejected", 1)
    assert job.error_message == "Segmind answered 422: Prompt is Mandatory and must be string"


def test_out_of_credits_on_submit_pauses_the_fleet_and_the_job_waits_without_an_attempt(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post("/admin/config", json={"credits": 0.0}).raise_for_status()
    job_id = new_job(tenant)
    run_job(job_id, deps_for())
    job = job_row(job_id)
    assert (job.status, job.attempts, job.upstream_request_id) == (JobStatus.WAITING, 0, None)
    state = get_fleet().state()
    assert state.paused and state.code == "segmind_out_of_credits"
    assert stats(simulator)["by_status"] == {"406": 1}


def test_the_concurrency_cap_counts_requests_until_they_are_final_not_until_submitted(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post("/admin/config", json={"latency": 1.0}).raise_for_status()
    deps = deps_for()
    ids = [new_job(tenant) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:  # eight task threads, as a worker would run them
        list(pool.map(lambda job_id: run_job(job_id, deps), ids))
    jobs = [wait_final(job_id) for job_id in ids]
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}
    seen = stats(simulator)
    cap = get_settings().max_concurrent_calls  # 4 in the suite
    assert seen["peak_concurrency"] == cap  # full use of the cap, never more
    assert seen["calls"] == 8


def test_a_stopping_worker_hands_its_requests_to_the_next_one_without_resubmitting(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post("/admin/config", json={"latency": 2.0}).raise_for_status()
    stopping = deps_for()
    ids = [new_job(tenant) for _ in range(3)]
    for job_id in ids:
        run_job(job_id, stopping)
    tokens = {job_id: job_row(job_id).lease_token for job_id in ids}
    stopping.keeper.draining.set()
    assert hand_back_requests(stopping) == 3
    # Ended at once (no waiting for the lease; the suite's worker may already have taken
    # one over), request kept.
    for job_id in ids:
        job = job_row(job_id)
        assert job.upstream_request_id and job.lease_expires_at is not None
        assert job.lease_expires_at < utcnow() or job.lease_token != tokens[job_id]
    wait_for(lambda: len(stopping.poller) == 0)
    time.sleep(stopping.keeper.interval + 1)  # a renewal would push an ended lease out again
    for job_id in ids:
        job = job_row(job_id)
        ended = job.lease_expires_at is not None and job.lease_expires_at < utcnow()
        assert ended or job.lease_token != tokens[job_id]

    successor = deps_for()
    for job_id in ids:
        run_job(job_id, successor)
    jobs = [wait_final(job_id) for job_id in ids]
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}
    assert stats(simulator)["calls"] == 3  # nothing submitted twice
    assert [j.attempts for j in jobs] == [1, 1, 1]


def test_polls_failing_for_long_count_as_a_failed_attempt_not_as_a_request_lost_forever(
    tenant: TenantKey,
    simulator: httpx.Client,
    deps_for: Callable[..., RunnerDeps],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bound is ~10 minutes of failed polls at the defaults; its logic is checked at 3.
    from relightq.jobs import runner
    from relightq.segmind.errors import SegmindUnavailable

    monkeypatch.setattr(runner, "MAX_FAILED_POLLS", 3)
    monkeypatch.setattr(runner, "FAILED_POLL_RETRY_SECONDS", 0.05)
    deps = deps_for()

    def unreachable(*_: object) -> None:
        raise SegmindUnavailable("could not reach Segmind (ConnectError)")

    monkeypatch.setattr(deps.client, "status", unreachable)
    job_id = new_job(tenant)
    run_job(job_id, deps)
    wait_for(lambda: len(attempt_rows(job_id)) >= 1)
    # One counted attempt, retried on the usual backoff (by whichever worker); the
    # request is given up.
    call = attempt_rows(job_id)[0]
    assert (call.outcome, call.error_code, call.counted) == ("retry", "segmind_unavailable", True)
    assert (
        call.upstream_request_id and call.upstream_request_id != job_row(job_id).upstream_request_id
    )


def test_a_key_refused_while_polling_pauses_the_fleet_and_the_job_keeps_its_request(
    tenant: TenantKey, simulator: httpx.Client, deps_for: Callable[..., RunnerDeps]
) -> None:
    simulator.post("/admin/config", json={"latency": 1.0}).raise_for_status()
    deps = deps_for()
    job_id = new_job(tenant)
    run_job(job_id, deps)
    request_id = job_row(job_id).upstream_request_id
    assert request_id
    # The key is revoked while the request runs: its polls get 401.
    simulator.post("/admin/config", json={"valid_keys": ["another-key"]}).raise_for_status()
    wait_for(lambda: job_row(job_id).status == JobStatus.WAITING)
    job = job_row(job_id)
    state = get_fleet().state()
    assert state.paused and state.code == "segmind_unauthorized"
    assert (job.upstream_request_id, job.attempts) == (request_id, 1)  # receipt kept

    # The key works again; the resume wakes the job, which polls the same request.
    simulator.post("/admin/config", json={"valid_keys": None}).raise_for_status()
    get_fleet().resume(manual=True)
    run_job(job_id, deps)  # or the suite's worker, woken by the resume
    job = wait_final(job_id)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert stats(simulator)["calls"] == 1  # never submitted again
