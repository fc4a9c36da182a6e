"""Schedules fire at their cron times (a clock the test drives), once, with history."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import func, select, update

from relightq.broker import Queue, TaskName, get_celery
from relightq.db import get_sessionmaker, session_scope
from relightq.schedules.models import Schedule, ScheduleRun
from relightq.schedules.service import next_time, tick
from relightq.settings import get_settings
from relightq.storage import get_storage
from tests.batches.helpers import wait_batch
from tests.conftest import TenantKey, s3_client
from tests.jobs.test_end_to_end import SHOP_BUCKET, shop_image, submit_photo, wait_for
from tests.support.images import product_png

pytestmark = pytest.mark.usefixtures("celery_worker")


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def run_tick(now: datetime) -> list[uuid.UUID]:
    return tick(get_sessionmaker(), now, get_storage(), get_settings())


def small_batch(api: httpx.Client, count: int = 1, wait: bool = True, reuse: bool = False) -> str:
    """``count`` items of one photo. They buy every picture unless ``reuse``: these tests
    time runs that overlap, and re-runs made of copies would end at once."""
    _, url = shop_image("catalog/scheduled.png")
    items = [{"subject_image": url}] * count
    body = {"defaults": {"prompt": "x"}, "items": items, "reuse": reuse}
    batch_id = str(api.post("/v1/batches", json=body).json()["id"])
    if wait:
        wait_batch(api, batch_id, "completed")
    return batch_id


def create(api: httpx.Client, action: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {"name": "nightly", "cron": "0 3 * * *", "action": action, **fields}
    response = api.post("/v1/schedules", json=body)
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


def runs_of(api: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"/v1/schedules/{schedule_id}/runs").json()["items"]
    return items


def test_a_schedule_fires_at_its_time_in_its_time_zone_once(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    batch_id = small_batch(api)
    schedule = create(
        api,
        {"type": "rerun_batch", "batch_id": batch_id, "overrides": {"prompt": "winter"}},
        cron="30 2 * * *",
        timezone="America/New_York",
    )
    due = at(schedule["next_run_at"])
    local = due.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (2, 30)

    run_tick(due - timedelta(seconds=1))
    assert runs_of(api, schedule["id"]) == []  # a second early: not yet
    run_tick(due + timedelta(seconds=1))
    run_tick(due + timedelta(seconds=2))  # the same time again: nothing more

    [run] = runs_of(api, schedule["id"])
    assert at(run["scheduled_for"]) == due and run["manual"] is False
    after = at(api.get(f"/v1/schedules/{schedule['id']}").json()["next_run_at"])
    assert after.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M") == "02:30"
    assert timedelta(hours=23) <= after - due <= timedelta(hours=25)
    [batch] = run["batches"]
    wait_batch(api, str(batch["id"]), "completed")
    [job] = api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["items"]
    assert job["params"]["prompt"] == "winter" and job["status"] == "succeeded"
    assert runs_of(api, schedule["id"])[0]["status"] == "succeeded"


def test_a_rerun_of_an_unchanged_batch_copies_its_pictures_unless_told_not_to(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    batch_id = small_batch(api, count=3, reuse=True)
    paid = simulator.get("/admin/stats").json()["calls"]
    assert paid == 1  # three items of one picture: made once

    again = create(api, {"type": "rerun_batch", "batch_id": batch_id})
    fresh = create(api, {"type": "rerun_batch", "batch_id": batch_id, "reuse": False})
    [copied] = api.post(f"/v1/schedules/{again['id']}/run").json()["batches"]
    copied_batch = wait_batch(api, str(copied["id"]), "completed")
    assert (copied_batch["reused"], copied_batch["credits_used"]) == (3, 0)
    assert copied_batch["credits_saved"] == 0.111
    assert simulator.get("/admin/stats").json()["calls"] == paid

    [bought] = api.post(f"/v1/schedules/{fresh['id']}/run").json()["batches"]
    bought_batch = wait_batch(api, str(bought["id"]), "completed")
    assert bought_batch["reuse"] is False and bought_batch["reused"] == 0
    assert simulator.get("/admin/stats").json()["calls"] == paid + 3


def test_reprocessing_a_prefix_sends_only_new_or_changed_objects(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    prefix = f"incremental-{uuid.uuid4().hex[:6]}"
    shop_image(f"{prefix}/a.png")
    shop_image(f"{prefix}/b.png")
    schedule = create(
        api,
        {
            "type": "reprocess_prefix",
            "source": f"s3://{SHOP_BUCKET}/{prefix}/",
            "defaults": {"prompt": "spring"},
        },
    )

    def run_now() -> dict[str, Any]:
        run: dict[str, Any] = api.post(f"/v1/schedules/{schedule['id']}/run").json()
        for batch in run["batches"]:
            wait_batch(api, str(batch["id"]), "completed")
        return run

    first = run_now()
    assert first["summary"]["items"] == 2 and first["summary"]["unchanged"] == 0
    s3_client().put_object(
        Bucket=SHOP_BUCKET, Key=f"{prefix}/a.png", Body=product_png(width=200)
    )  # a new ETag
    shop_image(f"{prefix}/c.png")
    second = run_now()
    third = run_now()

    assert second["summary"] == {**second["summary"], "items": 2, "unchanged": 1}
    [batch] = second["batches"]
    sources = [
        j["subject_image"]
        for j in api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["items"]
    ]
    assert sorted(s.rsplit("/", 1)[1] for s in sources) == ["a.png", "c.png"]
    assert third["summary"] == {"items": 0, "unchanged": 3}
    assert third["batches"] == [] and third["status"] == "succeeded"


def test_an_object_rejected_by_a_run_is_offered_again_once_the_schedule_is_fixed(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    prefix = f"collide-{uuid.uuid4().hex[:6]}"
    shop_image(f"{prefix}/a/mug.png")
    shop_image(f"{prefix}/b/mug.png")
    action = {
        "type": "reprocess_prefix",
        "source": f"s3://{SHOP_BUCKET}/{prefix}/",
        "defaults": {"prompt": "spring"},
        "key_template": "{source_name}.{ext}",  # both objects render mug.webp
    }
    schedule = create(api, action)

    first = api.post(f"/v1/schedules/{schedule['id']}/run").json()
    wait_batch(api, str(first["batches"][0]["id"]), "completed")  # else overlap skips
    fixed = {**action, "key_template": "{source_key}/{index}.{ext}"}
    api.patch(f"/v1/schedules/{schedule['id']}", json={"action": fixed}).raise_for_status()
    second = api.post(f"/v1/schedules/{schedule['id']}/run").json()

    assert first["summary"]["items"] == 1 and first["summary"]["rejected"] == 1
    assert second["summary"]["items"] == 1 and second["summary"]["unchanged"] == 1


def test_overlap_skip_and_queue(api: httpx.Client, simulator: httpx.Client) -> None:
    simulator.post("/admin/config", json={"latency": 0.3}).raise_for_status()
    batch_id = small_batch(api, count=12)
    action = {"type": "rerun_batch", "batch_id": batch_id}
    skip = create(api, action, cron="* * * * *", overlap="skip")
    queue = create(api, action, cron="* * * * *", overlap="queue")
    t1 = max(at(skip["next_run_at"]), at(queue["next_run_at"]))

    run_tick(t1)
    run_tick(t1 + timedelta(minutes=1))
    run_tick(t1 + timedelta(minutes=2))

    skipped = runs_of(api, skip["id"])
    assert [r["status"] for r in skipped] == ["skipped", "skipped", "running"]
    assert skipped[0]["error"] == "the previous run is still going"
    queued = runs_of(api, queue["id"])
    assert [r["status"] for r in queued] == ["skipped", "queued", "running"]
    assert queued[0]["error"] == "a run is already queued"
    for run in (skipped[-1], queued[-1]):
        wait_batch(api, str(run["batches"][0]["id"]), "completed", timeout=60)

    run_tick(t1 + timedelta(minutes=2, seconds=30))  # nothing due: the queued run starts

    started = runs_of(api, queue["id"])[1]
    assert started["status"] == "running" and len(started["batches"]) == 1
    api.post(f"/v1/batches/{started['batches'][0]['id']}/cancel")


def test_runs_by_hand_at_once_follow_the_overlap_policy(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 0.3}).raise_for_status()
    batch_id = small_batch(api, count=12)
    schedule = create(api, {"type": "rerun_batch", "batch_id": batch_id}, overlap="skip")

    with ThreadPoolExecutor(5) as pool:
        answers = list(
            pool.map(lambda _: api.post(f"/v1/schedules/{schedule['id']}/run"), range(5))
        )

    runs = [a.json() for a in answers]
    assert sorted(r["status"] for r in runs) == ["running"] + ["skipped"] * 4
    [running] = [r for r in runs if r["status"] == "running"]
    batch_id = running["batches"][0]["id"]
    api.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()
    deadline = time.monotonic() + 60  # the calls in flight finish first

    def the_run() -> dict[str, Any]:
        [run] = [r for r in runs_of(api, schedule["id"]) if r["id"] == running["id"]]
        return run

    while (run := the_run())["status"] == "running":
        assert time.monotonic() < deadline, run
        time.sleep(0.1)
    assert run["status"] == "cancelled"  # not "succeeded": its batch did not run through


def test_an_object_whose_job_failed_is_offered_again_next_run(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    prefix = f"failing-{uuid.uuid4().hex[:6]}"
    shop_image(f"{prefix}/a.png")
    shop_image(f"{prefix}/b.png")
    action = {
        "type": "reprocess_prefix",
        "source": f"s3://{SHOP_BUCKET}/{prefix}/",
        "defaults": {"prompt": "spring"},
    }
    schedule = create(api, action)

    def run_now() -> dict[str, Any]:
        run: dict[str, Any] = api.post(f"/v1/schedules/{schedule['id']}/run").json()
        for batch in run["batches"]:
            wait_batch(api, str(batch["id"]), "completed", timeout=60)
        return run

    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    try:
        failed = run_now()  # every attempt answered 500: both jobs fail
    finally:
        simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    again = run_now()
    done = run_now()

    [batch] = failed["batches"]
    jobs = api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["items"]
    assert [j["status"] for j in jobs] == ["failed", "failed"]
    assert again["summary"]["items"] == 2 and again["summary"]["unchanged"] == 0
    assert done["summary"] == {"items": 0, "unchanged": 2}


def test_a_new_source_forgets_the_objects_seen_under_the_old_one(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    old, new = (f"moved-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for prefix in (old, new):
        shop_image(f"{prefix}/a.png")  # the same key below each prefix, the same bytes
    action = {
        "type": "reprocess_prefix",
        "source": f"s3://{SHOP_BUCKET}/{old}/",
        "defaults": {"prompt": "spring"},
    }
    schedule = create(api, action)
    first = api.post(f"/v1/schedules/{schedule['id']}/run").json()
    wait_batch(api, str(first["batches"][0]["id"]), "completed")

    moved = {**action, "source": f"s3://{SHOP_BUCKET}/{new}/"}
    api.patch(f"/v1/schedules/{schedule['id']}", json={"action": moved}).raise_for_status()
    second = api.post(f"/v1/schedules/{schedule['id']}/run").json()

    assert second["summary"]["items"] == 1 and second["summary"]["unchanged"] == 0
    wait_batch(api, str(second["batches"][0]["id"]), "completed")


def test_the_next_time_in_a_repeated_dst_hour_is_later_than_now() -> None:
    # 2027-11-07 06:10Z is 01:10 EST, in New York's second 01:00-02:00; 01:30 EDT (05:30Z)
    # has passed already.
    now = at("2027-11-07T06:10:00Z")
    following = next_time("30 1 * * *", "America/New_York", now)
    assert now < following <= now + timedelta(hours=25)


def test_two_schedulers_ticking_at_once_fire_each_run_once(
    api: httpx.Client, tenant: TenantKey
) -> None:
    action = {"type": "retry_failed", "window_hours": 1}
    ids = [create(api, action, cron="*/5 * * * *")["id"] for _ in range(3)]
    with session_scope() as session:
        times = session.scalars(select(Schedule.next_run_at).where(Schedule.id.in_(ids)))
        due = max(t for t in times if t is not None)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: run_tick(due + timedelta(seconds=1)), range(4)))

    with session_scope() as session:
        counts = session.execute(
            select(ScheduleRun.schedule_id, func.count())
            .where(ScheduleRun.schedule_id.in_(ids))
            .group_by(ScheduleRun.schedule_id)
        ).all()
    assert sorted(str(s) for s, _ in counts) == sorted(ids)
    assert all(count == 1 for _, count in counts)


def test_a_paused_schedule_does_not_fire_and_resumes_at_its_next_time(
    api: httpx.Client, tenant: TenantKey
) -> None:
    schedule = create(api, {"type": "retry_failed", "window_hours": 1}, cron="*/5 * * * *")
    due = at(schedule["next_run_at"])
    paused = api.post(f"/v1/schedules/{schedule['id']}/pause").json()
    assert paused["enabled"] is False and paused["next_run_at"] is None

    run_tick(due + timedelta(minutes=30))

    assert runs_of(api, schedule["id"]) == []
    resumed = api.post(f"/v1/schedules/{schedule['id']}/resume").json()
    assert resumed["enabled"] is True and at(resumed["next_run_at"]) > datetime.now(ZoneInfo("UTC"))


def test_a_retry_failed_schedule_retries_the_window_s_failures(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    job_id = submit_photo(api, "catalog/nightly-retry.png")
    wait_for(api, job_id, "failed")
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    schedule = create(api, {"type": "retry_failed", "window_hours": 1})

    run = api.post(f"/v1/schedules/{schedule['id']}/run").json()

    assert run["status"] == "succeeded" and run["summary"] == {"jobs": 1}
    assert wait_for(api, job_id, "succeeded", "failed")["status"] == "succeeded"


def test_the_retry_window_ends_at_the_clock_the_tick_was_given(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    job_id = submit_photo(api, "catalog/window.png")
    wait_for(api, job_id, "failed")
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    schedule = create(api, {"type": "retry_failed", "window_hours": 1}, cron="*/5 * * * *")
    due = at(schedule["next_run_at"])

    run_tick(due + timedelta(hours=2))  # the failure is two hours old by then

    [run] = runs_of(api, schedule["id"])
    assert run["summary"] == {"jobs": 0}
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"


def test_the_beat_tick_task_fires_due_schedules_through_the_worker(
    api: httpx.Client, tenant: TenantKey
) -> None:
    schedule = create(api, {"type": "retry_failed", "window_hours": 1})
    with session_scope() as session:
        session.execute(
            update(Schedule)
            .where(Schedule.id == schedule["id"])
            .values(next_run_at=datetime.now(ZoneInfo("UTC")) - timedelta(seconds=5))
        )
    assert get_celery().conf.beat_schedule["schedules"]["task"] == TaskName.SCHEDULES_TICK.value

    get_celery().send_task(TaskName.SCHEDULES_TICK.value, queue=Queue.CONTROL.value)

    deadline = time.monotonic() + 15
    while not runs_of(api, schedule["id"]):
        assert time.monotonic() < deadline, "the tick never fired the schedule"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cron": "every night"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "localtime"}, "timezone"),  # the host's zone, not an IANA name
        ({"overlap": "maybe"}, "overlap"),
        ({"action": {"type": "rerun_batch", "batch_id": str(uuid.uuid4())}}, "action.batch_id"),
        ({"action": {"type": "explode"}}, "action"),
        (
            {"action": {"type": "retry_failed", "window_hours": 0}},
            "action.retry_failed.window_hours",
        ),
        (
            {
                "action": {
                    "type": "reprocess_prefix",
                    "source": "s3://no-such-bucket/x/",
                    "defaults": {"prompt": "x"},
                }
            },
            "action.source",
        ),
        ({"cron": "0 0 3 * * *"}, "cron"),  # six fields: cronsim would read seconds
        (
            {"action": {"type": "reprocess_prefix", "source": "s3://b/x/", "defaults": {}}},
            "action.reprocess_prefix.defaults",  # no prompt: every run would fail
        ),
        (
            {
                "action": {
                    "type": "reprocess_prefix",
                    "source": "s3://b/x/",
                    "defaults": {"prompt": "x", "cfg": 100},
                }
            },
            "action.reprocess_prefix.defaults",
        ),
    ],
)
def test_bad_schedules_name_the_field_and_store_nothing(
    api: httpx.Client, tenant: TenantKey, changes: dict[str, Any], field: str
) -> None:
    body = {
        "name": "n",
        "cron": "0 3 * * *",
        "action": {"type": "retry_failed", "window_hours": 1},
        **changes,
    }
    response = api.post("/v1/schedules", json=body)

    assert response.status_code == 422, response.text
    fields = [f["field"] for f in response.json()["error"]["fields"]]
    assert any(f.startswith(field) for f in fields), fields
    assert api.get("/v1/schedules").json() == []


def test_patching_a_field_to_null_is_refused_not_ignored(api: httpx.Client) -> None:
    schedule = create(api, {"type": "retry_failed", "window_hours": 1})

    answer = api.patch(f"/v1/schedules/{schedule['id']}", json={"cron": None})

    assert answer.status_code == 422
    assert [f["field"] for f in answer.json()["error"]["fields"]] == ["cron"]
    assert api.get(f"/v1/schedules/{schedule['id']}").json()["cron"] == schedule["cron"]
