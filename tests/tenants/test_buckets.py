"""Bucket grants: a tenant names only buckets an operator granted it, since relightq
reads and writes every other bucket with its own S3 credentials."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from relightq.cli import app
from relightq.db import session_scope
from relightq.jobs.models import Job
from relightq.settings import get_settings
from tests.conftest import Services, TenantKey

runner = CliRunner()
PRIVATE = "acme-private-photos"  # granted to acme alone


def client_for(services: Services, tenant: TenantKey) -> httpx.Client:
    return httpx.Client(base_url=services.api, headers={"x-api-key": tenant.key})


def jobs_of(tenant: TenantKey) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(Job.tenant_id == tenant.id)) or 0)


@pytest.fixture
def acme(make_tenant: Callable[[], TenantKey]) -> TenantKey:
    tenant = make_tenant()
    granted = runner.invoke(app, ["buckets", "grant", tenant.name, PRIVATE])
    assert granted.exit_code == 0, granted.output
    return tenant


def test_another_tenants_bucket_is_refused_naming_the_field_and_storing_nothing(
    services: Services, acme: TenantKey, make_tenant: Callable[[], TenantKey]
) -> None:
    intruder = make_tenant()
    subject = f"s3://{PRIVATE}/secret/SKU-1.png"
    with client_for(services, intruder) as beta:
        job = beta.post("/v1/jobs", json={"prompt": "x", "subject_image": subject})
        prefix = beta.post(
            "/v1/batches", json={"source": f"s3://{PRIVATE}/", "defaults": {"prompt": "x"}}
        )
        output = beta.post(
            "/v1/batches",
            json={
                "items": [{"subject_image": "https://example.com/a.png", "prompt": "x"}],
                "output_prefix": f"s3://{PRIVATE}/relit/",
            },
        )

    for answer, field in ((job, "subject_image"), (prefix, "source"), (output, "output_prefix")):
        assert answer.status_code == 422, answer.text
        [problem] = answer.json()["error"]["fields"]
        assert problem["field"] == field
        assert f"relightq buckets grant <tenant> {PRIVATE}" in problem["message"]
    assert jobs_of(intruder) == 0


def test_a_granted_bucket_is_accepted_until_the_grant_is_revoked(
    services: Services, acme: TenantKey
) -> None:
    body = {"prompt": "x", "subject_image": f"s3://{PRIVATE}/SKU-1.png"}
    with client_for(services, acme) as client:
        accepted = client.post("/v1/jobs", json=body)
        client.post(f"/v1/jobs/{accepted.json()['id']}/cancel")  # no such object to fetch
        listed = runner.invoke(app, ["buckets", "list"])
        revoked = runner.invoke(app, ["buckets", "revoke", acme.name, PRIVATE])
        refused = client.post("/v1/jobs", json=body)

    assert accepted.status_code == 202, accepted.text
    assert [acme.name, PRIVATE] in [line.split() for line in listed.output.splitlines()]
    assert revoked.exit_code == 0, revoked.output
    assert refused.status_code == 422


def test_keys_create_can_grant_buckets_with_the_key(services: Services) -> None:
    created = runner.invoke(
        app, ["keys", "create", "--tenant", "grants-at-birth", "--bucket", "birth-photos"]
    )
    assert created.exit_code == 0, created.output
    key = created.output.strip()
    with httpx.Client(base_url=services.api, headers={"x-api-key": key}) as client:
        answer = client.post(
            "/v1/jobs", json={"prompt": "x", "subject_image": "s3://birth-photos/a.png"}
        )
        client.post(f"/v1/jobs/{answer.json()['id']}/cancel")
    assert answer.status_code == 202, answer.text


@pytest.fixture
def grants_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RELIGHTQ_REQUIRE_BUCKET_GRANTS", "false")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_single_tenant_deployment_may_turn_grants_off(
    services: Services, make_tenant: Callable[[], TenantKey], grants_off: None
) -> None:
    with client_for(services, make_tenant()) as client:
        answer = client.post(
            "/v1/jobs", json={"prompt": "x", "subject_image": "s3://anything-at-all/a.png"}
        )
        client.post(f"/v1/jobs/{answer.json()['id']}/cancel")
    assert answer.status_code == 202, answer.text
