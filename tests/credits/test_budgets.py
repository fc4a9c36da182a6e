"""Exact budgets at the worker: every call's price is reserved before the call, so a
tenant's monthly cap parks jobs as waiting (never failed, no attempt used) and they go on
when the cap is raised.

Real parts: the API, the suite's Celery worker, the simulator over HTTP, PostgreSQL.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import pytest

from relightq.credits.caps import set_monthly_cap
from relightq.db import session_scope
from tests.conftest import TenantKey
from tests.credits.test_reuse import photo, put_object
from tests.jobs.test_end_to_end import wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_a_monthly_cap_parks_what_does_not_fit_and_a_raise_lets_it_go_on(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    with session_scope() as session:
        set_monthly_cap(session, tenant.name, Decimal("0.074"))  # two images
    subjects = [put_object(f"cap/{uuid.uuid4()}/{n}.png", photo(40 + n)) for n in range(4)]
    ids = [
        api.post("/v1/jobs", json={"prompt": "x", "subject_image": s}).json()["id"]
        for s in subjects
    ]

    jobs = [wait_for(api, job_id, "succeeded", "waiting", timeout=30) for job_id in ids]

    done = [job for job in jobs if job["status"] == "succeeded"]
    parked = [job for job in jobs if job["status"] == "waiting"]
    assert (len(done), len(parked)) == (2, 2)
    for job in parked:
        assert job["waiting_reason"].startswith("tenant monthly credit cap reached")
        assert job["attempts"] == 0 and job["error"] is None
    assert simulator.get("/admin/stats").json()["calls"] == 2
    mine = api.get("/v1/throttle").json()["tenant_credits"]
    assert (mine["monthly_cap"], mine["spent_this_month"], mine["reserved"]) == (0.074, 0.074, 0)

    with session_scope() as session:
        set_monthly_cap(session, tenant.name, Decimal("0.148"))

    finished = [wait_for(api, job["id"], "succeeded", "failed", timeout=30) for job in parked]
    assert [job["status"] for job in finished] == ["succeeded", "succeeded"]
    assert simulator.get("/admin/stats").json()["calls"] == 4
    assert api.get("/v1/throttle").json()["tenant_credits"]["spent_this_month"] == 0.148


def test_a_picture_already_made_is_copied_even_past_the_cap(
    api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    subject = put_object(f"cap/{uuid.uuid4()}/a.png", photo(50))
    first = api.post("/v1/jobs", json={"prompt": "x", "subject_image": subject}).json()["id"]
    assert wait_for(api, first, "succeeded", "failed")["status"] == "succeeded"
    with session_scope() as session:
        set_monthly_cap(session, tenant.name, Decimal("0.037"))  # spent in full

    again = api.post("/v1/jobs", json={"prompt": "x", "subject_image": subject}).json()["id"]

    copied = wait_for(api, again, "succeeded", "waiting", "failed")
    assert copied["status"] == "succeeded" and copied["reused_from"] == first
    assert simulator.get("/admin/stats").json()["calls"] == 1
