"""Every API request leaves one structured line naming the tenant it was served for."""

from __future__ import annotations

import io
import json

import httpx

from relightq.logs import configure
from tests.conftest import Services, TenantKey


def test_an_api_request_is_logged_once_with_its_tenant_and_status(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    buffer = io.StringIO()
    configure("INFO", "json", buffer)  # the autouse fixture removes it afterwards

    api.get("/v1/jobs")
    httpx.get(f"{services.api}/v1/jobs")  # no key: 401, no tenant
    httpx.get(f"{services.api}/healthz")  # probes are DEBUG

    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    api_lines = [line for line in lines if line["logger"] == "relightq.api"]
    requests = {
        line["message"].rsplit(" ", 2)[0]: line for line in api_lines if line["level"] == "INFO"
    }
    assert list(requests) == ["GET /v1/jobs 200", "GET /v1/jobs 401"]
    assert requests["GET /v1/jobs 200"]["tenant_id"] == str(tenant.id)
    assert "tenant_id" not in requests["GET /v1/jobs 401"]
    assert tenant.key not in buffer.getvalue()
