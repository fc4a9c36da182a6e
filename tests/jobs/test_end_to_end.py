"""API -> Redis -> a real Celery worker -> simulator -> S3 server -> PostgreSQL, for real."""

from __future__ import annotations

import hashlib
import io
import itertools
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from relightq.broker import TaskName, get_celery
from relightq.db import session_scope
from relightq.jobs.models import UpstreamState
from tests.conftest import Services, TenantKey, s3_client
from tests.support.images import product_png

pytestmark = pytest.mark.usefixtures("celery_worker")

SHOP_BUCKET = "shop-images"
_URLS = itertools.count()


def wait_for(api: httpx.Client, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {job['status']}: {job}")
        time.sleep(0.1)


def shop_image(key: str) -> tuple[str, str]:
    """Put a product photo in a 'customer' bucket; return its s3:// URI and a presigned URL.

    Each call's URL is a URL of its own (two presigned in the same second would be the same
    string, and result reuse would copy the first one's picture for the second)."""
    client: Any = s3_client()
    client.create_bucket(Bucket=SHOP_BUCKET)
    client.put_object(Bucket=SHOP_BUCKET, Key=key, Body=product_png(), ContentType="image/png")
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": SHOP_BUCKET, "Key": key}, ExpiresIn=600 + next(_URLS)
    )
    return f"s3://{SHOP_BUCKET}/{key}", url


def submit_photo(api: httpx.Client, key: str) -> str:
    """Post a default job for a product photo in the customer's bucket; return its id."""
    _, url = shop_image(key)
    return str(api.post("/v1/jobs", json={"prompt": "x", "subject_image": url}).json()["id"])


def download(url: str) -> bytes:
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    return response.content


