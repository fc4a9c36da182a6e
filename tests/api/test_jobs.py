"""POST/GET /v1/jobs: validation, limits, pagination and tenant isolation over real HTTP."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from relightq.db import session_scope
from relightq.jobs.models import Job, JobStatus
from tests.conftest import Services, TenantKey
from tests.support.images import product_png

URL = "https://example.com/shoe.png"


def job_count(tenant: TenantKey) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(Job.tenant_id == tenant.id)) or 0


def fields_of(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    return {f["field"]: f for f in error["fields"]}


def test_json_job_is_accepted_with_defaults_filled_and_a_location(
    api: httpx.Client, tenant: TenantKey
) -> None:
    response = api.post(
        "/v1/jobs",
        json={
            "prompt": "warm studio light",
            "subject_image": URL,
            "external_id": "SKU-1",
            "metadata": {"shop": "x"},
            "priority": 7,
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["params"]["cfg"] == 2 and job["params"]["width"] == 512
    assert job["params"]["negative_prompt"].startswith("lowres")
    assert (job["external_id"], job["metadata"], job["priority"]) == ("SKU-1", {"shop": "x"}, 7)
    assert api.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]


def test_every_bad_field_is_named_with_its_allowed_values_and_nothing_is_stored(
    api: httpx.Client, tenant: TenantKey
) -> None:
    body = {
        "prompt": "",
        "subject_image": "ftp://example.com/a.png",
        "cfg": 33,
        "steps": 0,
        "width": 500,
        "height": 2048,
        "light_source": "Sideways",
        "highres_scale": 3.5,
        "output_format": "gif",
        "lowres_denoise": 0.05,
        "output_quality": 101,
        "highres_denoise": 2,
        "number_of_images": 13,
        "priority": 10,
        "callback_url": "not a url",
        "colour": "red",
    }
    fields = fields_of(api.post("/v1/jobs", json=body))
    assert set(fields) == set(body) - {"seed"}
    assert fields["cfg"]["allowed"] == "a number from 1 to 32"
    assert "1024" in fields["width"]["allowed"] and "576" in fields["width"]["allowed"]
    assert "Left Light" in fields["light_source"]["allowed"]
    assert fields["colour"]["message"] == "is not a known field"
    assert job_count(tenant) == 0


def test_missing_required_fields_are_named(api: httpx.Client) -> None:
    fields = fields_of(api.post("/v1/jobs", json={}))
    assert fields["prompt"]["message"] == "is required"
    assert fields["subject_image"]["message"] == "is required"


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"a string"'])
def test_a_body_that_is_not_a_json_object_is_a_422(api: httpx.Client, body: str) -> None:
    response = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert "body" in fields_of(response)


def test_unsupported_content_type_is_a_415(api: httpx.Client) -> None:
    response = api.post("/v1/jobs", content="prompt=x", headers={"content-type": "text/plain"})
    assert response.status_code == 415


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_both_create_routes_negotiate_alike_with_the_key_checked_first(
    api: httpx.Client, services: Services, path: str
) -> None:
    plain = {"content-type": "text/plain", "Idempotency-Key": f"k-{uuid.uuid4()}"}

    refused = api.post(path, content="x", headers=plain)
    anonymous = httpx.post(f"{services.api}{path}", content="x", headers=plain)

    assert refused.status_code == 415
    assert refused.json()["error"]["code"] == "unsupported_media_type"
    assert anonymous.status_code == 401


def test_multipart_upload_is_accepted_and_stored_as_the_subject(
    api: httpx.Client, tenant: TenantKey
) -> None:
    response = api.post(
        "/v1/jobs",
        data={
            "prompt": "soft window light",
            "light_source": "Left Light",
            "steps": "30",
            "metadata": '{"sku": "A"}',
        },
        files={"subject_image": ("shoe.png", product_png(), "image/png")},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["steps"] == 30 and job["metadata"] == {"sku": "A"}
    assert job["subject_image"].startswith(f"s3://relightq-test/inputs/{tenant.id}/")


def test_multipart_without_a_file_or_with_bad_fields_names_them(
    api: httpx.Client, tenant: TenantKey
) -> None:
    response = api.post(
        "/v1/jobs",
        data={"prompt": "x", "cfg": "high", "metadata": "{"},
        files={"unrelated": ("a.txt", b"x", "text/plain")},
    )
    assert set(fields_of(response)) == {"subject_image", "cfg", "metadata"}
    assert job_count(tenant) == 0


def test_an_upload_that_is_not_an_image_is_a_422_naming_subject_image(
    api: httpx.Client, tenant: TenantKey
) -> None:
    response = api.post(
        "/v1/jobs",
        data={"prompt": "x"},
        files={"subject_image": ("a.png", b"GIF89a not really", "image/png")},
    )
    assert "subject_image" in fields_of(response)
    assert job_count(tenant) == 0


def test_an_oversized_upload_is_a_413_and_nothing_is_stored(
    api: httpx.Client, tenant: TenantKey
) -> None:
    big = b"\x89PNG" + b"\0" * (2 * 1024 * 1024 + 10)  # above RELIGHTQ_MAX_UPLOAD_BYTES
    response = api.post(
        "/v1/jobs", data={"prompt": "x"}, files={"subject_image": ("a.png", big, "image/png")}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert job_count(tenant) == 0


def test_an_oversized_body_is_a_413_before_it_is_read(api: httpx.Client) -> None:
    huge = b"{" + b" " * (3 * 1024 * 1024 + 10) + b"}"  # above RELIGHTQ_MAX_REQUEST_BYTES
    response = api.post("/v1/jobs", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_an_s3_subject_in_relightqs_bucket_outside_the_tenant_is_refused(
    api: httpx.Client, make_tenant: Callable[[], TenantKey]
) -> None:
    other = make_tenant()
    uri = f"s3://relightq-test/inputs/{other.id}/x/subject.png"
    assert "subject_image" in fields_of(
        api.post("/v1/jobs", json={"prompt": "x", "subject_image": uri})
    )
    customer = api.post("/v1/jobs", json={"prompt": "x", "subject_image": "s3://shop/a.png"})
    assert customer.status_code == 202


def test_listing_pages_with_a_cursor_and_filters_by_status(api: httpx.Client) -> None:
    ids = [
        api.post("/v1/jobs", json={"prompt": f"p{i}", "subject_image": URL}).json()["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    with session_scope() as session:  # a final status no worker will change
        session.execute(update(Job).where(Job.id.in_(ids[:2])).values(status=JobStatus.CANCELLED))
    cancelled = api.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [item["id"] for item in cancelled] == list(reversed(ids[:2]))
    assert api.get("/v1/jobs", params={"status": "succeeded"}).json()["items"] == []


def test_bad_list_parameters_are_422s_naming_them(api: httpx.Client) -> None:
    assert "status" in fields_of(api.get("/v1/jobs", params={"status": "done"}))
    assert "cursor" in fields_of(api.get("/v1/jobs", params={"cursor": "garbage!"}))
    forged = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode()  # parser-deep
    assert "cursor" in fields_of(api.get("/v1/jobs", params={"cursor": forged}))
    assert "limit" in fields_of(api.get("/v1/jobs", params={"limit": 0}))
    assert api.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert "job_id" in fields_of(api.get("/v1/jobs/not-a-uuid"))


def test_one_tenant_never_sees_anothers_jobs(
    services: Services, api: httpx.Client, make_tenant: Callable[[], TenantKey]
) -> None:
    job_id = api.post("/v1/jobs", json={"prompt": "x", "subject_image": URL}).json()["id"]
    intruder = make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": intruder.key}) as other:
        assert other.get(f"/v1/jobs/{job_id}").status_code == 404
        assert other.get("/v1/jobs").json()["items"] == []


@pytest.mark.parametrize(
    "headers", [{}, {"x-api-key": "rq_wrong"}, {"Authorization": "Bearer rq_wrong"}]
)
def test_every_v1_endpoint_needs_a_valid_key(services: Services, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=services.api, headers=headers) as anonymous:
        for response in (
            anonymous.get("/v1/jobs"),
            anonymous.get(f"/v1/jobs/{uuid.uuid4()}"),
            anonymous.post("/v1/jobs", json={"prompt": "x", "subject_image": URL}),
        ):
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
