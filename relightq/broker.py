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
from sqlalchemy.orm import Session

from relightq.settings import Settings, get_settings

log = logging.getLogger(__name__)

_PENDING = "relightq.pending_tasks"


class Queue(StrEnum):
    """Celery queues; separate so slow upstream calls never delay other kinds of work."""

    RELIGHT = "relight"  # one message per job; each may hold an upstream call for ~30 s


class TaskName(StrEnum):
    """Stable task names: messages in flight outlive deploys, so these never change."""

    RELIGHT_RUN = "relight.run"


# Celery's Redis transport emulates priorities with one list per step; 0 is served first.
PRIORITY_STEPS = list(range(10))


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
    )


@lru_cache
def get_celery() -> Celery:
    """The process-wide Celery app configured from settings."""
    app = Celery("relightq")
    configure_celery(app, get_settings())
    return app


def enqueue_after_commit(session: Session, task: TaskName, *args: Any, **options: Any) -> None:
    """Send ``task`` once ``session`` commits; forget it if the session rolls back."""
    session.info.setdefault(_PENDING, []).append((task, args, options))


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    for task, args, options in session.info.pop(_PENDING, []):
        try:
            get_celery().send_task(task.value, args=list(args), **options)
        except Exception:
            # The row is committed; the sweeper re-publishes jobs whose wake-up was lost.
            log.exception("could not publish %s%r; the sweeper will retry", task, args)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
