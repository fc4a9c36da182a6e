"""/v1/throttle and `relightq throttle`: the fleet pauses, parks jobs, and resumes them."""

from __future__ import annotations

import time

import httpx
import pytest
from typer.testing import CliRunner

from relightq.cli import app as cli
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image, wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_anyone_reads_the_fleet_state_with_its_limits(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    state = api.get("/v1/throttle").json()
    assert state["state"] == "running" and state["calls_in_flight"] == 0
    assert state["limits"] == {
        "max_concurrent_calls": 4,
        "max_calls_per_minute": 100000,
        "credit_reserve": 0.0,
        "credit_warn_below": 10.0,
    }


def test_only_an_operator_may_pause_or_resume(api: httpx.Client, simulator: httpx.Client) -> None:
    for path in ("/v1/throttle/pause", "/v1/throttle/resume"):
        response = api.post(path)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    assert api.get("/v1/throttle").json()["state"] == "running"


def test_an_operator_pause_parks_jobs_without_calls_and_resume_runs_them(
    services: Services, api: httpx.Client, operator: TenantKey, simulator: httpx.Client
) -> None:
    headers = {"x-api-key": operator.key}
    with httpx.Client(base_url=services.api, headers=headers) as ops:
        paused = ops.post("/v1/throttle/pause", json={"reason": "quarterly budget review"}).json()
        assert (paused["state"], paused["code"], paused["manual"]) == ("paused", "manual", True)

        urls = [shop_image(f"catalog/paused-{n}.png")[1] for n in range(3)]  # three pictures
        ids = [
            api.post("/v1/jobs", json={"prompt": "x", "subject_image": url}).json()["id"]
            for url in urls
        ]
        for job_id in ids:
            job = wait_for(api, job_id, "waiting")
            assert "quarterly budget review" in job["waiting_reason"]
            assert job["attempts"] == 0
        time.sleep(1.5)  # a probe would have run by now; a manual pause ignores it
        assert api.get("/v1/throttle").json()["state"] == "paused"
        assert simulator.get("/admin/stats").json()["calls"] == 0

        assert ops.post("/v1/throttle/resume").json()["state"] == "running"
    for job_id in ids:
        assert wait_for(api, job_id, "succeeded", "failed")["status"] == "succeeded"
    assert simulator.get("/admin/stats").json()["calls"] == 3


def test_credits_running_out_pause_the_fleet_and_a_top_up_resumes_it(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"credits": 0.05}).raise_for_status()  # one call's worth
    urls = [shop_image(f"catalog/credits-{n}.png")[1] for n in range(4)]  # four pictures
    ids = [
        api.post("/v1/jobs", json={"prompt": "x", "subject_image": url}).json()["id"]
        for url in urls
    ]
    deadline = time.monotonic() + 20
    while api.get("/v1/throttle").json()["state"] != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state = api.get("/v1/throttle").json()
    assert state["code"] == "segmind_out_of_credits" and not state["manual"]
    jobs = [wait_for(api, job_id, "waiting", "succeeded") for job_id in ids]
    waiting = [job for job in jobs if job["status"] == "waiting"]
    assert len(waiting) >= 3
    assert all(job["attempts"] == 0 and "credits" in job["waiting_reason"] for job in waiting)

    simulator.post("/admin/config", json={"credits": 10.0}).raise_for_status()
    done = [wait_for(api, job_id, "succeeded", "failed") for job_id in ids]
    assert [job["status"] for job in done] == ["succeeded"] * 4
    assert all(job["attempts"] == 1 for job in done)  # the 406 cost no attempt
    refused = [a for job in done for a in job["attempt_log"] if a["http_status"] == 406]
    assert refused and not any(a["counted"] for a in refused)


def test_the_cli_shows_pauses_and_resumes_the_fleet(simulator: httpx.Client) -> None:
    runner = CliRunner()
    paused = runner.invoke(cli, ["throttle", "pause", "--reason", "deploy"])
    assert paused.exit_code == 0 and '"paused"' in paused.output and "deploy" in paused.output
    assert '"paused"' in runner.invoke(cli, ["throttle", "status"]).output
    resumed = runner.invoke(cli, ["throttle", "resume"])
    assert resumed.exit_code == 0 and '"running"' in resumed.output
