"""Segmind's async v2 routes: Segmind's own Python SDK (``segmind`` from PyPI) runs
through relightq changed only in base URL and key."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from segmind import SegmindClient
from segmind.exceptions import SegmindError
from segmind.v2 import AsyncJob, InferenceFailed

from api.app import create_app
from relightq.serving import serve_in_thread
from tests.compat.test_segmind_compat import jobs_of
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import download, shop_image, wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")

V2 = "/compat/segmind/v2"
RELIT_SIZE = (768, 960)  # the default 512x640 at highres_scale 1.5
Sdk = Callable[[str], SegmindClient]


@pytest.fixture
def sdk(services: Services) -> Iterator[Sdk]:
    """Factory: Segmind's client for a key, pointed at relightq as a user would point it."""
    made: list[SegmindClient] = []

    def make(key: str) -> SegmindClient:
        made.append(SegmindClient(api_key=key, base_url=f"{services.api}/compat/segmind/v1"))
        return made[-1]

    yield make
    for client in made:
        client._client.close()  # the SDK has no close(); its connections are this httpx client


def submit_v2(services: Services, key: str, image: str, **fields: Any) -> httpx.Response:
    """POST a v2 submit of a shop image (stored under ``image``) as Segmind's SDK would."""
    _, url = shop_image(image)
    body = {"prompt": "x", "subject_image": url, **fields}
    return httpx.post(services.api + V2 + "/ic-light", json=body, headers={"x-api-key": key})


def image_at(url: str) -> Image.Image:
    image = Image.open(io.BytesIO(download(url)))
    image.load()
    return image


