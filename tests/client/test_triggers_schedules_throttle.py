"""Triggers, schedules and the fleet throttle through the client."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from relightq.client import RelightqAPIError, RelightqClient
from relightq.schedules.models import RunStatus
from tests.jobs.test_end_to_end import shop_image

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_a_trigger_is_defined_fired_by_a_signed_event_and_removed(
    client: RelightqClient, simulator: httpx.Client
) -> None:
    name = f"client-{uuid.uuid4().hex[:8]}"
    trigger = client.create_trigger(
        name,
        scheme="standard-webhooks",
        mapping={"images": "data.image_url", "external_id": "data.sku"},
        job={"prompt": "soft light"},
    )
    assert trigger.secret and trigger.secret.startswith("whsec_") and trigger.url.endswith(name)
    assert [t.name for t in client.list_triggers()] == [name]
    assert client.get_trigger(name).secret is None

    _, url = shop_image("client/triggered.png")
    body = json.dumps({"data": {"image_url": url, "sku": "S-1"}})
    now = datetime.now(UTC)
    headers = {
        "webhook-id": "msg_client",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(trigger.secret).sign("msg_client", now, body),
        "content-type": "application/json",
    }
    accepted = client.send_trigger_event(name, body.encode(), headers)
    repeat = client.send_trigger_event(name, body.encode(), headers)

    assert (accepted.event_id, accepted.duplicate) == ("msg_client", False)
    assert repeat.duplicate and repeat.jobs == accepted.jobs
    [job_id] = accepted.jobs
    assert client.wait_for_job(job_id, timeout=30, interval=0.1).external_id == "S-1"
    with pytest.raises(RelightqAPIError) as forged:
        client.send_trigger_event(name, body.replace("S-1", "S-2").encode(), headers)
    assert forged.value.status == 401

    client.delete_trigger(name)
    with pytest.raises(RelightqAPIError) as gone:
        client.get_trigger(name)
    assert gone.value.status == 404


def test_a_schedule_is_created_run_paged_paused_updated_and_deleted(
    client: RelightqClient, simulator: httpx.Client
) -> None:
    schedule = client.create_schedule(
        "retries",
        cron="0 3 * * *",
        timezone="Europe/Paris",
        action={"type": "retry_failed", "window_hours": 6},
    )

    assert schedule.enabled and schedule.next_run_at is not None
    assert schedule.action == {"type": "retry_failed", "window_hours": 6.0, "batch_id": None}
    assert [s.id for s in client.list_schedules()] == [schedule.id]
    runs = [client.run_schedule(schedule.id) for _ in range(3)]
    assert all(r.manual and r.status == RunStatus.SUCCEEDED for r in runs)
    page = client.list_schedule_runs(schedule.id, limit=2)
    assert len(page.items) == 2 and page.next_cursor
    assert [r.id for r in client.iter_schedule_runs(schedule.id, page_size=2)] == [
        r.id for r in reversed(runs)
    ]

    paused = client.pause_schedule(schedule.id)
    assert not paused.enabled and paused.next_run_at is None
    assert client.resume_schedule(schedule.id).enabled
    moved = client.update_schedule(schedule.id, cron="30 4 * * *", overlap="queue")
    assert (moved.cron, moved.overlap, moved.name) == ("30 4 * * *", "queue", "retries")
    assert client.get_schedule(schedule.id) == moved
    with pytest.raises(RelightqAPIError) as bad:
        client.update_schedule(schedule.id, cron="every night")
    assert bad.value.status == 422 and bad.value.fields[0].field == "cron"

    client.delete_schedule(schedule.id)
    assert client.list_schedules() == []


def test_the_throttle_is_read_by_anyone_and_paused_by_an_operator(
    client: RelightqClient, ops_client: RelightqClient, simulator: httpx.Client
) -> None:
    assert client.get_throttle().state == "running"
    with pytest.raises(RelightqAPIError) as forbidden:
        client.pause_throttle("not mine to pause")
    assert forbidden.value.status == 403

    paused = ops_client.pause_throttle("quarterly budget review")
    try:
        assert (paused.state, paused.code, paused.manual) == ("paused", "manual", True)
        assert client.get_throttle().reason == "quarterly budget review"
    finally:
        resumed = ops_client.resume_throttle()
    assert resumed.state == "running" and client.get_throttle().state == "running"
