"""Webhook endpoints, secrets, events and deliveries through the client, and verifying
what arrives with ``verify_webhook``."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from relightq.client import (
    RelightqAPIError,
    RelightqClient,
    WebhookVerificationError,
    verify_webhook,
)
from relightq.webhooks.models import DeliveryStatus
from tests.jobs.test_end_to_end import shop_image
from tests.support.receiver import Receiver

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_endpoints_are_created_listed_changed_and_deleted(
    client: RelightqClient, hooks: Receiver
) -> None:
    endpoint = client.create_webhook_endpoint(
        hooks.url, event_types=["job.succeeded"], description="shop backend"
    )

    assert endpoint.secret and endpoint.secret.startswith("whsec_")
    assert [e.id for e in client.list_webhook_endpoints()] == [endpoint.id]
    assert client.list_webhook_endpoints()[0].secret is None  # shown at creation only
    assert client.get_webhook_endpoint_secret(endpoint.id) == endpoint.secret
    rotated = client.rotate_webhook_endpoint_secret(endpoint.id)
    assert rotated != endpoint.secret and client.get_webhook_endpoint_secret(endpoint.id) == rotated

    changed = client.update_webhook_endpoint(
        endpoint.id, event_types=["job.failed", "batch.completed"], enabled=False
    )
    assert changed.event_types == ["job.failed", "batch.completed"] and not changed.enabled
    assert changed.description == "shop backend"  # not given: kept
    assert client.get_webhook_endpoint(endpoint.id) == changed

    client.delete_webhook_endpoint(endpoint.id)
    with pytest.raises(RelightqAPIError) as gone:
        client.get_webhook_endpoint(endpoint.id)
    assert gone.value.status == 404
    with pytest.raises(RelightqAPIError) as private:
        client.create_webhook_endpoint("http://10.0.0.1/hooks")
    assert private.value.status == 422 and private.value.fields[0].field == "url"


def test_a_job_succeeded_webhook_verifies_and_its_delivery_is_listed(
    client: RelightqClient, simulator: httpx.Client, hooks: Receiver
) -> None:
    endpoint = client.create_webhook_endpoint(hooks.url, event_types=["job.succeeded"])
    assert endpoint.secret
    _, url = shop_image("client/hooked.png")
    job = client.create_job(url, "x", external_id="SKU-HOOK")

    [request] = hooks.wait_for(1)
    event = verify_webhook(endpoint.secret, request.body, request.headers)

    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == str(job.id) and event["data"]["external_id"] == "SKU-HOOK"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(
            endpoint.secret, request.body.replace(b"SKU-HOOK", b"SKU-EVIL"), request.headers
        )
    with pytest.raises(WebhookVerificationError):
        verify_webhook(client.get_callback_secret(), request.body, request.headers)

    deadline = time.monotonic() + 20
    while (delivery := client.list_webhook_deliveries(endpoint_id=endpoint.id).items[0]).status != (
        DeliveryStatus.DELIVERED
    ):
        assert time.monotonic() < deadline, delivery
        time.sleep(0.05)
    assert delivery.msg_id == request.headers["webhook-id"]
    [seen] = list(client.iter_webhook_deliveries(endpoint_id=endpoint.id, page_size=1))
    assert seen.id == delivery.id
    assert client.get_webhook_delivery(delivery.id).attempt_log[0].http_status == 200
    [listed] = list(client.iter_webhook_events(type="job.succeeded"))
    assert listed.id == delivery.event_id
    assert client.get_webhook_event(listed.id).payload["data"]["id"] == str(job.id)

    again = client.redeliver_webhook(delivery.id)
    assert again.id == delivery.id
    [_, second] = hooks.wait_for(2)
    assert second.headers["webhook-id"] == request.headers["webhook-id"]
    assert verify_webhook(endpoint.secret, second.body, second.headers) == event


def test_the_callback_secret_is_made_once_and_rotated(client: RelightqClient) -> None:
    first = client.get_callback_secret()

    assert first.startswith("whsec_") and client.get_callback_secret() == first
    rotated = client.rotate_callback_secret()
    assert rotated != first and client.get_callback_secret() == rotated
    with pytest.raises(RelightqAPIError) as missing:
        client.get_webhook_delivery(uuid.uuid4())
    assert missing.value.status == 404
