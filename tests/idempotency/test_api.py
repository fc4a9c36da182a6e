"""Idempotency-Key on POST /v1/jobs and /v1/batches, with Stripe's semantics."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from relightq.db import session_scope, utcnow
from relightq.idempotency.models import IdempotencyKey
from relightq.jobs.models import Job
from tests.batches.helpers import csv_file
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image
from tests.support.images import product_png

JOB = {"prompt": "x", "subject_image": "https://example.com/a.png"}


def jobs_of(tenant: TenantKey) -> int:
    with session_scope() as session:
        return int(
            session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id))
            or 0
        )


def post(api: httpx.Client, key: str, body: dict[str, Any], path: str = "/v1/jobs") -> Any:
    return api.post(path, json=body, headers={"Idempotency-Key": key})


def test_the_same_key_and_body_get_the_first_answer_and_one_job(
    api: httpx.Client, tenant: TenantKey
) -> None:
    key = str(uuid.uuid4())
    first = post(api, key, JOB)
    again = post(api, key, JOB)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert jobs_of(tenant) == 1


@pytest.mark.usefixtures("celery_worker")
def test_a_replay_of_a_request_that_waited_gets_the_final_answer_it_got(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("idempotency/waited.png")
    body = {"prompt": "x", "subject_image": url}
    headers = {"Idempotency-Key": str(uuid.uuid4()), "Prefer": "wait=20"}

    first = api.post("/v1/jobs", json=body, headers=headers)
    again = api.post("/v1/jobs", json=body, headers=headers)

    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "succeeded"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert jobs_of(tenant) == 1


def test_the_same_key_with_a_different_body_is_refused(
    api: httpx.Client, tenant: TenantKey
) -> None:
    key = str(uuid.uuid4())
    post(api, key, JOB)

    other = post(api, key, {**JOB, "prompt": "something else"})
    elsewhere = post(api, key, {"items": [JOB]}, "/v1/batches")

    for refused in (other, elsewhere):
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error["code"] == "idempotency_key_reused"
        [problem] = error["fields"]
        assert problem["field"] == "Idempotency-Key"
        # The key itself is well formed: what would be accepted is about the request.
        assert problem["allowed"] == (
            "the same endpoint and body as the first request with this key, "
            "or a new key for a different request"
        )
    assert jobs_of(tenant) == 1


def test_keys_are_scoped_per_tenant(
    api: httpx.Client, tenant: TenantKey, make_tenant: Callable[[], TenantKey], services: Services
) -> None:
    key = str(uuid.uuid4())
    mine = post(api, key, JOB).json()["id"]
    other = make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": other.key}) as theirs:
        theirs_id = post(theirs, key, JOB).json()["id"]
    assert mine != theirs_id and jobs_of(tenant) == jobs_of(other) == 1


def test_a_rejected_request_keeps_no_key(api: httpx.Client, tenant: TenantKey) -> None:
    key = str(uuid.uuid4())
    assert post(api, key, {**JOB, "steps": 0}).status_code == 422

    accepted = post(api, key, JOB)

    assert accepted.status_code == 202 and jobs_of(tenant) == 1


def test_concurrent_requests_with_one_key_make_one_job(
    api: httpx.Client, tenant: TenantKey
) -> None:
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(api, key, JOB), range(8)))

    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert jobs_of(tenant) == 1


def test_keys_last_at_least_a_day_and_expired_ones_are_new_again(
    api: httpx.Client, tenant: TenantKey
) -> None:
    key = str(uuid.uuid4())
    first = post(api, key, JOB).json()["id"]
    with session_scope() as session:
        row = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == key)).one()
        assert row.expires_at - row.created_at >= timedelta(hours=24)
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == key)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )

    second = post(api, key, JOB).json()["id"]

    assert second != first and jobs_of(tenant) == 2


def test_multipart_uploads_are_idempotent_by_their_bytes(
    api: httpx.Client, tenant: TenantKey
) -> None:
    key = str(uuid.uuid4())

    def upload(data: bytes) -> httpx.Response:
        return api.post(
            "/v1/jobs",
            data={"prompt": "x"},
            files={"subject_image": ("p.png", data, "image/png")},
            headers={"Idempotency-Key": key},
        )

    first = upload(product_png())
    assert upload(product_png()).json()["id"] == first.json()["id"]
    assert upload(product_png(width=200)).status_code == 422
    assert jobs_of(tenant) == 1


def test_batches_are_idempotent_for_json_and_files(api: httpx.Client, tenant: TenantKey) -> None:
    body = {"defaults": {"prompt": "x"}, "items": [{"subject_image": JOB["subject_image"]}]}
    key = str(uuid.uuid4())
    first = post(api, key, body, "/v1/batches").json()["id"]
    assert post(api, key, body, "/v1/batches").json()["id"] == first

    rows = csv_file([{"subject_image": JOB["subject_image"], "prompt": "x"}])
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    ids = {
        api.post("/v1/batches", files={"file": ("c.csv", rows)}, headers=headers).json()["id"]
        for _ in range(2)
    }
    assert len(ids) == 1
    assert len(api.get("/v1/batches").json()["items"]) == 2
    for batch_id in (first, *ids):
        api.post(f"/v1/batches/{batch_id}/cancel")


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve"])
def test_a_malformed_key_is_a_422(api: httpx.Client, tenant: TenantKey, key: str) -> None:
    response = api.post("/v1/jobs", json=JOB, headers={b"Idempotency-Key": key.encode()})

    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "Idempotency-Key"
    assert jobs_of(tenant) == 0
