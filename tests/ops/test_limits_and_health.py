"""Rate limits per API key, health and readiness, and the Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relightq.serving import free_port
from relightq.storage import get_storage
from relightq.tenants import ratelimit
from relightq.throttle.service import get_fleet
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import submit_photo, wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.mark.usefixtures("low_rate_limit")
def test_each_api_key_gets_its_own_rate_limit_then_a_429_with_retry_after(
    services: Services, make_tenant: Callable[[], TenantKey]
) -> None:
    first, second = make_tenant(), make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": first.key}) as client:
        answers = [client.get("/v1/jobs").status_code for _ in range(5)]
        refused = client.get("/v1/jobs")
    with httpx.Client(base_url=services.api, headers={"x-api-key": second.key}) as client:
        other = client.get("/v1/jobs")

    assert answers == [200] * 5
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert other.status_code == 200


@contextmanager
def dashboard_session(services: Services, tenant: TenantKey) -> Iterator[httpx.Client]:
    """A browser logged in to the dashboard with the tenant's key (the cookie holds it)."""
    with httpx.Client(base_url=services.api) as browser:
        login = browser.post("/dashboard/login", data={"api_key": tenant.key})
        assert login.status_code == 303, login.text
        yield browser


@pytest.mark.usefixtures("low_rate_limit")
def test_dashboard_pages_count_against_the_tenants_rate_limit_across_its_sessions(
    services: Services, make_tenant: Callable[[], TenantKey]
) -> None:
    first, second = make_tenant(), make_tenant()
    with dashboard_session(services, first) as tab, dashboard_session(services, first) as other:
        answers = [tab.get("/dashboard/batches").status_code for _ in range(3)]
        answers += [other.get("/dashboard/jobs").status_code for _ in range(2)]
        refused = tab.get("/dashboard/progress.json")
        refused_too = other.get("/dashboard/batches")
    with dashboard_session(services, second) as stranger:
        unaffected = stranger.get("/dashboard/batches")

    assert answers == [200] * 5
    assert refused.status_code == refused_too.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "rate limit" in refused_too.text
    assert unaffected.status_code == 200


def test_while_redis_is_away_requests_are_served_without_the_rate_limit(
    services: Services, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real limiter on a port nothing listens on: what the API sees when Redis is down.
    dead = ratelimit.limiter_for(f"redis://127.0.0.1:{free_port()}/0", "5/minute")
    monkeypatch.setattr(ratelimit, "_limiter", lambda: dead)

    answers = [api.get("/v1/jobs").status_code for _ in range(7)]

    assert answers == [200] * 7  # fail open: PostgreSQL holds the jobs, not Redis


def test_while_redis_is_away_the_fleet_state_is_a_503_with_retry_after(
    api: httpx.Client,
) -> None:
    fleet = get_fleet()
    live = fleet._redis  # type: ignore[attr-defined]
    # The same fleet, talking to a port nothing listens on: Redis down, as the API sees it.
    dead = redis.Redis(port=free_port(), socket_timeout=2, retry=Retry(NoBackoff(), 0))
    object.__setattr__(fleet, "_redis", dead)
    try:
        response = api.get("/v1/throttle")
    finally:
        object.__setattr__(fleet, "_redis", live)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "redis_unavailable"
    assert response.headers["retry-after"] == "5"


def test_healthz_and_readyz(services: Services) -> None:
    assert httpx.get(f"{services.api}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{services.api}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "redis": "ok", "storage": "ok"}


def test_readyz_names_what_is_unreachable(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_storage(), "bucket", "bucket-that-does-not-exist")

    ready = httpx.get(f"{services.api}/readyz")

    assert ready.status_code == 503
    assert ready.json()["storage"] == "StorageError" and ready.json()["database"] == "ok"


def test_metrics_show_jobs_upstream_calls_throttle_queue_and_credits(
    services: Services, api: httpx.Client, simulator: httpx.Client
) -> None:
    wait_for(api, submit_photo(api, "catalog/metrics.png"), "succeeded")

    scrape = httpx.get(f"{services.api}/metrics")  # no redirect to /metrics/
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text

    for needle in (
        'relightq_jobs{status="succeeded"}',
        'relightq_upstream_calls_total{status="200"}',
        "relightq_upstream_call_seconds_bucket",
        "relightq_throttle_paused 0.0",
        'relightq_queue_depth{queue="relight"}',
        "relightq_credits_remaining",
        'relightq_webhook_deliveries{status="delivered"}',
        "relightq_upstream_calls_in_flight",
    ):
        assert needle in text, needle
    succeeded = next(
        line for line in text.splitlines() if line.startswith('relightq_jobs{status="succeeded"}')
    )
    assert float(succeeded.split()[-1]) >= 1
