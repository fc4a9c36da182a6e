"""Credits on the dashboard: exact amounts, pictures reused instead of bought, and the
low-balance warning.

Jobs and batches are written straight into PostgreSQL (tests.dashboard.rows); the pages
are read over plain HTTP.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

import pytest

from relightq.jobs.models import JobStatus
from relightq.settings import get_settings
from tests.conftest import Services, TenantKey
from tests.dashboard.rows import batch_row, job_row, set_upstream
from tests.dashboard.test_pages import logged_in


def listed_row(page: str, batch_id: str) -> str:
    """A batch's row on the batches list."""
    row = re.search(rf'<tr data-batch="{batch_id}">(.*?)</tr>', page, re.S)
    assert row, page
    return row[1]


def test_a_batch_shows_exact_credits_saved_and_reused_items(
    services: Services, tenant: TenantKey
) -> None:
    batch_id = batch_row(
        tenant,
        3,
        credits_used=Decimal("0.333"),
        credit_budget=Decimal("0.37"),
        reused=2,
        credits_saved=Decimal("0.074"),
    )
    with logged_in(services, tenant.key) as client:
        page = client.get(f"/dashboard/batches/{batch_id}").text
        listed = listed_row(client.get("/dashboard/batches").text, batch_id)
        live = client.get("/dashboard/progress.json", params={"ids": batch_id}).json()[batch_id]

    # Exact, not rounded to two places (0.33) and not a float's digits (0.33299999...).
    assert '<span data-field="credits">0.333</span> of a budget of 0.37' in page
    assert '<b data-field="reused">2</b> <span class="muted">(copies of identical' in page
    assert '<b data-field="credits_saved">0.074</b> credits saved' in page
    assert '<td data-field="credits">0.333</td>' in listed
    assert '<span data-field="credits_saved">0.074</span>' in listed
    assert '<span data-field="reused">2</span> reused' in listed
    # The live refresh rewrites these fields every 2 s: it must say the same.
    assert (live["credits"], live["credits_saved"], live["reused"]) == ("0.333", "0.074", 2)


def test_a_batch_with_reuse_off_says_so(services: Services, tenant: TenantKey) -> None:
    batch_id = batch_row(tenant, 1, reuse=False, credits_used=Decimal("0.037"))
    with logged_in(services, tenant.key) as client:
        page = client.get(f"/dashboard/batches/{batch_id}").text

    reuse = re.search(r'<dd id="batch-reuse">(.*?)</dd>', page)
    assert reuse and "off" in reuse[1] and 'data-field="reused"' not in reuse[1]


def test_a_reused_job_links_to_its_source_and_shows_the_credits_saved(
    services: Services, tenant: TenantKey
) -> None:
    source = job_row(tenant, credits_used=Decimal("0.037"))
    copy = job_row(tenant, reused_from=uuid.UUID(source), credits_saved=Decimal("0.037"))
    with logged_in(services, tenant.key) as client:
        copy_page = client.get(f"/dashboard/jobs/{copy}").text
        source_page = client.get(f"/dashboard/jobs/{source}").text

    assert '<dd id="job-credits">0</dd>' in copy_page  # the copy called nobody
    reused = re.search(r'<dd id="job-reused">(.*?)</dd>', copy_page)
    assert reused, copy_page
    assert f'Reused from <a href="/dashboard/jobs/{source}">{source}</a>' in reused[1]
    assert '<b id="job-credits-saved">0.037</b> credits saved' in reused[1]
    assert '<dd id="job-credits">0.037</dd>' in source_page
    assert 'id="job-reused"' not in source_page and 'id="job-reuse-off"' not in source_page


def test_a_job_that_asked_for_a_new_picture_says_reuse_was_off(
    services: Services, tenant: TenantKey
) -> None:
    job_id = job_row(tenant, reuse=False, credits_used=Decimal("0.074"))
    with logged_in(services, tenant.key) as client:
        page = client.get(f"/dashboard/jobs/{job_id}").text

    assert '<dd id="job-credits">0.074</dd>' in page
    assert re.search(r'<dd id="job-reuse-off">off: a new picture was asked for', page)


def test_a_waiting_jobs_cap_reason_is_shown(services: Services, tenant: TenantKey) -> None:
    reason = "tenant monthly credit cap reached (1.998 of 2 credits used in 2026-12, 0 reserved)"
    job_id = job_row(tenant, status=JobStatus.WAITING, finished_at=None, waiting_reason=reason)
    with logged_in(services, tenant.key) as client:
        page = client.get(f"/dashboard/jobs/{job_id}").text

    assert f'id="job-status">waiting</span> — {reason}' in page


@pytest.mark.usefixtures("low_balance")
def test_the_fleet_page_warns_of_a_low_balance_with_the_threshold(
    services: Services, tenant: TenantKey
) -> None:
    with logged_in(services, tenant.key) as client:
        low = client.get("/dashboard/throttle").text
        set_upstream(credits_low_since=None)  # a top-up reported
        topped_up = client.get("/dashboard/throttle").text

    assert re.search(r'<dd id="credits">9\.963 <span', low)
    warning = re.search(r'<div class="card warning" id="low-balance"[^>]*>(.*?)</div>', low, re.S)
    assert warning, low
    assert re.search(
        r"Low balance:</b> Segmind's credits fell below 10 \(<code>RELIGHTQ_CREDIT_WARN_BELOW"
        r"</code>\) at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
        warning[1],
    )
    assert 'id="low-balance"' not in topped_up


@pytest.mark.usefixtures("low_balance")
def test_no_warning_while_the_threshold_is_unset(
    services: Services, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unset, nothing clears the mark a past crossing left: it would warn forever.
    monkeypatch.setattr(get_settings(), "credit_warn_below", None)
    with logged_in(services, tenant.key) as client:
        page = client.get("/dashboard/throttle").text

    assert 'id="low-balance"' not in page and re.search(r'<dd id="credits">9\.963 <span', page)
