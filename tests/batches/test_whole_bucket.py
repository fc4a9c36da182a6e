"""A batch may list a whole bucket (``s3://bucket/``): the empty prefix is a prefix too."""

from __future__ import annotations

import uuid

import httpx

from relightq.db import session_scope
from relightq.settings import get_settings
from relightq.tenants.models import Tenant
from relightq.tenants.service import grant_bucket
from tests.api.test_jobs import fields_of
from tests.conftest import TenantKey, s3_client
from tests.support.images import product_png


def test_a_batch_over_a_whole_foreign_bucket_lists_every_image_in_it(
    api: httpx.Client, tenant: TenantKey
) -> None:
    bucket = f"shop-{uuid.uuid4().hex[:12]}"
    with session_scope() as session:
        grant_bucket(session, session.get_one(Tenant, tenant.id), bucket)
    s3 = s3_client()
    s3.create_bucket(Bucket=bucket)
    for key in ("a.png", "shoes/b.png", "notes.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=product_png())

    response = api.post(
        "/v1/batches", json={"source": f"s3://{bucket}/", "defaults": {"prompt": "x"}}
    )

    assert response.status_code == 202, response.text
    assert response.json()["total"] == 2  # the text file is not an image


def test_the_whole_of_relightqs_own_bucket_is_outside_the_tenants_area(
    api: httpx.Client,
) -> None:
    bucket = get_settings().s3_bucket

    response = api.post(
        "/v1/batches", json={"source": f"s3://{bucket}/", "defaults": {"prompt": "x"}}
    )

    problem = fields_of(response)["source"]
    assert "outside your own inputs and outputs" in problem["message"]
