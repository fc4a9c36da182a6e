"""Jobs through the sync client: submit by URL and by upload, wait, list, cancel, retry."""

from __future__ import annotations

import uuid

import httpx
import pytest

from relightq.client import RelightqAPIError, RelightqClient
from relightq.jobs.models import JobStatus
from relightq.jobs.schemas import JobOut
from tests.conftest import Services
from tests.jobs.test_end_to_end import shop_image
from tests.support.images import product_png

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_a_job_by_url_is_submitted_waited_for_and_read_back(
    client: RelightqClient, simulator: httpx.Client
) -> None:
    _, url = shop_image("client/by-url.png")

    job = client.create_job(
        url, "soft studio light", external_id="SKU-1", metadata={"shop": "acme"}, width=384
    )

    assert isinstance(job, JobOut) and job.status == JobStatus.QUEUED
    assert (job.external_id, job.metadata, job.params["width"]) == ("SKU-1", {"shop": "acme"}, 384)
    done = client.wait_for_job(job.id, timeout=30, interval=0.1)
    assert done.status == JobStatus.SUCCEEDED and done.id == job.id
    assert done.outputs and done.outputs[0].url.startswith("http")
    assert client.get_job(job.id) == done


def test_an_uploaded_image_runs_and_prefer_wait_returns_the_final_job(
    client: RelightqClient, simulator: httpx.Client
) -> None:
    job = client.upload_job(
        product_png(),
        "rim light",
        filename="shoe.png",
        content_type="image/png",
        wait=30,
        external_id="SKU-UP",
        metadata={"n": 1},
        width=384,
    )

    assert job.status == JobStatus.SUCCEEDED  # Prefer: wait=30 answered with the final job
    assert job.subject_image.startswith("s3://")
    assert (job.external_id, job.metadata, job.params["width"]) == ("SKU-UP", {"n": 1}, 384)


def test_an_idempotency_key_replays_the_first_answer(
    client: RelightqClient, simulator: httpx.Client
) -> None:
    _, url = shop_image("client/idempotent.png")
    key = f"product-{uuid.uuid4()}"

    first = client.create_job(url, "x", idempotency_key=key)
    again = client.create_job(url, "x", idempotency_key=key)

    assert again.id == first.id
    assert [j.id for j in client.iter_jobs()] == [first.id]


def test_listing_pages_through_every_job(client: RelightqClient, simulator: httpx.Client) -> None:
    _, url = shop_image("client/listed.png")
    ids = [client.create_job(url, "x", external_id=f"L-{n}").id for n in range(5)]

    page = client.list_jobs(limit=2)
    walked = list(client.iter_jobs(page_size=2))

    assert len(page.items) == 2 and page.next_cursor
    assert [j.id for j in page.items] == ids[::-1][:2]  # newest first
    assert [j.id for j in walked] == ids[::-1]  # three pages, nothing twice, nothing missed
    second = client.list_jobs(limit=2, cursor=page.next_cursor)
    assert [j.id for j in second.items] == ids[::-1][2:4]


def test_cancel_and_retry(
    client: RelightqClient, ops_client: RelightqClient, simulator: httpx.Client
) -> None:
    _, url = shop_image("client/cancel.png")
    ops_client.pause_throttle("client test")
    try:
        parked = client.create_job(url, "x")
        cancelled = client.cancel_job(parked.id)
    finally:
        ops_client.resume_throttle()
    assert cancelled.status == JobStatus.CANCELLED

    retried = client.retry_job(parked.id)

    assert retried.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    assert client.wait_for_job(parked.id, timeout=30, interval=0.1).status == "succeeded"


def test_errors_carry_status_code_message_and_fields(client: RelightqClient) -> None:
    with pytest.raises(RelightqAPIError) as invalid:
        client.create_job("https://example.com/a.png", "x", light_source="Moon Light")
    with pytest.raises(RelightqAPIError) as missing:
        client.get_job(uuid.uuid4())

    assert (invalid.value.status, invalid.value.code) == (422, "validation_error")
    [problem] = invalid.value.fields
    assert problem.field == "light_source"
    assert problem.allowed and "Left Light" in problem.allowed
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert "not found" in missing.value.message and missing.value.retry_after is None


def test_a_bad_key_is_a_401(services: Services) -> None:
    with (
        RelightqClient(services.api, "rq_not-a-key") as stranger,
        pytest.raises(RelightqAPIError) as refused,
    ):
        stranger.list_jobs()
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
