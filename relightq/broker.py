"""The Celery application both sides share, and publish-after-commit.

The broker only carries wake-ups: every job's truth is its PostgreSQL row, so a message
is sent only after the row it points at is committed, and dropped on rollback
(the pattern of polar's ``worker/_enqueue.py``).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from functools import lru_cache
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from relightq.settings import Settings, get_settings

log = logging.getLogger(__name__)

_PENDING = "relightq.pending_tasks"
_OUTCOME = "relightq.transaction_outcome"


class Queue(StrEnum):
    """Celery queues; separate so slow upstream calls never delay other kinds of work."""

    RELIGHT = "relight"  # one message per job; each may hold an upstream call for ~30 s
    # Probes, wake-ups and sweeps must not wait behind a 100k-job backlog.
    CONTROL = "control"
    # Deliveries wait on customers' servers: never in front of relight or control work.
    WEBHOOKS = "webhooks"


class TaskName(StrEnum):
    """Stable task names: messages in flight outlive deploys, so these never change."""

    RELIGHT_RUN = "relight.run"
    RELIGHT_SWEEP = "relight.sweep"
    THROTTLE_PROBE = "throttle.probe"
    THROTTLE_WAKE = "throttle.wake"
    WEBHOOK_DELIVER = "webhooks.deliver"
    SCHEDULES_TICK = "schedules.tick"


# Celery's Redis transport emulates priorities with one list per step; 0 is served first.
PRIORITY_STEPS = list(range(10))


def queue_keys(queue: Queue) -> list[str]:
    """The Redis lists Celery keeps for ``queue``: one per priority step ("name:step")."""
    return [queue.value] + [f"{queue.value}:{step}" for step in PRIORITY_STEPS[1:]]


def configure_celery(app: Celery, settings: Settings) -> None:
    """Apply relightq's delivery guarantees to a Celery app."""
    app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        task_default_queue=Queue.RELIGHT.value,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Ack only when the task has finished, and redeliver if the worker process dies:
        # a job is never dropped between "received" and "done".
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        worker_hijack_root_logger=False,
        task_routes={
            TaskName.RELIGHT_SWEEP.value: {"queue": Queue.CONTROL.value},
            TaskName.THROTTLE_PROBE.value: {"queue": Queue.CONTROL.value},
            TaskName.THROTTLE_WAKE.value: {"queue": Queue.CONTROL.value},
            TaskName.WEBHOOK_DELIVER.value: {"queue": Queue.WEBHOOKS.value},
            TaskName.SCHEDULES_TICK.value: {"queue": Queue.CONTROL.value},
        },
        beat_schedule={
            "sweep": {
                "task": TaskName.RELIGHT_SWEEP.value,
                "schedule": settings.sweep_interval_seconds,
                "options": {
                    "queue": Queue.CONTROL.value,
                    "expires": settings.sweep_interval_seconds,
                },
            },
            # Beat only says "look now"; PostgreSQL decides what is due, so two beats
            # started by mistake still fire each run once.
            "schedules": {
                "task": TaskName.SCHEDULES_TICK.value,
                "schedule": settings.schedule_tick_seconds,
                "options": {
                    "queue": Queue.CONTROL.value,
                    "expires": settings.schedule_tick_seconds,
                },
            },
        },
    )
    if settings.broker_url.startswith("memory://"):
        # The demo's in-process broker: poll often, there is no network to spare.
        app.conf.broker_transport_options = {"polling_interval": 0.05}


def broker_backlog(settings: Settings, queue: Queue = Queue.RELIGHT) -> int:
    """Messages waiting in ``queue`` on the Redis broker (all priority steps)."""
    import redis

    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return 0
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=10)
    try:
        pipe = client.pipeline()
        for key in queue_keys(queue):
            pipe.llen(key)
        return int(sum(pipe.execute()))
    finally:
        client.close()


@lru_cache
def get_celery() -> Celery:
    """The process-wide Celery app configured from settings."""
    app = Celery("relightq")
    configure_celery(app, get_settings())
    return app


def enqueue_after_commit(session: Session, task: TaskName, *args: Any, **options: Any) -> None:
    """Send ``task`` once ``session``'s outermost transaction commits; forget it if the
    transaction (or the savepoint it was queued in) rolls back."""
    transaction = session.get_nested_transaction() or session.get_transaction()
    pending: dict[Any, list[Any]] = session.info.setdefault(_PENDING, {})
    pending.setdefault(transaction, []).append((task, args, options))


# SQLAlchemy fires after_commit for a savepoint's RELEASE too, so messages are kept per
# transaction and only the outermost commit sends them; a savepoint passes its messages
# to its parent on commit and drops them on rollback.
@event.listens_for(Session, "after_commit")
def _note_commit(session: Session) -> None:
    session.info[_OUTCOME] = "commit"


@event.listens_for(Session, "after_rollback")
def _note_rollback(session: Session) -> None:
    session.info[_OUTCOME] = "rollback"


@event.listens_for(Session, "after_transaction_end")
def _settle_pending(session: Session, transaction: SessionTransaction) -> None:
    pending: dict[Any, list[Any]] = session.info.get(_PENDING, {})
    outcome = session.info.pop(_OUTCOME, None)
    messages = pending.pop(transaction, [])
    if transaction.parent is not None:
        if outcome == "commit" and messages:
            pending.setdefault(transaction.parent, []).extend(messages)
        return
    messages += pending.pop(None, [])
    if outcome != "commit":
        return
    for task, args, options in messages:
        try:
            get_celery().send_task(task.value, args=list(args), **options)
        except Exception:
            # The row is committed; the sweeper re-publishes jobs whose wake-up was lost.
            log.exception("could not publish %s%r; the sweeper will retry", task, args)
