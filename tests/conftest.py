"""Real services for the whole suite: PostgreSQL, Redis, a Celery worker thread, the S3
server (moto over HTTP), the simulator and the API, each over its real protocol."""

from __future__ import annotations

import os

# Settings are read once per process: point them at the test services before any import.
# Two suites may run side by side on one machine when each names its own database and
# Redis db (e.g. RELIGHTQ_TEST_DB=relightq_test_b RELIGHTQ_TEST_REDIS_DB=14).
TEST_DB = os.environ.get("RELIGHTQ_TEST_DB", "relightq_test")
TEST_REDIS_DB = os.environ.get("RELIGHTQ_TEST_REDIS_DB", "15")
os.environ.update(
    RELIGHTQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEST_DB}",
    RELIGHTQ_BROKER_URL=f"redis://127.0.0.1:6379/{TEST_REDIS_DB}",
    RELIGHTQ_S3_BUCKET="relightq-test",
    RELIGHTQ_S3_ACCESS_KEY_ID="testing",
    RELIGHTQ_S3_SECRET_ACCESS_KEY="testing",
    RELIGHTQ_RETRY_BASE_DELAY_SECONDS="0.2",
    RELIGHTQ_RETRY_MAX_DELAY_SECONDS="1",
    RELIGHTQ_MAX_ATTEMPTS="3",
    RELIGHTQ_MAX_CONCURRENT_CALLS="4",
    RELIGHTQ_MAX_CALLS_PER_MINUTE="100000",
    RELIGHTQ_PROBE_INTERVAL_SECONDS="0.5",
    RELIGHTQ_PROBE_MAX_INTERVAL_SECONDS="2",
    RELIGHTQ_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024),
    RELIGHTQ_MAX_REQUEST_BYTES=str(3 * 1024 * 1024),
    # The suite's webhook receivers listen on loopback; everything else private stays blocked.
    RELIGHTQ_OUTBOUND_ALLOW="127.0.0.1",
    RELIGHTQ_WEBHOOK_RETRY_SCHEDULE_SECONDS="[0.3, 0.6, 1.0]",
    RELIGHTQ_WEBHOOK_TIMEOUT_SECONDS="3",
    # Tests poll hard; the rate limit has its own test.
    RELIGHTQ_RATE_LIMIT="1000000/minute",
)
os.environ.pop("RELIGHTQ_SEGMIND_API_KEY", None)
os.environ.pop("RELIGHTQ_LOCAL_STORAGE_DIR", None)

import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import boto3  # noqa: E402
import httpx  # noqa: E402
import psycopg  # noqa: E402
import pytest  # noqa: E402
import redis  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from relightq.db import session_scope  # noqa: E402
from relightq.logs import unconfigure  # noqa: E402
from relightq.migrate import upgrade  # noqa: E402
from relightq.serving import free_port, serve_in_thread  # noqa: E402
from relightq.settings import get_settings  # noqa: E402
from relightq.storage import S3Storage  # noqa: E402
from relightq.tenants.service import (  # noqa: E402
    create_key,
    get_or_create_tenant,
    grant_bucket,
)
from tests.support.caches import reset_caches  # noqa: E402
from tests.support.receiver import Receiver, receiver  # noqa: E402


@pytest.fixture(autouse=True)
def _logging_left_by_cli() -> Iterator[None]:
    """A CLI command run in-process points the root logger at the runner's stream, which
    is closed after the test: drop that handler so later threads' logs do not hit it."""
    yield
    unconfigure()


@dataclass(frozen=True)
class Services:
    """Base URLs of the servers the suite runs."""

    s3: str
    simulator: str
    api: str


@pytest.fixture(scope="session")
def database() -> str:
    """A fresh database built by Alembic, exactly as `relightq migrate` builds production."""
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEST_DB}")
    url = os.environ["RELIGHTQ_DATABASE_URL"]
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def services(database: str) -> Iterator[Services]:
    """Start the S3 server, the simulator and the API; point settings at them."""
    from api.app import create_app
    from relightq.simulator.app import create_app as create_simulator

    redis.Redis.from_url(os.environ["RELIGHTQ_BROKER_URL"]).flushdb()
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    s3_url = f"http://127.0.0.1:{port}"
    os.environ["RELIGHTQ_S3_ENDPOINT_URL"] = s3_url
    try:
        with serve_in_thread(create_simulator()) as simulator_url:
            os.environ["RELIGHTQ_SIMULATOR_URL"] = simulator_url
            reset_caches()
            S3Storage(get_settings()).ensure_bucket()
            with serve_in_thread(create_app()) as api_url:
                yield Services(s3=s3_url, simulator=simulator_url, api=api_url)
    finally:
        moto.stop()


@pytest.fixture(scope="session")
def celery_worker(services: Services) -> Iterator[None]:
    """A real Celery worker (threads pool) consuming from the real Redis broker."""
    from celery.contrib.testing.worker import start_worker

    from worker.tasks import app

    cancel_leftover_jobs()  # jobs of tests that ran without a worker stay unrun
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        queues=["relight", "control", "webhooks"],
    ):
        yield


