"""POST /v1/jobs/{id}/cancel and /retry."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.batches.helpers import wait_batch
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image, submit_photo, wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_a_queued_job_can_be_cancelled_and_never_runs(
    services: Services, api: httpx.Client, operator: TenantKey, simulator: httpx.Client
) -> None:
    with httpx.Client(base_url=services.api, headers={"x-api-key": operator.key}) as ops:
        ops.post("/v1/throttle/pause", json={"reason": "hold"}).raise_for_status()
        job_id = submit_photo(api, "catalog/cancel-me.png")
        wait_for(api, job_id, "waiting")

        cancelled = api.post(f"/v1/jobs/{job_id}/cancel")

        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"  # again
        ops.post("/v1/throttle/resume").raise_for_status()
    other = submit_photo(api, "catalog/after-cancel.png")
    wait_for(api, other, "succeeded")
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert simulator.get("/admin/stats").json()["calls"] == 1


def test_a_running_or_finished_job_cannot_be_cancelled(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 1.0}).raise_for_status()
    job_id = submit_photo(api, "catalog/running.png")
    wait_for(api, job_id, "running")

    running = api.post(f"/v1/jobs/{job_id}/cancel")

    assert running.status_code == 409 and running.json()["error"]["code"] == "job_running"
    wait_for(api, job_id, "succeeded")
    finished = api.post(f"/v1/jobs/{job_id}/cancel")
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "job_final"


def test_a_failed_job_can_be_retried_with_fresh_attempts(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    job_id = submit_photo(api, "catalog/flaky.png")
    failed = wait_for(api, job_id, "failed")
    assert failed["attempts"] == 3

    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    retried = api.post(f"/v1/jobs/{job_id}/retry")

    assert retried.status_code == 200, retried.text
    done = wait_for(api, job_id, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
    again = api.post(f"/v1/jobs/{job_id}/retry")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_retryable"


def test_a_retried_batch_item_goes_back_to_its_batch(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    _, url = shop_image("catalog/batch-item.png")
    batch_id = api.post(
        "/v1/batches", json={"defaults": {"prompt": "x"}, "items": [{"subject_image": url}]}
    ).json()["id"]
    assert wait_batch(api, batch_id, "completed")["counts"]["failed"] == 1
    [job] = api.get("/v1/jobs", params={"batch_id": batch_id}).json()["items"]
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()

    assert api.post(f"/v1/jobs/{job['id']}/retry").status_code == 200

    done = wait_batch(api, batch_id, "completed")
    assert done["counts"] == {**done["counts"], "succeeded": 1, "failed": 0}


def test_another_tenants_job_cannot_be_cancelled_or_retried(
    api: httpx.Client,
    make_tenant: Callable[[], TenantKey],
    services: Services,
    simulator: httpx.Client,
) -> None:
    job_id = submit_photo(api, "catalog/mine.png")
    other = make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": other.key}) as theirs:
        assert theirs.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert theirs.post(f"/v1/jobs/{job_id}/retry").status_code == 404