def poll(status_url: str, key: str, state: str, timeout: float = 30) -> dict[str, Any]:
    """The status route's body once it says ``state``; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = httpx.get(status_url, headers={"x-api-key": key}).json()
        if body.get("status") == state:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"still {body} after {timeout} s")
        time.sleep(0.05)


def test_segminds_sdk_run_relights_through_relightq(
    sdk: Sdk, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    _, url = shop_image("compat/v2/run.png")

    result = sdk(tenant.key).run(
        "ic-light", prompt="studio light", subject_image=url, output_format="png"
    )

    assert result["status"] == "COMPLETED"
    with image_at(result["output"]) as image:
        assert (image.format, image.size) == ("PNG", RELIT_SIZE)
    metrics = result["metrics"]
    assert metrics["cost"] > 0 and metrics["remaining_credits"] < 100
    assert 0 <= metrics["inference_time"] <= metrics["total_time"]
    assert metrics["queue_time"] + metrics["inference_time"] == pytest.approx(
        metrics["total_time"], abs=0.002
    )
    job = api.get(f"/v1/jobs/{result['request_id']}").json()
    assert job["status"] == "succeeded" and job["priority"] == 9
    assert job["credits_used"] == metrics["cost"]
    assert simulator.get("/admin/stats").json()["calls"] == 1


def test_submit_async_then_wait_gives_the_same_result(
    sdk: Sdk, services: Services, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    _, url = shop_image("compat/v2/submit.png")

    job = sdk(tenant.key).submit_async(
        "ic-light", prompt="studio", subject_image=url, output_format="jpg"
    )
    result = job.wait(timeout=60, interval=0.2)

    base = f"{services.api}{V2}/requests/{job.request_id}"
    assert job.submit_response == {
        "request_id": job.request_id,
        "status": "QUEUED",
        "status_url": f"{base}/status",
        "response_url": base,
    }
    assert result["request_id"] == job.request_id and result["status"] == "COMPLETED"
    with image_at(result["output"]) as image:
        assert (image.format, image.size) == ("JPEG", RELIT_SIZE)
    assert job.status() == {"request_id": job.request_id, "status": "COMPLETED"}
    [listed] = api.get("/v1/jobs").json()["items"]
    assert listed["id"] == job.request_id and listed["status"] == "succeeded"


def test_run_sync_still_goes_to_the_v1_route(
    sdk: Sdk, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    _, url = shop_image("compat/v2/sync.png")

    response = sdk(tenant.key).run_sync("ic-light", prompt="studio", subject_image=url)

    assert response.url.path == "/compat/segmind/v1/ic-light"
    assert response.headers["content-type"] == "image/webp"
    assert float(response.headers["x-remaining-credits"]) < 100
    with Image.open(io.BytesIO(response.content)) as image:
        assert (image.format, image.size) == ("WEBP", RELIT_SIZE)
    [job] = api.get("/v1/jobs").json()["items"]
    assert job["status"] == "succeeded"


def test_an_upstream_refusal_raises_inference_failed_in_segminds_words(
    sdk: Sdk, services: Services, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    body = {"prompt": "x", "subject_image": f"{services.simulator}/no-such-image.png"}
    job = sdk(tenant.key).submit_async("ic-light", **body)

    with pytest.raises(InferenceFailed) as failed:
        job.wait(timeout=60, interval=0.2)

    segminds = simulator.post("/v1/ic-light", json=body, headers={"x-api-key": "k"})
    assert segminds.status_code == 422
    assert failed.value.detail == segminds.json()["error"]
    assert failed.value.status_body["status"] == "FAILED"
    assert failed.value.status_body["metrics"]["cost"] == 0
    assert job.result() == failed.value.status_body  # the result route: the same 422 body
    assert api.get(f"/v1/jobs/{job.request_id}").json()["status"] == "failed"


def test_while_the_fleet_is_paused_submit_is_refused_and_a_queued_job_resumes_by_itself(
    sdk: Sdk, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"credits": 0.0}).raise_for_status()
    _, url = shop_image("compat/v2/no-credits.png")
    client = sdk(tenant.key)
    first = client.submit_async("ic-light", prompt="x", subject_image=url)
    wait_for(api, first.request_id, "waiting")  # Segmind said 406: the fleet paused

    with pytest.raises(SegmindError) as refused:
        client.submit_async("ic-light", prompt="x", subject_image=url)
    parked = first.status()
    simulator.post("/admin/config", json={"credits": 100.0}).raise_for_status()
    result = first.wait(timeout=60, interval=0.2)  # the probe sees credits and resumes

    assert (refused.value.status, refused.value.detail) == (406, "Not enough credits")
    assert parked == {"request_id": first.request_id, "status": "QUEUED"}
    assert result["status"] == "COMPLETED"
    assert jobs_of(tenant) == 1  # the refused submit made no job


def test_a_cancelled_request_is_failed_with_a_422(
    services: Services, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"credits": 0.0}).raise_for_status()
    headers = {"x-api-key": tenant.key}
    submitted = submit_v2(services, tenant.key, "compat/v2/cancelled.png").json()
    wait_for(api, submitted["request_id"], "waiting")
    api.post(f"/v1/jobs/{submitted['request_id']}/cancel").raise_for_status()

    status = httpx.get(submitted["status_url"], headers=headers)
    result = httpx.get(submitted["response_url"], headers=headers)

    assert status.status_code == result.status_code == 422
    body = status.json()
    assert body == result.json()
    assert (body["request_id"], body["status"]) == (submitted["request_id"], "FAILED")
    assert body["error"] == "The request was cancelled"
    assert body["metrics"]["cost"] == 0  # Segmind refused the one call it got: no charge
    assert set(body["metrics"]) == {"inference_time", "queue_time", "total_time", "cost"}
    assert 0 <= body["metrics"]["inference_time"] <= body["metrics"]["total_time"]


def test_a_wrong_key_is_a_401_from_the_sdk(sdk: Sdk, simulator: httpx.Client) -> None:
    with pytest.raises(SegmindError) as refused:
        sdk("not-a-relightq-key").run("ic-light", prompt="x", subject_image="https://a.b/c.png")

    assert not isinstance(refused.value, InferenceFailed)
    assert (refused.value.status, refused.value.detail) == (401, "Invalid API key")
    assert simulator.get("/admin/stats").json()["calls"] == 0


def test_another_tenants_request_is_not_found(
    sdk: Sdk, make_tenant: Callable[[], TenantKey], simulator: httpx.Client
) -> None:
    owner, stranger = make_tenant(), make_tenant()
    _, url = shop_image("compat/v2/owned.png")
    mine = sdk(owner.key).submit_async("ic-light", prompt="x", subject_image=url)
    # The stranger polls the owner's URLs with its own key.
    theirs = AsyncJob(
        request_id=mine.request_id,
        status_url=mine.status_url,
        response_url=mine.response_url,
        submit_response={},
        _client=sdk(stranger.key),
    )

    with pytest.raises(SegmindError) as status:
        theirs.status()
    with pytest.raises(SegmindError) as result:
        theirs.result()

    words = f"Request {mine.request_id} not found"
    assert (status.value.status, status.value.detail) == (404, words)
    assert (result.value.status, result.value.detail) == (404, words)
    assert mine.wait(timeout=60, interval=0.2)["status"] == "COMPLETED"


# Plain HTTP: the edges the SDK does not reach.


@pytest.mark.parametrize("route", ["/status", ""])
def test_an_id_that_is_no_request_is_a_404_in_segminds_shape(
    services: Services, tenant: TenantKey, route: str
) -> None:
    headers = {"x-api-key": tenant.key}
    for request_id in ("not-a-uuid", str(uuid.uuid4())):
        response = httpx.get(f"{services.api}{V2}/requests/{request_id}{route}", headers=headers)
        assert (response.status_code, response.json()) == (
            404,
            {"error": f"Request {request_id} not found"},
        )
    missing = httpx.get(f"{services.api}{V2}/requests/{uuid.uuid4()}{route}")
    assert (missing.status_code, missing.json()) == (401, {"error": "Missing x-api-key header"})


def test_several_images_come_back_as_a_list_of_urls(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    headers = {"x-api-key": tenant.key}
    submitted = submit_v2(
        services, tenant.key, "compat/v2/several.png", number_of_images=3, output_format="png"
    ).json()
    poll(submitted["status_url"], tenant.key, "COMPLETED")

    response = httpx.get(submitted["response_url"], headers=headers)

    assert response.status_code == 200
    result = response.json()
    assert isinstance(result["output"], list) and len(set(result["output"])) == 3
    for output in result["output"]:
        with image_at(output) as image:
            assert (image.format, image.size) == ("PNG", RELIT_SIZE)
    assert result["metrics"]["cost"] == pytest.approx(3 * 0.037)
    assert float(response.headers["x-remaining-credits"]) == result["metrics"]["remaining_credits"]


def test_a_request_not_done_yet_has_a_state_and_no_output(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 3.0}).raise_for_status()
    headers = {"x-api-key": tenant.key}
    submitted = submit_v2(services, tenant.key, "compat/v2/slow.png").json()

    early = httpx.get(submitted["response_url"], headers=headers)
    processing = poll(submitted["status_url"], tenant.key, "PROCESSING")
    running = httpx.get(submitted["response_url"], headers=headers)

    assert early.status_code == 200
    assert early.json()["request_id"] == submitted["request_id"]
    assert set(early.json()) == {"request_id", "status"}  # no output, no metrics yet
    assert early.json()["status"] in ("QUEUED", "PROCESSING")
    assert processing == {"request_id": submitted["request_id"], "status": "PROCESSING"}
    assert (running.status_code, running.json()) == (200, processing)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x", "subject_image": "https://example.com/a.png", "steps": 500},
        {"subject_image": "https://example.com/a.png", "light_source": "Moon"},
        {"prompt": "x"},
    ],
)
def test_bad_parameters_get_the_v1_answer_and_no_job(
    services: Services, tenant: TenantKey, body: dict[str, Any]
) -> None:
    headers = {"x-api-key": tenant.key}

    v2 = httpx.post(services.api + V2 + "/ic-light", json=body, headers=headers)
    v1 = httpx.post(services.api + "/compat/segmind/v1/ic-light", json=body, headers=headers)

    assert v2.status_code == 422 and (v2.status_code, v2.json()) == (v1.status_code, v1.json())
    assert jobs_of(tenant) == 0


def test_an_operators_pause_gets_503_with_retry_after_and_no_job(
    services: Services, tenant: TenantKey, operator: TenantKey, simulator: httpx.Client
) -> None:
    with httpx.Client(base_url=services.api, headers={"x-api-key": operator.key}) as ops:
        ops.post("/v1/throttle/pause", json={"reason": "maintenance"}).raise_for_status()

    response = submit_v2(services, tenant.key, "compat/v2/operator-pause.png")

    assert response.status_code == 503 and "paused" in response.json()["error"]
    assert response.headers["retry-after"] == "60"
    assert jobs_of(tenant) == 0


@pytest.mark.usefixtures("low_rate_limit")
def test_the_keys_rate_limit_is_a_429_in_segminds_shape(
    services: Services, tenant: TenantKey
) -> None:
    headers = {"x-api-key": tenant.key}
    status_url = f"{services.api}{V2}/requests/{uuid.uuid4()}/status"

    answers = [httpx.get(status_url, headers=headers).status_code for _ in range(5)]
    refused = httpx.get(status_url, headers=headers)
    submit = httpx.post(services.api + V2 + "/ic-light", json={"prompt": "x"}, headers=headers)

    assert answers == [404] * 5
    assert refused.status_code == submit.status_code == 429
    assert set(refused.json()) == {"error"} and "rate limit" in refused.json()["error"].lower()
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def behind_a_proxy(app: Any, prefix: str) -> Any:
    """The app as uvicorn --root-path serves it behind a proxy that strips ``prefix``."""

    async def mounted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "root_path": prefix, "path": prefix + scope["path"]}
        await app(scope, receive, send)

    return mounted


def test_the_polling_urls_honour_the_root_path_and_forwarded_scheme(
    tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("compat/v2/proxied.png")
    # What the proxy in front sends on: the public host, and https in X-Forwarded-Proto
    # (uvicorn trusts it from loopback, as the suite's server is reached).
    headers = {"x-api-key": tenant.key, "host": "relight.example", "x-forwarded-proto": "https"}

    with serve_in_thread(behind_a_proxy(create_app(), "/relightq")) as api_url:
        answer = httpx.post(
            api_url + V2 + "/ic-light", json={"prompt": "x", "subject_image": url}, headers=headers
        )

    assert answer.status_code == 200, answer.text
    request_id = answer.json()["request_id"]
    base = f"https://relight.example/relightq{V2}/requests/{request_id}"
    assert (answer.json()["status_url"], answer.json()["response_url"]) == (f"{base}/status", base)


def test_the_v2_routes_are_documented_with_the_key_and_segminds_answers(
    services: Services,
) -> None:
    paths = httpx.get(f"{services.api}/openapi.json").json()["paths"]
    submit = paths[V2 + "/ic-light"]["post"]
    lookups = [paths[V2 + "/requests/{request_id}" + route]["get"] for route in ("/status", "")]

    for operation in (submit, *lookups):
        assert operation["tags"] == ["segmind-compatible"]
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == {"x-api-key"}
    assert submit["requestBody"] == paths["/compat/segmind/v1/ic-light"]["post"]["requestBody"]
    assert {"200", "401", "406", "413", "422", "429", "503"} <= set(submit["responses"])
    queued = submit["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(queued["required"]) == {"request_id", "status", "status_url", "response_url"}
    for operation in lookups:
        assert {"200", "401", "404", "422", "429"} <= set(operation["responses"])
        assert [p["name"] for p in operation["parameters"] if p["in"] == "path"] == ["request_id"]
        failed = operation["responses"]["422"]["content"]["application/json"]["schema"]
        assert set(failed["required"]) == {"request_id", "status", "error", "metrics"}
