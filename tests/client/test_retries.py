"""Retries against a real HTTP server that answers 503/502 or drops connections: only
idempotent requests are retried, Retry-After is honoured, and the last error is raised."""

from __future__ import annotations

import uuid

import httpx
import pytest
from tenacity import RetryCallState, Retrying

from relightq.client import RelightqAPIError, RelightqClient, RetryEvent, RetryPolicy
from relightq.client.retry import FALLBACK_WAIT, RETRY_AFTER_MAX, wait_retry_after
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image
from tests.support.faulty_proxy import DROP, Fault, api_error, faulty_proxy, url_of

pytestmark = pytest.mark.usefixtures("celery_worker")


def job_posts(method: str, path: str) -> bool:
    return method == "POST" and path == "/v1/jobs"


def test_a_get_waits_out_a_503_for_its_retry_after_then_succeeds(
    services: Services, tenant: TenantKey, client: RelightqClient
) -> None:
    _, url = shop_image("client/retried-get.png")
    batch = client.create_batch(items=[{"subject_image": url}], defaults={"prompt": "x"})
    events: list[RetryEvent] = []
    recovered: list[tuple[int, float]] = []
    policy = RetryPolicy(on_retry=events.append, on_recovered=lambda n, s: recovered.append((n, s)))
    faults = [api_error(503, "database_unavailable", retry_after="1")]

    with (
        faulty_proxy(services.api, faults) as proxy,
        RelightqClient(url_of(proxy), tenant.key, retry=policy) as patient,
    ):
        fetched = patient.get_batch(batch.id)

    assert fetched.id == batch.id
    assert [what for _, what in proxy.log] == ["503", "GET forwarded"]
    assert proxy.gap_after("503") >= 0.95  # waited, not just noted
    [event] = events
    assert isinstance(event.error, RelightqAPIError) and event.error.status == 503
    assert event.error.code == "database_unavailable" and event.delay == 1.0
    assert event.attempt == 1
    [(attempts, seconds)] = recovered
    assert attempts == 2 and seconds >= 0.95


def test_a_post_with_an_idempotency_key_is_retried_and_creates_one_job(
    services: Services, tenant: TenantKey, client: RelightqClient, simulator: httpx.Client
) -> None:
    _, url = shop_image("client/retried-post.png")
    faults = [api_error(503, "database_unavailable", retry_after="1"), DROP]

    with (
        faulty_proxy(services.api, faults, job_posts) as proxy,
        RelightqClient(url_of(proxy), tenant.key) as patient,
    ):
        job = patient.create_job(url, "x", idempotency_key=f"sku-{uuid.uuid4()}")

    assert [what for _, what in proxy.log] == ["503", "drop", "POST forwarded"]
    assert proxy.gap_after("503") >= 0.95
    assert [j.id for j in client.iter_jobs()] == [job.id]


def test_a_post_without_an_idempotency_key_is_never_retried(
    services: Services, tenant: TenantKey, client: RelightqClient
) -> None:
    faults = [api_error(503, "database_unavailable", retry_after="1")]

    with (
        faulty_proxy(services.api, faults, job_posts) as proxy,
        RelightqClient(url_of(proxy), tenant.key) as patient,
        pytest.raises(RelightqAPIError) as unavailable,
    ):
        patient.create_job("https://example.com/a.png", "x")

    assert (unavailable.value.status, unavailable.value.retry_after) == (503, 1.0)
    assert [what for _, what in proxy.log] == ["503"]
    assert client.list_jobs().items == []


def test_retries_stop_at_the_policy_and_raise_the_last_error(
    services: Services, tenant: TenantKey
) -> None:
    batch_id = uuid.uuid4()
    gateway = Fault(502, b"<html>502 Bad Gateway</html>", {"Content-Type": "text/html"})

    with (
        faulty_proxy(services.api, [DROP, gateway, DROP]) as proxy,
        RelightqClient(url_of(proxy), tenant.key, retry=RetryPolicy(max_attempts=2)) as patient,
        pytest.raises(RelightqAPIError) as last,
    ):
        patient.get_batch(batch_id)

    assert [what for _, what in proxy.log] == ["drop", "502"]
    assert last.value.status == 502 and last.value.code is None and not last.value.is_json
    assert "502 Bad Gateway" in last.value.message
    with (
        faulty_proxy(services.api, [gateway]) as proxy,
        RelightqClient(url_of(proxy), tenant.key, retry=RetryPolicy.never()) as impatient,
        pytest.raises(RelightqAPIError),
    ):
        impatient.get_batch(batch_id)
    assert [what for _, what in proxy.log] == ["502"]


def test_a_refused_connection_is_retried_then_raised_as_the_transport_error(
    tenant: TenantKey,
) -> None:
    events: list[RetryEvent] = []
    policy = RetryPolicy(max_attempts=2, on_retry=events.append)

    with (
        RelightqClient("http://127.0.0.1:9", tenant.key, retry=policy) as nowhere,
        pytest.raises(httpx.ConnectError),
    ):
        nowhere.list_jobs()

    [event] = events
    assert isinstance(event.error, httpx.ConnectError) and 1 <= event.delay <= 2  # backoff


def test_retry_after_is_capped_at_60_s_and_floored_at_half_a_second() -> None:
    wait = wait_retry_after(FALLBACK_WAIT)

    def waited(retry_after: str | None) -> float:
        error = RelightqAPIError(503, "database_unavailable", "down", retry_after=None)
        if retry_after is not None:
            error.retry_after = float(retry_after)
        state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
        state.set_exception((RelightqAPIError, error, None))
        return wait(state)

    assert waited("3600") == RETRY_AFTER_MAX == 60
    assert waited("0") == 0.5
    assert waited("2") == 2
    assert 1 <= waited(None) <= 2  # no Retry-After: the first step of the backoff
