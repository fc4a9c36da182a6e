"""How batches share the fleet: fairness, the credit budget, pauses, cancel and retry."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from relightq.broker import broker_backlog
from relightq.db import session_scope
from relightq.jobs.models import Job, JobStatus, held_by_batch
from relightq.jobs.sweeper import sweep
from relightq.settings import get_settings
from relightq.throttle.service import get_fleet
from tests.batches.helpers import csv_file, manifest, wait_batch
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image, wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")

COST = 0.037  # the simulator's credits per image


def submit_catalog(api: httpx.Client, count: int, **fields: Any) -> str:
    """A CSV batch of ``count`` items of one product photo; returns the batch id.

    Every item is the same picture, which result reuse would make once and copy; these
    tests are about calls, so the batch buys each one (reuse false)."""
    _, url = shop_image("catalog/big.png")
    rows = [{"subject_image": url, "external_id": f"SKU-{n}"} for n in range(count)]
    data = {"defaults": '{"prompt": "catalog light"}', "reuse": "false", **fields}
    response = api.post("/v1/batches", files={"file": ("big.csv", csv_file(rows))}, data=data)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def attempts_spent(batch_id: str) -> int:
    with session_scope() as session:
        return int(
            session.scalar(select(func.sum(Job.attempts)).where(Job.batch_id == batch_id)) or 0
        )


def test_a_big_batch_does_not_starve_a_later_single_job_or_small_batch(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 0.25}).raise_for_status()
    big = submit_catalog(api, 2000)
    wait_until(lambda: api.get(f"/v1/batches/{big}").json()["counts"]["running"] > 0)
    window = get_settings().batch_window_size
    assert broker_backlog(get_settings()) <= window

    _, url = shop_image("catalog/urgent.png")
    single = api.post("/v1/jobs", json={"prompt": "now", "subject_image": url}).json()["id"]
    small = api.post(
        "/v1/batches",
        json={"defaults": {"prompt": "x"}, "items": [{"subject_image": url}] * 3},
    ).json()["id"]

    assert wait_for(api, single, "succeeded", "failed", timeout=20)["status"] == "succeeded"
    assert wait_batch(api, small, "completed", timeout=20)["counts"]["succeeded"] == 3
    progress = api.get(f"/v1/batches/{big}").json()
    # Both finished while nearly all of the big batch was still to do.
    assert progress["counts"]["succeeded"] < 100, progress["counts"]
    assert progress["status"] == "running" and progress["eta_seconds"] > 10

    cancelled = api.post(f"/v1/batches/{big}/cancel").json()
    assert cancelled["status"] == "cancelled"
    # Items already running finish; the batch is done once they have.
    wait_until(lambda: api.get(f"/v1/batches/{big}").json()["completed_at"] is not None)
    counts = api.get(f"/v1/batches/{big}").json()["counts"]
    assert counts["succeeded"] + counts["cancelled"] == 2000, counts
    assert counts["cancelled"] > 1800
    calls = simulator.get("/admin/stats").json()["calls"]
    time.sleep(0.6)
    assert simulator.get("/admin/stats").json()["calls"] == calls  # nothing more runs


def test_a_spent_credit_budget_makes_the_batch_wait_until_it_is_raised(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 0.1}).raise_for_status()
    batch_id = submit_catalog(api, 12, credit_budget="0.1")  # room for two images, not three

    waiting = wait_batch(api, batch_id, "waiting")
    assert waiting["waiting_reason"] == "batch credit budget spent"
    wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["counts"]["running"] == 0)
    spent = api.get(f"/v1/batches/{batch_id}").json()
    # Reserved before each call: never a credit past the budget.
    assert spent["credits_used"] == 0.074
    assert spent["counts"]["succeeded"] == simulator.get("/admin/stats").json()["calls"] == 2
    time.sleep(1)
    assert simulator.get("/admin/stats").json()["calls"] == 2  # it really waits
    assert attempts_spent(batch_id) == 2  # the items sent back lost no attempt

    raised = api.patch(f"/v1/batches/{batch_id}", json={"credit_budget": None})
    assert raised.status_code == 200, raised.text
    done = wait_batch(api, batch_id, "completed")
    assert done["counts"]["succeeded"] == 12
    assert done["credits_used"] == 0.444  # exactly 12 × 0.037, no float residue


def test_a_budget_is_never_overshot_whatever_the_concurrency(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    # Slow calls, so that every slot and the whole window are busy when the budget runs
    # out: a check after the calls would let all of them through.
    simulator.post("/admin/config", json={"latency": 0.5}).raise_for_status()
    batch_id = submit_catalog(api, 50, credit_budget="0.37")  # exactly ten images

    wait_batch(api, batch_id, "waiting", timeout=60)
    wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["counts"]["running"] == 0)
    time.sleep(1)

    batch = api.get(f"/v1/batches/{batch_id}").json()
    assert simulator.get("/admin/stats").json()["calls"] == 10
    assert batch["credits_used"] == 0.37 and batch["counts"]["succeeded"] == 10
    with session_scope() as session:
        held = session.scalar(
            select(func.sum(Job.credits_reserved)).where(Job.batch_id == batch_id)
        )
    assert not held  # nothing left reserved


def test_pausing_with_a_big_batch_queued_spins_nothing_and_burns_no_attempts(
    services: Services, api: httpx.Client, operator: TenantKey, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 0.05}).raise_for_status()
    batch_id = submit_catalog(api, 3000)
    wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["counts"]["succeeded"] > 10)
    ops = httpx.Client(base_url=services.api, headers={"x-api-key": operator.key})

    ops.post("/v1/throttle/pause", json={"reason": "month end"}).raise_for_status()
    wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["counts"]["running"] == 0)
    calls = simulator.get("/admin/stats").json()["calls"]
    attempts = attempts_spent(batch_id)
    backlog = []
    for _ in range(10):
        backlog.append(broker_backlog(get_settings()))
        time.sleep(0.15)

    paused = api.get(f"/v1/batches/{batch_id}").json()
    assert simulator.get("/admin/stats").json()["calls"] == calls  # no call after the pause
    assert attempts_spent(batch_id) == attempts == calls  # no attempt burned
    assert max(backlog) <= get_settings().batch_window_size  # no message spinning
    assert paused["status"] == "waiting" and "month end" in paused["waiting_reason"]

    ops.post("/v1/throttle/resume").raise_for_status()
    wait_until(lambda: simulator.get("/admin/stats").json()["calls"] > calls + 20)
    api.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()
    ops.close()


def test_retry_failed_runs_a_batch_s_failures_again(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    batch_id = submit_catalog(api, 2)
    failed = wait_batch(api, batch_id, "completed")
    assert failed["counts"]["failed"] == 2
    errors = manifest(api, batch_id, "errors")
    assert [e["external_id"] for e in errors] == ["SKU-0", "SKU-1"]
    assert all(e["status"] == "failed" and e["error"]["code"] for e in errors)

    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    retried = api.post(f"/v1/batches/{batch_id}/retry-failed")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] != "completed"
    done = wait_batch(api, batch_id, "completed")
    assert done["counts"]["succeeded"] == 2
    assert manifest(api, batch_id, "errors") == []
    assert [r["attempts"] for r in manifest(api, batch_id)] == [1, 1]


def test_another_tenant_cannot_touch_a_batch(
    api: httpx.Client, tenant: TenantKey, make_tenant: Any, services: Services
) -> None:
    batch_id = submit_catalog(api, 1)
    other = make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": other.key}) as theirs:
        assert theirs.post(f"/v1/batches/{batch_id}/retry-failed").status_code == 404
        assert theirs.patch(f"/v1/batches/{batch_id}", json={"credit_budget": 1}).status_code == 404
        assert theirs.get("/v1/batches").json()["items"] == []


def test_the_sweeper_releases_what_a_missed_settle_left_held(
    services: Services, api: httpx.Client, operator: TenantKey, simulator: httpx.Client
) -> None:
    window = get_settings().batch_window_size
    ops = httpx.Client(base_url=services.api, headers={"x-api-key": operator.key})
    ops.post("/v1/throttle/pause", json={"reason": "sweeper test"}).raise_for_status()
    batch_id = submit_catalog(api, window + 3)
    with session_scope() as session:
        held = select(func.count()).where(Job.batch_id == batch_id, held_by_batch())
        assert session.scalar(held) == 3
        # Items finished by a path that forgot to settle their batch.
        session.execute(
            update(Job)
            .where(Job.batch_id == batch_id, Job.dispatched_at.is_not(None))
            .values(status=JobStatus.CANCELLED)
        )
    with session_scope() as session:
        sweep(session, get_settings(), broker_backlog=0, fleet_paused=True)
    with session_scope() as session:
        assert session.scalar(held) == 0
    api.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()
    ops.post("/v1/throttle/resume").raise_for_status()
    ops.close()


@contextmanager
def slots_held(count: int) -> Iterator[None]:
    """Hold ``count`` of the fleet's slots, so the worker's claimed items queue for the rest."""
    fleet = get_fleet()
    tokens = [f"test-{uuid.uuid4()}" for _ in range(count)]
    try:
        for token in tokens:
            assert fleet.acquire(token).admitted
        yield
    finally:
        for token in tokens:
            fleet.release(token)


def test_items_waiting_for_a_slot_when_the_budget_runs_out_make_no_call(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 1.0}).raise_for_status()
    with slots_held(get_settings().max_concurrent_calls - 1):
        batch_id = submit_catalog(api, 12, credit_budget="0.05")  # one call, not two
        wait_batch(api, batch_id, "waiting", timeout=30)
        wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["counts"]["running"] == 0)

    # One call was on the wire; the items that waited behind it for a slot did not follow.
    assert simulator.get("/admin/stats").json()["calls"] == 1
    assert attempts_spent(batch_id) == 1


def test_a_budget_smaller_than_one_image_makes_no_call(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    batch_id = submit_catalog(api, 3, credit_budget="0.03")
    batch = wait_batch(api, batch_id, "waiting", timeout=30)
    assert batch["waiting_reason"] == "batch credit budget spent"
    time.sleep(0.5)
    assert simulator.get("/admin/stats").json()["calls"] == 0
    assert attempts_spent(batch_id) == 0


def test_cancelling_a_batch_stops_items_waiting_for_a_slot_before_their_call(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 1.5}).raise_for_status()
    with slots_held(get_settings().max_concurrent_calls - 1):
        batch_id = submit_catalog(api, 12)
        wait_until(lambda: simulator.get("/admin/stats").json()["in_flight"] == 1)
        wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["counts"]["running"] > 1)
        api.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()

    wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["completed_at"] is not None)
    counts = api.get(f"/v1/batches/{batch_id}").json()["counts"]
    assert (counts["succeeded"], counts["cancelled"]) == (1, 11), counts
    time.sleep(0.5)
    assert simulator.get("/admin/stats").json()["calls"] == 1  # nothing ran after the cancel


def test_cancelling_a_completed_batch_leaves_it_completed(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    batch_id = submit_catalog(api, 2)
    wait_batch(api, batch_id, "completed")

    answer = api.post(f"/v1/batches/{batch_id}/cancel")

    assert answer.status_code == 200 and answer.json()["status"] == "completed"
