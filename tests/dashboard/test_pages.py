"""The dashboard over plain HTTP: sessions, cookies and forms that cannot be forged."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from relightq.throttle.service import get_fleet
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image, wait_for


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
    assert forged.headers["content-type"].startswith("text/html")  # a page, not API JSON
    assert "stale" in forged.text
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


@pytest.mark.usefixtures("celery_worker")
def test_the_jobs_page_shows_each_jobs_status_and_filters_by_every_status(
    services: Services, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    _, url = shop_image("dashboard/status.png")
    job_id = api.post("/v1/jobs", json={"prompt": "x", "subject_image": url}).json()["id"]
    wait_for(api, job_id, "succeeded")
    with logged_in(services, tenant.key) as client:
        everything = client.get("/dashboard/jobs").text
        succeeded = client.get("/dashboard/jobs?status=succeeded").text
        failed = client.get("/dashboard/jobs?status=failed").text

    assert re.search(r'class="status status-succeeded">succeeded<', everything)
    assert job_id in succeeded and job_id not in failed
    assert 'href="?status=queued"' in everything and 'href="?status=cancelled"' in everything


def test_errors_are_pages_another_tenants_things_and_bad_ids_are_not_found(
    services: Services, tenant: TenantKey, make_tenant: Any
) -> None:
    other = make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": other.key}) as theirs:
        body = {"prompt": "x", "subject_image": "https://example.com/a.png", "priority": 0}
        their_job = theirs.post("/v1/jobs", json=body).json()["id"]
    with logged_in(services, tenant.key) as client:
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/dashboard/jobs").text)
        assert token
        retry = client.post(f"/dashboard/jobs/{their_job}/retry", data={"csrf_token": token[1]})
        malformed = client.get("/dashboard/batches/not-a-uuid")
        manifest = client.get(f"/dashboard/batches/{uuid.uuid4()}/results.csv")

    for answer in (retry, malformed, manifest):
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")
        assert "<h1>Not found</h1>" in answer.text


def test_the_batches_page_pages_through_older_batches(
    services: Services, tenant: TenantKey, api: httpx.Client
) -> None:
    item = {"subject_image": "https://example.com/a.png", "priority": 0}
    ids = [
        api.post("/v1/batches", json={"defaults": {"prompt": "x"}, "items": [item]}).json()["id"]
        for _ in range(52)
    ]
    with logged_in(services, tenant.key) as client:
        first = client.get("/dashboard/batches").text
        older = re.search(r'href="\?cursor=([^"]+)" id="older"', first)
        assert older
        second = client.get(f"/dashboard/batches?cursor={older[1]}").text

    assert ids[-1] in first and ids[0] not in first
    assert ids[0] in second and ids[1] in second
    # Only the first page shows the newest batch, so only it watches for newer ones.
    assert 'id="new-batches"' in first and 'id="new-batches"' not in second


def test_the_batches_page_learns_of_batches_committed_after_it_was_rendered(
    services: Services, tenant: TenantKey, api: httpx.Client
) -> None:
    item = {"subject_image": "https://example.com/a.png", "priority": 0}
    api.post("/v1/batches", json={"defaults": {"prompt": "x"}, "items": [item]})
    with logged_in(services, tenant.key) as client:
        page = client.get("/dashboard/batches").text
        known = re.search(r'id="new-batches" data-known="(\d+)"', page)
        assert known
        before = client.get("/dashboard/progress.json", params={"known": known[1]}).json()
        # Counted, not compared by created_at: a big upload committed late still shows.
        api.post("/v1/batches", json={"defaults": {"prompt": "x"}, "items": [item]})
        after = client.get("/dashboard/progress.json", params={"known": known[1]}).json()
    assert before["newer_batches"] == 0 and after["newer_batches"] == 1


def test_the_fleet_page_says_when_segmind_last_reported_the_credits(
    services: Services, tenant: TenantKey
) -> None:
    get_fleet().record_credits(42.5)
    with logged_in(services, tenant.key) as client:
        page = client.get("/dashboard/throttle").text
    # During a pause the balance may be a probe interval old: the page says how old.
    assert re.search(r"42\.500 <span[^>]*>as Segmind last reported it, \d{4}-\d\d-\d\d ", page)
