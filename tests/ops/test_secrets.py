"""The Segmind key never shows up: not in logs, job records, errors or responses."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from relightq.db import session_scope
from relightq.jobs.models import Job
from relightq.logs import configure, unconfigure
from relightq.serving import serve_in_thread
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image, submit_photo, wait_for
from tests.segmind.echo_upstream import echoing_upstream
from tests.support.caches import reset_caches

pytestmark = pytest.mark.usefixtures("celery_worker")

SEGMIND_KEY = "SG_live_5b6f0c2e9d1a4f8b"


@pytest.fixture
def real_key(
    services: Services, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> Iterator[io.StringIO]:
    """Run as if with a real Segmind key (the simulator checks it), logging to a buffer."""
    monkeypatch.setenv("RELIGHTQ_SEGMIND_API_KEY", SEGMIND_KEY)
    monkeypatch.setenv("RELIGHTQ_SEGMIND_BASE_URL", services.simulator)
    reset_caches()
    simulator.post("/admin/config", json={"valid_keys": [SEGMIND_KEY]}).raise_for_status()
    buffer = io.StringIO()
    configure("DEBUG", "json", buffer)
    yield buffer
    monkeypatch.undo()
    reset_caches()
    unconfigure()


def test_the_segmind_key_never_appears_in_logs_records_errors_or_responses(
    real_key: io.StringIO,
    services: Services,
    api: httpx.Client,
    operator: TenantKey,
    simulator: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    done = wait_for(api, submit_photo(api, "catalog/secret-ok.png"), "succeeded", "failed")
    assert done["status"] == "succeeded"  # the key reached the upstream...
    simulator.post("/admin/config", json={"valid_keys": ["another-key"]}).raise_for_status()
    refused = submit_photo(api, "catalog/secret-401.png")
    wait_for(api, refused, "waiting")  # ...and a 401 paused the fleet
    logging.getLogger("relightq.test").error("upstream said %s", f"bad key {SEGMIND_KEY}")

    answers = [
        api.get(f"/v1/jobs/{done['id']}").text,
        api.get(f"/v1/jobs/{refused}").text,
        api.get("/v1/jobs").text,
        api.get("/v1/throttle").text,
        httpx.get(f"{services.api}/metrics").text,
        httpx.get(f"{services.api}/openapi.json").text,
    ]
    logs = real_key.getvalue()
    assert (logs and "segmind" in logs.lower()) or "job" in logs
    assert SEGMIND_KEY not in logs and "[redacted]" in logs
    assert SEGMIND_KEY not in caplog.text or all(
        SEGMIND_KEY not in r.getMessage() for r in caplog.records if r.name != "relightq.test"
    )
    for answer in answers:
        assert answer and SEGMIND_KEY not in answer  # a real body (no redirect), no key
    with httpx.Client(base_url=services.api, headers={"x-api-key": operator.key}) as ops:
        ops.post("/v1/throttle/resume").raise_for_status()


def test_log_lines_carry_the_job_batch_and_tenant_they_are_about(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    buffer = io.StringIO()
    configure("INFO", "json", buffer)
    try:
        _, url = shop_image("catalog/logged.png")
        batch = api.post(
            "/v1/batches", json={"defaults": {"prompt": "x"}, "items": [{"subject_image": url}]}
        ).json()
        [job] = api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["items"]
        wait_for(api, job["id"], "succeeded")
    finally:
        unconfigure()

    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    about_job = [line for line in lines if line.get("job_id") == job["id"]]
    assert about_job, lines
    assert all(line["tenant_id"] == str(tenant.id) for line in about_job if "tenant_id" in line)
    assert any(line.get("batch_id") == batch["id"] for line in about_job)


ECHOED_KEY = "SG_live_echoed_0d4c8a6e2b"


@pytest.fixture
def echoing_upstream_key(
    services: Services, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Run with a Segmind key against an upstream that quotes it back in its errors."""
    with serve_in_thread(echoing_upstream()) as upstream:
        monkeypatch.setenv("RELIGHTQ_SEGMIND_API_KEY", ECHOED_KEY)
        monkeypatch.setenv("RELIGHTQ_SEGMIND_BASE_URL", upstream)
        reset_caches()
        yield
        monkeypatch.undo()
        reset_caches()


@pytest.mark.usefixtures("echoing_upstream_key")
def test_an_upstream_quoting_the_key_gets_it_into_no_job_record_and_no_fleet_state(
    api: httpx.Client, operator: TenantKey, services: Services
) -> None:
    body = {"subject_image": "https://example.com/shoe.png"}
    rejected = api.post("/v1/jobs", json={**body, "prompt": "reject"}).json()["id"]
    failed = wait_for(api, rejected, "failed")
    refused = api.post("/v1/jobs", json={**body, "prompt": "unauthorized"}).json()["id"]
    waiting = wait_for(api, refused, "waiting")
    throttle = api.get("/v1/throttle")

    assert failed["error"]["message"].startswith("Segmind answered 422: Invalid parameters")
    assert "[redacted]" in failed["error"]["message"]
    assert throttle.json()["state"] == "paused"
    assert throttle.json()["reason"] == "API key [redacted] is not valid"
    for answer in (json.dumps(failed), json.dumps(waiting), throttle.text):
        assert ECHOED_KEY not in answer
    with session_scope() as session:
        stored = session.scalars(select(Job.error_message).where(Job.id == rejected)).one()
    assert stored and ECHOED_KEY not in stored
    with httpx.Client(base_url=services.api, headers={"x-api-key": operator.key}) as ops:
        ops.post("/v1/throttle/resume").raise_for_status()
