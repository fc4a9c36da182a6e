"""`relightq schedule ...` against the real API, worker, simulator and S3 server."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from typer.testing import CliRunner, Result

from relightq.cli import app
from tests.batches.helpers import wait_batch
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import SHOP_BUCKET, shop_image

pytestmark = pytest.mark.usefixtures("celery_worker")

runner = CliRunner()
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def run(services: Services, tenant: TenantKey, *args: str) -> Result:
    """`relightq schedule ARGS` as the tenant."""
    env = {"RELIGHTQ_API_URL": services.api, "RELIGHTQ_API_KEY": tenant.key}
    return runner.invoke(app, ["schedule", *args], env=env)


def flat(output: str) -> str:
    """Output with Rich's panel borders and line wrapping undone, for phrase checks."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", output)


def created_id(result: Result) -> str:
    assert result.exit_code == 0, result.output
    found = re.search(rf"Created schedule ({UUID.pattern})", result.output)
    assert found, result.output
    return found.group(1)


def schedule_of(api: httpx.Client, schedule_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/schedules/{schedule_id}")
    assert response.status_code == 200, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


def moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def test_a_rerun_schedule_runs_now_with_its_overrides_and_keeps_history(
    services: Services, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    _, url = shop_image(f"cli-schedule-{uuid.uuid4().hex[:8]}/a.png")
    body = {"defaults": {"prompt": "x"}, "items": [{"subject_image": url}]}
    response = api.post("/v1/batches", json=body)
    assert response.status_code == 202, response.text
    original = response.json()["id"]
    wait_batch(api, original, "completed")

    created = run(
        services,
        tenant,
        *("create", "nightly", "--cron", "0 3 * * *", "--timezone", "Europe/Paris"),
        *("--rerun-batch", original, "--set", 'prompt="new look"'),
    )

    schedule_id = created_id(created)
    schedule = schedule_of(api, schedule_id)
    assert schedule["action"]["overrides"] == {"prompt": "new look"}  # JSON "..." is text
    next_run = moment(schedule["next_run_at"])
    local = next_run.astimezone(ZoneInfo("Europe/Paris"))
    assert local.hour == 3
    assert f"{next_run.astimezone(UTC):%Y-%m-%d %H:%M} UTC" in created.output
    assert f"{local:%Y-%m-%d} 03:00" in created.output and "Europe/Paris" in created.output

    ran = run(services, tenant, "run", schedule_id)

    assert ran.exit_code == 0, ran.output
    [history] = api.get(f"/v1/schedules/{schedule_id}/runs").json()["items"]
    assert history["manual"] is True and history["status"] in ("running", "succeeded")
    [batch] = history["batches"]
    assert batch["id"] != original and f"batch {batch['id']}" in ran.output
    assert history["status"] in ran.output
    wait_batch(api, batch["id"], "completed")
    [job] = api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["items"]
    assert job["params"]["prompt"] == "new look" and job["status"] == "succeeded"
    assert job["subject_image"] == url

    runs = run(services, tenant, "runs", schedule_id)

    assert runs.exit_code == 0, runs.output
    assert batch["id"] in runs.output and "100%" in runs.output
    assert "succeeded" in runs.output  # the run is done once its batch is
    scheduled_for = moment(history["scheduled_for"])
    assert f"{scheduled_for:%Y-%m-%d}" in runs.output
    assert f"{scheduled_for:%H:%M} UTC" in runs.output


def test_a_prefix_schedule_is_listed_shown_paused_and_resumed(
    services: Services, tenant: TenantKey, api: httpx.Client
) -> None:
    folder = f"cli-schedule-{uuid.uuid4().hex[:8]}"
    shop_image(f"{folder}/a.png")  # the bucket must exist for the API to accept the prefix
    source = f"s3://{SHOP_BUCKET}/{folder}/"

    created = run(
        services,
        tenant,
        *("create", "new arrivals", "--cron", "*/15 * * * *", "--overlap", "queue"),
        *("--prefix", source, "--prompt", "studio light", "--set", "width=512"),
    )

    schedule_id = created_id(created)
    schedule = schedule_of(api, schedule_id)
    assert schedule["action"]["type"] == "reprocess_prefix"
    assert schedule["action"]["source"] == source
    assert schedule["action"]["defaults"] == {"prompt": "studio light", "width": 512}
    assert schedule["overlap"] == "queue" and schedule["enabled"] is True
    next_run_at = moment(schedule["next_run_at"])
    next_run = f"{next_run_at:%Y-%m-%d %H:%M} UTC"
    assert f"Next run: {next_run}" in created.output

    listed = run(services, tenant, "list")
    assert listed.exit_code == 0, listed.output
    assert schedule_id in listed.output and "new arrivals" in listed.output
    assert "*/15 * * * *" in listed.output and "UTC" in listed.output
    # A table cell: the date above the time.
    assert f"{next_run_at:%Y-%m-%d}" in listed.output
    assert f"{next_run_at:%H:%M} UTC" in listed.output

    shown = run(services, tenant, "show", schedule_id)
    assert shown.exit_code == 0, shown.output
    assert schedule_id in shown.output and source in flat(shown.output)
    assert next_run in flat(shown.output)

    paused = run(services, tenant, "pause", schedule_id)
    assert paused.exit_code == 0, paused.output
    schedule = schedule_of(api, schedule_id)
    assert schedule["enabled"] is False and schedule["next_run_at"] is None
    assert "paused" in run(services, tenant, "show", schedule_id).output

    resumed = run(services, tenant, "resume", schedule_id)
    assert resumed.exit_code == 0, resumed.output
    schedule = schedule_of(api, schedule_id)
    assert schedule["enabled"] is True and schedule["next_run_at"] is not None
    assert f"{moment(schedule['next_run_at']):%Y-%m-%d %H:%M} UTC" in resumed.output


def test_bad_input_exits_cleanly_with_what_to_fix(
    services: Services, tenant: TenantKey, api: httpx.Client
) -> None:
    bad_cron = run(
        services, tenant, "create", "x", "--cron", "every night", "--retry-failed-hours", "24"
    )
    assert bad_cron.exit_code == 1, bad_cron.output
    assert "HTTP 422" in bad_cron.output
    assert "cron: must have five fields" in flat(bad_cron.output)

    no_action = run(services, tenant, "create", "x", "--cron", "0 3 * * *")
    assert no_action.exit_code == 2, no_action.output
    assert "exactly one action" in flat(no_action.output)

    two_actions = run(
        services,
        tenant,
        *("create", "x", "--cron", "0 3 * * *", "--rerun-batch", str(uuid.uuid4())),
        *("--retry-failed-hours", "1"),
    )
    assert two_actions.exit_code == 2, two_actions.output
    assert "got --rerun-batch, --retry-failed-hours" in flat(two_actions.output)

    stray = run(
        services,
        tenant,
        *("create", "x", "--cron", "0 3 * * *", "--retry-failed-hours", "1"),
        *("--prompt", "dropped otherwise"),
    )
    assert stray.exit_code == 2, stray.output
    assert "--prompt cannot go with --retry-failed-hours" in flat(stray.output)

    assert "Traceback" not in bad_cron.output + no_action.output + two_actions.output
    assert api.get("/v1/schedules").json() == []  # nothing was created


def test_a_deleted_schedule_is_gone(
    services: Services, tenant: TenantKey, api: httpx.Client
) -> None:
    created = run(
        services, tenant, "create", "retries", "--cron", "0 * * * *", "--retry-failed-hours", "6"
    )
    schedule_id = created_id(created)
    assert schedule_of(api, schedule_id)["action"] == {
        "type": "retry_failed",
        "window_hours": 6.0,
        "batch_id": None,
    }

    deleted = run(services, tenant, "delete", schedule_id)

    assert deleted.exit_code == 0, deleted.output
    assert api.get(f"/v1/schedules/{schedule_id}").status_code == 404
    shown = run(services, tenant, "show", schedule_id)
    assert shown.exit_code == 1, shown.output
    assert "schedule not found (HTTP 404)" in shown.output


def test_a_schedule_is_updated_in_place_keeping_its_id_and_history(
    services: Services, tenant: TenantKey, api: httpx.Client
) -> None:
    created = run(
        services, tenant, "create", "retries", "--cron", "0 * * * *", "--retry-failed-hours", "6"
    )
    schedule_id = created_id(created)
    api.post(f"/v1/schedules/{schedule_id}/run").raise_for_status()

    moved = run(
        services,
        tenant,
        *("update", schedule_id, "--cron", "30 4 * * *", "--timezone", "Europe/Paris"),
        *("--overlap", "queue", "--retry-failed-hours", "12"),
    )

    assert moved.exit_code == 0, moved.output
    schedule = schedule_of(api, schedule_id)
    assert (schedule["cron"], schedule["timezone"], schedule["overlap"]) == (
        "30 4 * * *",
        "Europe/Paris",
        "queue",
    )
    assert schedule["action"]["window_hours"] == 12.0 and schedule["name"] == "retries"
    local = moment(schedule["next_run_at"]).astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (4, 30)
    assert len(api.get(f"/v1/schedules/{schedule_id}/runs").json()["items"]) == 1

    nothing = run(services, tenant, "update", schedule_id)
    assert nothing.exit_code == 2 and "give something to change" in flat(nothing.output)
    stray = run(services, tenant, "update", schedule_id, "--prompt", "x")
    assert stray.exit_code == 2 and "exactly one action" in flat(stray.output)