def test_a_url_job_ends_with_a_correct_image_in_s3(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("catalog/shoe.png")
    body = {
        "prompt": "golden hour",
        "subject_image": url,
        "light_source": "Right Light",
        "width": 384,
        "height": 512,
        "highres_scale": 2,
        "external_id": "SKU-9",
    }
    job_id = api.post("/v1/jobs", json=body).json()["id"]

    job = wait_for(api, job_id, "succeeded", "failed")

    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["error"] is None and job["finished_at"]
    [output] = job["outputs"]
    assert output["s3_uri"] == f"s3://relightq-test/outputs/{tenant.id}/{job_id}/0.webp"
    data = download(output["url"])
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("WEBP", (768, 1024))
    assert output["bytes"] == len(data) and output["sha256"] == hashlib.sha256(data).hexdigest()
    assert output["content_type"] == "image/webp"
    assert job["credits_used"] == pytest.approx(0.037)
    # By default through Segmind's v2 queue: the call names the request it collected,
    # and a collected job keeps no request in flight.
    [call] = job["attempt_log"]
    assert call["upstream_request_id"] and job["upstream_request_id"] is None
    assert simulator.get("/admin/stats").json()["by_api"] == {"v1": 0, "v2": 1}
    with session_scope() as session:
        state = session.scalar(select(UpstreamState))
    assert state is not None
    assert state.remaining_credits == Decimal(str(simulator.get("/admin/stats").json()["credits"]))


def test_an_uploaded_image_is_sent_to_segmind_as_bytes(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    response = api.post(
        "/v1/jobs",
        data={"prompt": "soft box", "output_format": "png", "number_of_images": "2"},
        files={"subject_image": ("mug.png", product_png(), "image/png")},
    )
    job = wait_for(api, response.json()["id"], "succeeded", "failed")
    assert job["status"] == "succeeded", job["error"]
    assert [o["index"] for o in job["outputs"]] == [0, 1]
    for output in job["outputs"]:
        image = Image.open(io.BytesIO(download(output["url"])))
        assert (image.format, image.size) == ("PNG", (768, 960))
        assert output["s3_uri"].endswith(f"/{output['index']}.png")


def test_an_s3_subject_is_read_by_the_worker_and_uploaded(api: httpx.Client) -> None:
    uri, _ = shop_image("catalog/bag.png")
    job_id = api.post("/v1/jobs", json={"prompt": "x", "subject_image": uri}).json()["id"]
    assert wait_for(api, job_id, "succeeded", "failed")["status"] == "succeeded"


def test_a_missing_s3_subject_fails_the_job_without_calling_segmind(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    body = {"prompt": "x", "subject_image": f"s3://{SHOP_BUCKET}/nope.png"}
    s3_client().create_bucket(Bucket=SHOP_BUCKET)
    job = wait_for(api, api.post("/v1/jobs", json=body).json()["id"], "failed", "succeeded")
    assert job["error"]["code"] == "input_unreadable"
    assert job["attempt_log"] == []  # no upstream call was made for it


def test_a_rejected_request_fails_at_once_with_segminds_message(
    api: httpx.Client, services: Services, simulator: httpx.Client
) -> None:
    body = {"prompt": "x", "subject_image": f"{services.s3}/{SHOP_BUCKET}/missing.png"}
    job = wait_for(api, api.post("/v1/jobs", json=body).json()["id"], "failed", "succeeded")
    assert job["error"]["code"] == "segmind_rejected"
    assert "422" in job["error"]["message"] and "subject_image" in job["error"]["message"]
    assert job["attempts"] == 1 and job["outputs"] == []


def test_transient_errors_are_retried_then_fail_after_max_attempts(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    job_id = submit_photo(api, "catalog/lamp.png")
    job = wait_for(api, job_id, "failed", "succeeded")
    assert job["error"]["code"] == "segmind_unavailable"
    assert job["attempts"] == 3  # RELIGHTQ_MAX_ATTEMPTS in the test settings
    assert simulator.get("/admin/stats").json()["by_status"] == {"500": 3}


def test_a_transient_error_then_success_succeeds(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    job_id = submit_photo(api, "catalog/box.png")
    deadline = time.monotonic() + 10
    while simulator.get("/admin/stats").json()["calls"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    job = wait_for(api, job_id, "succeeded", "failed")
    assert job["status"] == "succeeded" and job["attempts"] >= 2


def test_out_of_credits_makes_the_job_wait_without_losing_an_attempt(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"credits": 0.0}).raise_for_status()
    job_id = submit_photo(api, "catalog/pack.png")

    waiting = wait_for(api, job_id, "waiting", "failed", "succeeded")
    assert waiting["status"] == "waiting"
    assert "credits" in waiting["waiting_reason"] and waiting["attempts"] == 0

    simulator.post("/admin/config", json={"credits": 10.0}).raise_for_status()
    done = wait_for(api, job_id, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["attempts"] == 1


def test_a_redelivered_message_for_a_finished_job_changes_nothing(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    job_id = submit_photo(api, "catalog/cup.png")
    first = wait_for(api, job_id, "succeeded", "failed")
    for _ in range(3):
        get_celery().send_task(TaskName.RELIGHT_RUN.value, args=[job_id])
    time.sleep(1.5)
    again = api.get(f"/v1/jobs/{job_id}").json()
    assert simulator.get("/admin/stats").json()["calls"] == 1
    assert again["outputs"] == [{**o, "url": again["outputs"][0]["url"]} for o in first["outputs"]]
    assert again["attempts"] == 1 and again["updated_at"] == first["updated_at"]


def test_a_429_waits_for_the_reset_time_without_losing_an_attempt(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"rate_429_rate": 1.0}).raise_for_status()
    job_id = submit_photo(api, "catalog/limited.png")
    waiting = wait_for(api, job_id, "waiting", "succeeded", "failed")
    assert waiting["status"] == "waiting" and waiting["waiting_reason"] == "segmind_rate_limited"
    simulator.post("/admin/config", json={"rate_429_rate": 0.0}).raise_for_status()
    job = wait_for(api, job_id, "succeeded", "failed")
    assert job["status"] == "succeeded" and job["attempts"] == 1
    limited = [a for a in job["attempt_log"] if a["http_status"] == 429]
    assert limited and not any(a["counted"] for a in limited)
    # The simulator's reset header is ~2 s ahead: the retry waited for it, fleet-wide.
    first_ok = next(a for a in job["attempt_log"] if a["http_status"] == 200)
    assert (
        datetime.fromisoformat(first_ok["started_at"])
        - datetime.fromisoformat(limited[-1]["finished_at"])
    ).total_seconds() > 1.0
