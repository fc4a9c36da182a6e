"""Publish-after-commit: a message leaves only when its outermost transaction commits."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from relightq import broker
from relightq.broker import TaskName, enqueue_after_commit
from relightq.db import get_engine


class RecordingCelery:
    """Stands in for Celery's producer: this unit is about when, not how, to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        self.sent.append(args[0])


@pytest.fixture
def celery(monkeypatch: pytest.MonkeyPatch, database: str) -> RecordingCelery:
    recording = RecordingCelery()
    monkeypatch.setattr(broker, "get_celery", lambda: recording)
    return recording


def test_a_savepoint_s_release_sends_nothing_until_the_outer_commit(
    celery: RecordingCelery,
) -> None:
    with Session(get_engine()) as session, session.begin():
        session.execute(text("SELECT 1"))
        enqueue_after_commit(session, TaskName.RELIGHT_RUN, "outer")
        savepoint = session.begin_nested()
        enqueue_after_commit(session, TaskName.RELIGHT_RUN, "kept")
        savepoint.commit()
        assert celery.sent == []  # SQLAlchemy fired after_commit here; nothing may leave
        savepoint = session.begin_nested()
        enqueue_after_commit(session, TaskName.RELIGHT_RUN, "rolled back")
        savepoint.rollback()

    assert celery.sent == ["outer", "kept"]


def test_a_rolled_back_transaction_sends_nothing(celery: RecordingCelery) -> None:
    with pytest.raises(RuntimeError), Session(get_engine()) as session, session.begin():
        session.execute(text("SELECT 1"))
        enqueue_after_commit(session, TaskName.RELIGHT_RUN, "never")
        raise RuntimeError

    with Session(get_engine()) as session:
        session.execute(text("SELECT 1"))
        enqueue_after_commit(session, TaskName.RELIGHT_RUN, "sent")
        session.commit()

    assert celery.sent == ["sent"]
