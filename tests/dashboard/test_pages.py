"""The dashboard over plain HTTP: sessions, cookies and forms that cannot be forged."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest

from relightq.throttle.service import get_fleet
from tests.batches.helpers import wait_batch
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
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    # The simulator fixture lets earlier tests' requests end first: one collected now
    # would record the simulator's balance over this one.
    get_fleet().record_credits(Decimal("42.5"))
    with logged_in(services, tenant.key) as client:
        page = client.get("/dashboard/throttle").text
    # During a pause the balance may be a probe interval old: the page says how old. The
    # amount is exact: no places added or rounded away.
    assert re.search(r">42\.5 <span[^>]*>as Segmind last reported it, \d{4}-\d\d-\d\d ", page)


def batch_of(api: httpx.Client, good: int, bad: int) -> str:
    """A batch of ``good`` photos that relight and ``bad`` whose subject is missing (the
    upstream cannot fetch it: a permanent failure), run to its end."""
    _, photo = shop_image("dashboard/state.png")
    missing = photo.replace("dashboard/state.png", f"dashboard/missing-{uuid.uuid4().hex}.png")
    items = [{"subject_image": photo}] * good + [{"subject_image": missing}] * bad
    answer = api.post("/v1/batches", json={"defaults": {"prompt": "x"}, "items": items})
    assert answer.status_code == 202, answer.text
    batch_id = str(answer.json()["id"])
    done = wait_batch(api, batch_id, "completed")
    assert (done["counts"]["succeeded"], done["counts"]["failed"]) == (good, bad)
    return batch_id


def shown_state(page: str, batch_id: str) -> tuple[str, str]:
    """(CSS class, text) of a batch's status on the batches list."""
    row = re.search(rf'<tr data-batch="{batch_id}">(.*?)</tr>', page, re.S)
    assert row, page
    status = re.search(r'class="status status-([\w-]+)" data-field="status">([^<]*)<', row[1])
    assert status, row[1]
    return status[1], status[2]


@pytest.mark.usefixtures("celery_worker")
def test_a_batch_whose_items_all_failed_is_failed_and_a_partly_failed_one_says_so(
    services: Services, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    failed, mixed, fine = batch_of(api, 0, 4), batch_of(api, 2, 2), batch_of(api, 1, 0)
    with logged_in(services, tenant.key) as client:
        listed = client.get("/dashboard/batches").text
        page = client.get(f"/dashboard/batches/{failed}").text
        live = client.get("/dashboard/progress.json", params={"ids": f"{failed},{mixed}"}).json()

    assert shown_state(listed, failed) == ("failed", "failed")
    assert shown_state(listed, mixed) == ("partly-failed", "partly failed")
    assert shown_state(listed, fine) == ("completed", "completed")
    assert 'class="status status-failed" data-field="status">failed<' in page
    # The live refresh, which rewrites the status every 2 s, says the same.
    assert (live[failed]["state"], live[failed]["state_class"]) == ("failed", "failed")
    assert (live[mixed]["state"], live[mixed]["state_class"]) == ("partly failed", "partly-failed")
    assert live[failed]["status"] == "completed"  # the API's word is unchanged
    css = re.search(r"\.status-failed[^{]*\{([^}]*)\}", listed)
    mixed_css = re.search(r"\.status-partly-failed \{([^}]*)\}", listed)
    assert css and "var(--bad)" in css[1]
    assert mixed_css and "var(--bad)" not in mixed_css[1] and "var(--ok)" not in mixed_css[1]


UTC_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


@pytest.mark.usefixtures("celery_worker")
def test_attempts_are_numbered_in_log_order_across_a_retry_with_full_utc_times(
    services: Services, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    _, url = shop_image("dashboard/retried.png")
    job_id = api.post("/v1/jobs", json={"prompt": "x", "subject_image": url}).json()["id"]
    first = wait_for(api, job_id, "failed")
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    assert api.post(f"/v1/jobs/{job_id}/retry").status_code == 200
    job = wait_for(api, job_id, "succeeded", "failed")
    with logged_in(services, tenant.key) as client:
        page = client.get(f"/dashboard/jobs/{job_id}").text
        listed = client.get("/dashboard/jobs").text

    calls = len(first["attempt_log"]) + 1  # the retry's one call, which succeeded
    assert job["status"] == "succeeded" and len(job["attempt_log"]) == calls
    # The retry reset the job's attempt counter; the log's numbers do not start over.
    assert [a["number"] for a in job["attempt_log"]] == list(range(1, calls + 1))
    table = re.search(r'<table id="attempts">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert table
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td>", table[1])
    assert [int(number) for number, _ in rows] == list(range(1, calls + 1))
    assert all(re.fullmatch(UTC_TIME, started) for _, started in rows), rows
    assert re.search(rf"<td>{UTC_TIME}</td></tr>", listed)
