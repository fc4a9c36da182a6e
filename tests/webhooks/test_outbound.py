"""Outbound webhooks: signed per Standard Webhooks, retried, recorded, redelivered once."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from relightq.broker import Queue, TaskName, get_celery
from tests.batches.helpers import wait_batch
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image, wait_for
from tests.support.receiver import Received, Receiver, receiver

pytestmark = pytest.mark.usefixtures("celery_worker")


def register(api: httpx.Client, url: str, *types: str) -> dict[str, Any]:
    response = api.post("/v1/webhooks/endpoints", json={"url": url, "event_types": list(types)})
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


def verified(secret: str, request: Received) -> Any:
    """The payload, checked with the official Standard Webhooks verifier."""
    return Webhook(secret).verify(request.body, request.headers)


def submit(api: httpx.Client, **fields: Any) -> str:
    _, url = shop_image("catalog/hooked.png")
    response = api.post("/v1/jobs", json={"prompt": "x", "subject_image": url, **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def deliveries(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get("/v1/webhooks/deliveries", params=params).json()["items"]
    return items


def wait_delivery(api: httpx.Client, delivery_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        delivery: dict[str, Any] = api.get(f"/v1/webhooks/deliveries/{delivery_id}").json()
        if delivery["status"] in statuses:
            return delivery
        assert time.monotonic() < deadline, delivery
        time.sleep(0.05)


def test_a_finished_job_is_announced_signed_to_its_endpoint_and_callback(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    endpoint = register(api, hooks.url, "job.succeeded")
    secret = api.get("/v1/webhooks/callback-secret").json()["secret"]
    assert api.get("/v1/webhooks/callback-secret").json()["secret"] == secret  # made once
    callback = hooks.url + "/callback"
    job_id = submit(api, callback_url=callback, external_id="SKU-1")
    wait_for(api, job_id, "succeeded")

    to_endpoint, to_callback = sorted(hooks.wait_for(2), key=lambda r: r.path)
    event = verified(endpoint["secret"], to_endpoint)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job_id and event["data"]["external_id"] == "SKU-1"
    assert event["data"]["outputs"][0]["s3_uri"].startswith("s3://")
    assert verified(secret, to_callback) == event
    assert to_endpoint.headers["webhook-id"] == to_callback.headers["webhook-id"]
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(to_endpoint.body + b" ", to_endpoint.headers)


def test_a_delivery_that_fails_is_retried_until_it_succeeds_and_every_try_is_recorded(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    hooks.script = [500, 503]
    endpoint = register(api, hooks.url)
    job_id = submit(api)
    wait_for(api, job_id, "succeeded")

    tries = hooks.wait_for(3)
    assert len({t.headers["webhook-id"] for t in tries}) == 1  # one message, three tries
    for request in tries:
        verified(endpoint["secret"], request)
    [delivery] = deliveries(api, endpoint_id=endpoint["id"])
    delivery = wait_delivery(api, delivery["id"], "delivered")
    assert delivery["attempts"] == 3
    log = delivery["attempt_log"]
    assert [a["http_status"] for a in log] == [500, 503, 200]
    assert [a["error_class"] for a in log] == ["http_status", "http_status", None]
    assert all(a["latency_ms"] >= 0 for a in log)
    events = api.get("/v1/webhooks/events").json()["items"]
    assert events[0]["deliveries"][0]["id"] == delivery["id"]


def test_a_delivery_gives_up_after_the_schedule(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    hooks.default = 500
    endpoint = register(api, hooks.url)
    submit(api)

    hooks.wait_for(4)  # the first try and one per delay of the schedule (3)
    [delivery] = deliveries(api, endpoint_id=endpoint["id"])
    delivery = wait_delivery(api, delivery["id"], "failed")
    assert delivery["attempts"] == 4 and delivery["last_error"] == "answered 500"
    time.sleep(1.5)
    assert len(hooks.requests) == 4


def test_410_disables_the_endpoint(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    hooks.script = [410]
    endpoint = register(api, hooks.url)
    submit(api)
    hooks.wait_for(1)
    [delivery] = deliveries(api, endpoint_id=endpoint["id"])
    assert wait_delivery(api, delivery["id"], "failed")["attempts"] == 1

    state = api.get(f"/v1/webhooks/endpoints/{endpoint['id']}").json()
    assert state["enabled"] is False and "410" in state["disabled_reason"]
    wait_for(api, submit(api), "succeeded")
    time.sleep(0.5)
    assert len(hooks.requests) == 1  # nothing more goes to a disabled endpoint
    refused = api.post(f"/v1/webhooks/deliveries/{delivery['id']}/redeliver")
    assert refused.status_code == 409


def test_a_redelivery_goes_to_the_url_the_endpoint_was_moved_to(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    hooks.script = [410]
    endpoint = register(api, hooks.url)
    submit(api)
    hooks.wait_for(1)
    [delivery] = deliveries(api, endpoint_id=endpoint["id"])
    wait_delivery(api, delivery["id"], "failed")

    with receiver() as moved:
        patched = api.patch(
            f"/v1/webhooks/endpoints/{endpoint['id']}", json={"enabled": True, "url": moved.url}
        )
        assert patched.status_code == 200, patched.text
        answer = api.post(f"/v1/webhooks/deliveries/{delivery['id']}/redeliver")
        assert answer.status_code == 202, answer.text
        [request] = moved.wait_for(1, timeout=10)
        done = wait_delivery(api, delivery["id"], "delivered")

    assert answer.json()["url"] == moved.url  # where it is going
    assert done["url"] == moved.url  # where it went
    assert len(hooks.requests) == 1  # the old URL got only the first try
    assert request.headers["webhook-id"] == hooks.requests[0].headers["webhook-id"]
    assert verified(endpoint["secret"], request)["type"] == "job.succeeded"


def test_retries_follow_a_moved_endpoint_but_a_callback_url_keeps_its_own(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    hooks.default = 500
    endpoint = register(api, hooks.url)
    submit(api, callback_url=hooks.url + "/callback")
    hooks.wait_for(2)  # the first try of each

    with receiver() as moved:
        api.patch(f"/v1/webhooks/endpoints/{endpoint['id']}", json={"url": moved.url})
        [request] = moved.wait_for(1, timeout=10)
        [to_endpoint] = deliveries(api, endpoint_id=endpoint["id"])
        to_endpoint = wait_delivery(api, to_endpoint["id"], "delivered")
        [to_callback] = [d for d in deliveries(api) if d["target"] == "callback"]
        to_callback = wait_delivery(api, to_callback["id"], "failed")

    assert to_endpoint["url"] == moved.url
    assert to_endpoint["attempt_log"][0]["http_status"] == 500
    assert to_endpoint["attempt_log"][-1]["http_status"] == 200
    assert request.path == "/hooks" and len(moved.requests) == 1
    assert to_callback["url"] == hooks.url + "/callback" and to_callback["attempts"] == 4
    assert len([r for r in hooks.requests if r.path == "/hooks/callback"]) == 4


def test_redelivery_by_hand_resends_the_same_message_and_duplicate_tasks_send_nothing(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    endpoint = register(api, hooks.url)
    submit(api)
    [first] = hooks.wait_for(1)
    [delivery] = deliveries(api, endpoint_id=endpoint["id"])
    wait_delivery(api, delivery["id"], "delivered")

    # The broker delivers the task again (a redelivery after a lost ack): nothing is sent.
    for _ in range(3):
        get_celery().send_task(
            TaskName.WEBHOOK_DELIVER.value, args=[delivery["id"]], queue=Queue.WEBHOOKS.value
        )
    time.sleep(1)
    assert len(hooks.requests) == 1

    answer = api.post(f"/v1/webhooks/deliveries/{delivery['id']}/redeliver")
    assert answer.status_code == 202, answer.text
    _, again = hooks.wait_for(2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert verified(endpoint["secret"], again) == first.json()
    assert wait_delivery(api, delivery["id"], "delivered")["attempt_log"][-1]["http_status"] == 200


def test_endpoints_only_get_the_event_types_they_asked_for(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    register(api, hooks.url, "job.failed")
    wait_for(api, submit(api), "succeeded")
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    failed = submit(api)
    wait_for(api, failed, "failed")

    [request] = hooks.wait_for(1)
    time.sleep(0.3)
    assert len(hooks.requests) == 1
    assert request.json()["type"] == "job.failed"
    assert request.json()["data"]["id"] == failed and request.json()["data"]["error"]["code"]


def test_a_batch_announces_its_completion_to_its_callback(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver
) -> None:
    _, url = shop_image("catalog/batch-hook.png")
    body = {
        "defaults": {"prompt": "x"},
        "items": [{"subject_image": url}, {"subject_image": url}],
        "callback_url": hooks.url,
    }
    batch_id = api.post("/v1/batches", json=body).json()["id"]
    wait_batch(api, batch_id, "completed")

    [request] = hooks.wait_for(1)
    # Never read or rotated before the delivery: the secret it was signed with is readable.
    secret = api.get("/v1/webhooks/callback-secret").json()["secret"]
    event = verified(secret, request)
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch_id and event["data"]["counts"] == {"succeeded": 2}


def test_fleet_pauses_and_resumes_are_announced(
    services: Services,
    api: httpx.Client,
    operator: TenantKey,
    simulator: httpx.Client,
    hooks: Receiver,
) -> None:
    endpoint = register(api, hooks.url, "throttle.paused", "throttle.resumed")
    with httpx.Client(base_url=services.api, headers={"x-api-key": operator.key}) as ops:
        ops.post("/v1/throttle/pause", json={"reason": "audit"}).raise_for_status()
        ops.post("/v1/throttle/resume").raise_for_status()

    paused, resumed = sorted(hooks.wait_for(2), key=lambda r: r.json()["timestamp"])
    assert verified(endpoint["secret"], paused)["data"]["reason"] == "audit"
    assert paused.json()["type"] == "throttle.paused"
    assert resumed.json()["type"] == "throttle.resumed"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hooks",
        "http://localhost.localdomain:1/x",
        "ftp://example.com/hooks",
    ],
)
def test_callbacks_may_not_reach_private_addresses(
    api: httpx.Client, tenant: TenantKey, url: str
) -> None:
    endpoint = api.post("/v1/webhooks/endpoints", json={"url": url})
    job = api.post(
        "/v1/jobs",
        json={"prompt": "x", "subject_image": "https://e.com/a.png", "callback_url": url},
    )

    assert endpoint.status_code == 422, endpoint.text
    assert endpoint.json()["error"]["fields"][0]["field"] == "url"
    assert job.status_code == 422 and job.json()["error"]["fields"][0]["field"] == "callback_url"
    assert api.get("/v1/webhooks/endpoints").json() == []


def test_endpoints_are_managed_per_tenant(
    api: httpx.Client, make_tenant: Any, services: Services, hooks: Receiver
) -> None:
    endpoint = register(api, hooks.url)
    assert api.get("/v1/webhooks/endpoints").json()[0]["secret"] is None  # not in listings
    secret_url = f"/v1/webhooks/endpoints/{endpoint['id']}/secret"
    assert api.get(secret_url).json()["secret"] == endpoint["secret"]
    rotated = api.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate-secret").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]
    assert api.get(secret_url).json()["secret"] == rotated["secret"]
    other = make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": other.key}) as theirs:
        assert theirs.get(f"/v1/webhooks/endpoints/{endpoint['id']}").status_code == 404
        assert theirs.get(secret_url).status_code == 404
        assert theirs.get("/v1/webhooks/endpoints").json() == []
    off = api.patch(f"/v1/webhooks/endpoints/{endpoint['id']}", json={"enabled": False})
    assert off.json()["enabled"] is False
    assert api.delete(f"/v1/webhooks/endpoints/{endpoint['id']}").status_code == 204
    assert api.get(f"/v1/webhooks/endpoints/{uuid.uuid4()}").status_code == 404


def test_bad_requests_name_the_body_or_the_filter_with_its_own_allowed_values(
    api: httpx.Client,
) -> None:
    broken = api.post(
        "/v1/webhooks/endpoints", content=b'{"url": ', headers={"content-type": "application/json"}
    )
    bogus = api.get("/v1/webhooks/deliveries", params={"status": "bogus"})

    assert broken.status_code == 422
    assert [f["field"] for f in broken.json()["error"]["fields"]] == ["body"]
    [problem] = bogus.json()["error"]["fields"]
    assert problem["field"] == "status" and "delivered" in problem["allowed"]