def s3_client() -> Any:
    """A boto3 client for the S3 server, as a test would use to look at the bucket."""
    return boto3.client(
        "s3",
        endpoint_url=os.environ["RELIGHTQ_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass(frozen=True)
class TenantKey:
    """A tenant and its plaintext API key."""

    id: uuid.UUID
    name: str
    key: str


# The customer buckets the suite's tenants name, granted to each as an operator would
# (`relightq buckets grant`); tests/tenants/test_buckets.py shows an ungranted one refused.
GRANTED_BUCKETS = ("shop-images", "shop", "no-such-bucket")


@pytest.fixture
def make_tenant(database: str) -> Callable[[], TenantKey]:
    """Factory: a new tenant with one API key and the suite's customer buckets."""

    def make() -> TenantKey:
        name = f"tenant-{uuid.uuid4().hex[:8]}"
        with session_scope() as session:
            tenant = get_or_create_tenant(session, name)
            key = create_key(session, tenant)
            for bucket in GRANTED_BUCKETS:
                grant_bucket(session, tenant, bucket)
        return TenantKey(tenant.id, name, key)

    return make


@pytest.fixture
def operator(database: str) -> TenantKey:
    """A tenant allowed to pause and resume the fleet."""
    name = f"operator-{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        tenant = get_or_create_tenant(session, name, operator=True)
        key = create_key(session, tenant)
        for bucket in GRANTED_BUCKETS:
            grant_bucket(session, tenant, bucket)
    return TenantKey(tenant.id, name, key)


@pytest.fixture
def tenant(make_tenant: Callable[[], TenantKey]) -> TenantKey:
    """A tenant for this test."""
    return make_tenant()


@pytest.fixture
def api(services: Services, tenant: TenantKey) -> Iterator[httpx.Client]:
    """An HTTP client for the API, authenticated as ``tenant``."""
    headers = {"Authorization": f"Bearer {tenant.key}"}
    with httpx.Client(base_url=services.api, headers=headers, timeout=30) as client:
        yield client


def cancel_leftover_jobs(*, running: bool = True) -> None:
    """Earlier tests' unfinished jobs must not reach this test's simulator (``running``:
    those a worker holds too)."""
    from sqlalchemy import update

    from relightq.jobs.models import FINAL_STATUSES, Job, JobStatus

    left = [JobStatus.RUNNING, *FINAL_STATUSES] if not running else list(FINAL_STATUSES)
    unfinished = Job.status.not_in(left)
    with session_scope() as session:
        session.execute(update(Job).where(unfinished).values(status=JobStatus.CANCELLED))


def running_jobs() -> int:
    """Jobs a worker holds now (a live lease naming its holder)."""
    from sqlalchemy import func, select

    from relightq.db import utcnow
    from relightq.jobs.models import Job, JobStatus

    held = (
        (Job.status == JobStatus.RUNNING)
        & Job.lease_holder.is_not(None)
        & (Job.lease_expires_at > utcnow())
    )
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Job).where(held)) or 0)


def reset_fleet() -> None:
    """Forget pauses, holds and slots left by an earlier test."""
    client = redis.Redis.from_url(os.environ["RELIGHTQ_BROKER_URL"])
    for key in client.scan_iter("relightq:throttle:*"):
        client.delete(key)
    client.set("relightq:throttle:epoch", 1)  # long warm: no cold-start wait in tests


@pytest.fixture
def simulator(services: Services) -> Iterator[httpx.Client]:
    """An HTTP client for the simulator; its config and stats are reset around each test."""
    defaults = {
        "credits": 100.0,
        "latency": 0.0,
        "fail_500_rate": 0.0,
        "rate_429_rate": 0.0,
        "timeout_rate": 0.0,
        "valid_keys": None,
        "multi_image_mode": "base64",
        "rate_limit_per_minute": None,
        "failed_rate": 0.0,
    }
    with httpx.Client(base_url=services.simulator, timeout=30) as client:
        client.post("/admin/config", json=defaults).raise_for_status()
        # Earlier tests' jobs: those not started never start; those a worker holds (a call
        # on the wire, a request being polled, a slot being waited for) finish first, so
        # none of their calls lands in this test's statistics.
        cancel_leftover_jobs(running=False)
        reset_fleet()
        deadline = time.monotonic() + 15
        while running_jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
        cancel_leftover_jobs()
        client.post("/admin/forget").raise_for_status()  # v2 requests nobody will collect
        deadline = time.monotonic() + 10
        while client.get("/admin/stats").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        client.post("/admin/reset").raise_for_status()
        reset_fleet()
        yield client
        client.post("/admin/config", json=defaults).raise_for_status()
        reset_fleet()


@pytest.fixture
def hooks(database: str) -> Iterator[Receiver]:
    """A webhook receiver on loopback; every endpoint is disabled afterwards, so later
    tests' fleet events do not chase receivers that are gone."""
    from sqlalchemy import update

    from relightq.webhooks.models import WebhookEndpoint

    with receiver() as hooks:
        yield hooks
    with session_scope() as session:
        session.execute(update(WebhookEndpoint).values(enabled=False))


@pytest.fixture
def low_rate_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """RATE_LIMIT of 5/minute for this test (the suite runs with a limit it never meets)."""
    from relightq.tenants import ratelimit

    monkeypatch.setattr(get_settings(), "rate_limit", "5/minute")
    ratelimit._limiter.cache_clear()
    yield
    monkeypatch.undo()
    ratelimit._limiter.cache_clear()
