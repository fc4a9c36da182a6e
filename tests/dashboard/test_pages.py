"""The dashboard over plain HTTP: sessions, cookies and forms that cannot be forged."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import Services, TenantKey


@contextmanager
def logged_in(services: Services, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=services.api) as client:
        answer = client.post("/dashboard/login", data={"api_key": key})
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/batches"
        yield client


def test_the_session_cookie_is_httponly_strict_and_not_the_api_key(
    services: Services, tenant: TenantKey
) -> None:
    answer = httpx.post(f"{services.api}/dashboard/login", data={"api_key": tenant.key})

    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert tenant.key not in cookie


def test_pages_need_a_session(services: Services) -> None:
    for path in ("/dashboard/batches", "/dashboard/jobs", "/dashboard/throttle"):
        answer = httpx.get(f"{services.api}{path}")
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login"


def test_a_form_without_the_sessions_csrf_token_is_refused(
    services: Services, operator: TenantKey
) -> None:
    with logged_in(services, operator.key) as client:
        forged = client.post("/dashboard/throttle/pause", data={"reason": "x"})
        page = client.get("/dashboard/throttle").text

    assert forged.status_code == 403
    assert 'id="fleet-state">running' in page
    assert re.search(r'name="csrf_token" value="[^"]{20,}"', page)


@pytest.mark.parametrize("path", ["/dashboard/throttle/pause", "/dashboard/throttle/resume"])
def test_only_operators_may_pause_or_resume(
    services: Services, tenant: TenantKey, path: str
) -> None:
    with logged_in(services, tenant.key) as client:
        page = client.get("/dashboard/throttle").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        answer = client.post(path, data={"csrf_token": token.group(1)})
    assert answer.status_code == 403


def test_logging_out_ends_the_session(services: Services, tenant: TenantKey) -> None:
    with logged_in(services, tenant.key) as client:
        page = client.get("/dashboard/batches").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        client.post("/dashboard/logout", data={"csrf_token": token.group(1)})
        assert client.get("/dashboard/batches").status_code == 303
