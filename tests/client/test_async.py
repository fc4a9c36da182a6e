"""The async client: a job round trip, an upload, pagination, errors and retries."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from relightq.client import AsyncRelightqClient, RelightqAPIError, RetryEvent, RetryPolicy
from relightq.jobs.models import JobStatus
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image
from tests.support.faulty_proxy import api_error, faulty_proxy, url_of
from tests.support.images import product_png

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_a_job_round_trip_and_pagination(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("client/async.png")

    async def scenario() -> None:
        async with AsyncRelightqClient(services.api, tenant.key) as client:
            job = await client.create_job(url, "soft light", external_id="A-1")
            done = await client.wait_for_job(job.id, timeout=30, interval=0.1)
            assert done.status == JobStatus.SUCCEEDED and done.external_id == "A-1"
            assert await client.get_job(job.id) == done

            uploaded = await client.upload_job(product_png(), "x", filename="p.png", wait=30)
            assert uploaded.status == JobStatus.SUCCEEDED
            more = [(await client.create_job(url, "x")).id for _ in range(3)]

            page = await client.list_jobs(limit=2)
            assert len(page.items) == 2 and page.next_cursor
            walked = [j.id async for j in client.iter_jobs(page_size=2)]
            assert walked == [*more[::-1], uploaded.id, job.id]

            with pytest.raises(RelightqAPIError) as missing:
                await client.get_job(uuid.uuid4())
            assert (missing.value.status, missing.value.code) == (404, "not_found")

    asyncio.run(scenario())


def test_an_async_get_honours_retry_after(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    events: list[RetryEvent] = []
    _, url = shop_image("client/async-retried.png")

    async def scenario() -> None:
        async with AsyncRelightqClient(services.api, tenant.key) as direct:
            batch = await direct.create_batch(
                items=[{"subject_image": url}], defaults={"prompt": "x"}
            )
        faults = [api_error(429, "rate_limited", retry_after="1")]
        with faulty_proxy(services.api, faults) as proxy:
            policy = RetryPolicy(on_retry=events.append)
            async with AsyncRelightqClient(url_of(proxy), tenant.key, retry=policy) as client:
                assert (await client.get_batch(batch.id)).id == batch.id
        assert [what for _, what in proxy.log] == ["429", "GET forwarded"]
        assert proxy.gap_after("429") >= 0.95

    asyncio.run(scenario())
    [event] = events
    assert isinstance(event.error, RelightqAPIError) and event.error.status == 429
    assert event.delay == 1.0
