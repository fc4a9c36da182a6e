"""Task names are a contract with messages already in the broker: pin them."""

from __future__ import annotations

from worker.tasks import app


def test_registered_task_names_are_stable() -> None:
    ours = {name for name in app.tasks if not name.startswith("celery.")}
    assert ours == {
        "relight.run",
        "relight.sweep",
        "throttle.probe",
        "throttle.wake",
        "webhooks.deliver",
        "schedules.tick",
    }


def test_control_tasks_have_their_own_queue_so_a_backlog_cannot_delay_them() -> None:
    routes = app.conf.task_routes
    for name in ("relight.sweep", "throttle.probe", "throttle.wake", "schedules.tick"):
        assert routes[name] == {"queue": "control"}
    assert app.conf.beat_schedule["sweep"]["task"] == "relight.sweep"
    # Deliveries wait on customers' servers: they must not hold up relighting.
    assert routes["webhooks.deliver"] == {"queue": "webhooks"}


def test_delivery_settings_never_lose_a_job() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_default_queue == "relight"


def test_timeouts_are_ordered_so_a_running_task_is_not_redelivered() -> None:
    from relightq.settings import get_settings

    s = get_settings()
    visibility = conf_visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert conf_visibility == s.broker_visibility_timeout_seconds
    assert s.segmind_timeout_seconds < app.conf.task_time_limit < visibility
